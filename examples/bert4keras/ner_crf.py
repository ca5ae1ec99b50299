#! -*- coding: utf-8 -*-
# Named-entity recognition with BERT + CRF, bert4keras style.
# Data: $DATA_DIR/ner.txt in the People's Daily format: one "char tag" per line
# (tags B-X / I-X / O), sentences separated by blank lines.

import os

import numpy as np
from bert4x.bert4keras.backend import K, keras
from bert4x.bert4keras.layers import ConditionalRandomField, Dense
from bert4x.bert4keras.models import build_transformer_model
from bert4x.bert4keras.optimizers import Adam
from bert4x.bert4keras.snippets import DataGenerator, ViterbiDecoder, sequence_padding
from bert4x.bert4keras.tokenizers import Tokenizer

maxlen = 32
epochs = int(os.environ.get('EPOCHS', 4))
batch_size = 8
bert_layers = 2
crf_lr_multiplier = 100
bert_dir = os.environ.get('BERT_DIR', 'chinese_L-12_H-768_A-12')
data_dir = os.environ.get('DATA_DIR', 'data')
config_path = os.path.join(bert_dir, 'bert_config.json')
checkpoint_path = os.path.join(bert_dir, 'bert_model.ckpt')
dict_path = os.path.join(bert_dir, 'vocab.txt')


def load_data(filename):
    """Each sentence becomes [text, [start, end, label], ...]."""
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
            labels = np.zeros(len(token_ids))
            for start, end, label in d[1:]:
                if start in start_mapping and end in end_mapping:
                    start, end = start_mapping[start], end_mapping[end]
                    labels[start] = categories.index(label) * 2 + 1
                    labels[start + 1:end + 1] = categories.index(label) * 2 + 2
            batch_token_ids.append(token_ids)
            batch_segment_ids.append(segment_ids)
            batch_labels.append(labels)
            if len(batch_token_ids) == self.batch_size or is_end:
                yield [sequence_padding(batch_token_ids), sequence_padding(batch_segment_ids)], \
                    sequence_padding(batch_labels)
                batch_token_ids, batch_segment_ids, batch_labels = [], [], []


model = build_transformer_model(config_path, checkpoint_path)
output = model.get_layer('Transformer-%s-FeedForward-Norm' % (bert_layers - 1)).output
output = Dense(len(categories) * 2 + 1)(output)
CRF = ConditionalRandomField(lr_multiplier=crf_lr_multiplier)
output = CRF(output)
model = keras.models.Model(model.input, output)
model.compile(loss=CRF.sparse_loss, optimizer=Adam(1e-3), metrics=[CRF.sparse_accuracy])


class NamedEntityRecognizer(ViterbiDecoder):
    def recognize(self, text):
        tokens = tokenizer.tokenize(text, maxlen=maxlen)
        mapping = tokenizer.rematch(text, tokens)
        token_ids = tokenizer.tokens_to_ids(tokens)
        nodes = model.predict([np.array([token_ids]), np.zeros((1, len(token_ids)))],
                              verbose=0)[0]
        labels = self.decode(nodes)
        entities, starting = [], False
        for i, label in enumerate(labels):
            if label > 0:
                if label % 2 == 1:
                    starting = True
                    entities.append([[i], categories[(label - 1) // 2]])
                elif starting:
                    entities[-1][0].append(i)
                else:
                    starting = False
            else:
                starting = False
        return [(mapping[w[0]][0], mapping[w[-1]][-1], l) for w, l in entities]


train_generator = data_generator(train_data, batch_size)
history = model.fit(train_generator.forfit(), steps_per_epoch=len(train_generator),
                    epochs=epochs, verbose=0)
NER = NamedEntityRecognizer(trans=K.eval(CRF.trans), starts=[0], ends=[0])
print('entities:', NER.recognize(train_data[0][0]))
print('loss: %.4f -> %.4f' % (history.history['loss'][0], history.history['loss'][-1]))
