#! -*- coding: utf-8 -*-
# Sentence-pair similarity (LCQMC-style) with BERT, bert4keras style.
# Data: $DATA_DIR/similarity.tsv, one "text1<TAB>text2<TAB>label" per line.

import os

from bert4x.bert4keras.backend import keras
from bert4x.bert4keras.layers import Dense, Dropout
from bert4x.bert4keras.models import build_transformer_model
from bert4x.bert4keras.optimizers import Adam
from bert4x.bert4keras.snippets import DataGenerator, sequence_padding
from bert4x.bert4keras.tokenizers import Tokenizer

maxlen = 40
batch_size = 8
epochs = int(os.environ.get('EPOCHS', 10))
bert_dir = os.environ.get('BERT_DIR', 'chinese_L-12_H-768_A-12')
data_dir = os.environ.get('DATA_DIR', 'data')
config_path = os.path.join(bert_dir, 'bert_config.json')
checkpoint_path = os.path.join(bert_dir, 'bert_model.ckpt')
dict_path = os.path.join(bert_dir, 'vocab.txt')


def load_data(filename):
    D = []
    with open(filename, encoding='utf-8') as f:
        for l in f:
            text1, text2, label = l.rstrip('\n').split('\t')
            D.append((text1, text2, int(label)))
    return D


train_data = load_data(os.path.join(data_dir, 'similarity.tsv'))
tokenizer = Tokenizer(dict_path, do_lower_case=True)


class data_generator(DataGenerator):
    def __iter__(self, random=False):
        batch_token_ids, batch_segment_ids, batch_labels = [], [], []
        for is_end, (text1, text2, label) in self.sample(random):
            token_ids, segment_ids = tokenizer.encode(text1, text2, maxlen=maxlen)
            batch_token_ids.append(token_ids)
            batch_segment_ids.append(segment_ids)
            batch_labels.append([label])
            if len(batch_token_ids) == self.batch_size or is_end:
                yield (sequence_padding(batch_token_ids), sequence_padding(batch_segment_ids)), \
                    sequence_padding(batch_labels)
                batch_token_ids, batch_segment_ids, batch_labels = [], [], []


bert = build_transformer_model(config_path, checkpoint_path, with_pool=True,
                               return_keras_model=False)
output = Dropout(rate=0.1)(bert.model.output)
output = Dense(units=2, activation='softmax')(output)
model = keras.models.Model(bert.model.input, output)
model.compile(loss='sparse_categorical_crossentropy', optimizer=Adam(2e-3),
              metrics=['accuracy'])

train_generator = data_generator(train_data, batch_size)
history = model.fit(train_generator.forfit(), steps_per_epoch=len(train_generator),
                    epochs=epochs, verbose=0)
print('loss: %.4f -> %.4f' % (history.history['loss'][0], history.history['loss'][-1]))
