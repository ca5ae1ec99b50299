#! -*- coding: utf-8 -*-
# Named-entity recognition with GlobalPointer, bert4keras style.
# Data: $DATA_DIR/ner.txt in the People's Daily format ("char tag" lines,
# sentences separated by blank lines).

import os

import numpy as np
from bert4x.bert4keras.backend import K, keras, multilabel_categorical_crossentropy
from bert4x.bert4keras.layers import GlobalPointer
from bert4x.bert4keras.models import build_transformer_model
from bert4x.bert4keras.optimizers import Adam
from bert4x.bert4keras.snippets import DataGenerator, sequence_padding
from bert4x.bert4keras.tokenizers import Tokenizer

maxlen = 32
epochs = int(os.environ.get('EPOCHS', 4))
batch_size = 8
bert_dir = os.environ.get('BERT_DIR', 'chinese_L-12_H-768_A-12')
data_dir = os.environ.get('DATA_DIR', 'data')
config_path = os.path.join(bert_dir, 'bert_config.json')
checkpoint_path = os.path.join(bert_dir, 'bert_model.ckpt')
dict_path = os.path.join(bert_dir, 'vocab.txt')


def load_data(filename):
    D = []
    with open(filename, encoding='utf-8') as f:
        for sentence in f.read().split('\n\n'):
            if not sentence.strip():
                continue
            d = ['']
            for i, line in enumerate(sentence.split('\n')):
                char, tag = line.split(' ')
                d[0] += char
                if tag[0] == 'B':
                    d.append([i, i, tag[2:]])
                elif tag[0] == 'I':
                    d[-1][1] = i
            D.append(d)
    return D


train_data = load_data(os.path.join(data_dir, 'ner.txt'))
categories = sorted({s[2] for d in train_data for s in d[1:]})
tokenizer = Tokenizer(dict_path, do_lower_case=True)


class data_generator(DataGenerator):
    def __iter__(self, random=False):
        batch_token_ids, batch_segment_ids, batch_labels = [], [], []
        for is_end, d in self.sample(random):
            tokens = tokenizer.tokenize(d[0], maxlen=maxlen)
            mapping = tokenizer.rematch(d[0], tokens)
            start_mapping = {j[0]: i for i, j in enumerate(mapping) if j}
            end_mapping = {j[-1]: i for i, j in enumerate(mapping) if j}
            token_ids = tokenizer.tokens_to_ids(tokens)
            segment_ids = [0] * len(token_ids)
            labels = np.zeros((len(categories), maxlen, maxlen))
            for start, end, label in d[1:]:
                if start in start_mapping and end in end_mapping:
                    labels[categories.index(label), start_mapping[start], end_mapping[end]] = 1
            batch_token_ids.append(token_ids)
            batch_segment_ids.append(segment_ids)
            batch_labels.append(labels[:, :len(token_ids), :len(token_ids)])
            if len(batch_token_ids) == self.batch_size or is_end:
                batch_token_ids = sequence_padding(batch_token_ids)
                batch_segment_ids = sequence_padding(batch_segment_ids)
                batch_labels = sequence_padding(batch_labels, seq_dims=3)
                yield [batch_token_ids, batch_segment_ids], batch_labels
                batch_token_ids, batch_segment_ids, batch_labels = [], [], []


def global_pointer_crossentropy(y_true, y_pred):
    """Multi-label cross-entropy over every (start, end) span of every type."""
    bh = K.prod(K.shape(y_pred)[:2])
    y_true = K.reshape(y_true, (bh, -1))
    y_pred = K.reshape(y_pred, (bh, -1))
    return K.mean(multilabel_categorical_crossentropy(y_true, y_pred))


model = build_transformer_model(config_path, checkpoint_path)
output = GlobalPointer(len(categories), 16)(model.output)
model = keras.models.Model(model.input, output)
model.compile(loss=global_pointer_crossentropy, optimizer=Adam(1e-3))


def recognize(text, threshold=0):
    tokens = tokenizer.tokenize(text, maxlen=maxlen)
    mapping = tokenizer.rematch(text, tokens)
    token_ids = tokenizer.tokens_to_ids(tokens)
    scores = model.predict([np.array([token_ids]), np.zeros((1, len(token_ids)))],
                           verbose=0)[0]
    scores[:, [0, -1]] -= np.inf
    scores[:, :, [0, -1]] -= np.inf
    return [(mapping[s][0], mapping[e][-1], categories[l])
            for l, s, e in zip(*np.where(scores > threshold))]


train_generator = data_generator(train_data, batch_size)
history = model.fit(train_generator.forfit(), steps_per_epoch=len(train_generator),
                    epochs=epochs, verbose=0)
print('entities:', recognize(train_data[0][0]))
print('loss: %.4f -> %.4f' % (history.history['loss'][0], history.history['loss'][-1]))
