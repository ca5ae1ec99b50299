#! -*- coding: utf-8 -*-
# Classification trained with bert4keras's optimizer factories: decoupled weight
# decay, a piecewise-linear warm-up, a larger learning rate for the new head and
# gradient accumulation.
# Data: $DATA_DIR/sentiment.tsv, one "text<TAB>label" per line.

import os

from bert4x.bert4keras.backend import keras
from bert4x.bert4keras.layers import Dense, Lambda
from bert4x.bert4keras.models import build_transformer_model
from bert4x.bert4keras.optimizers import (Adam, extend_with_gradient_accumulation,
                                          extend_with_parameter_wise_lr,
                                          extend_with_piecewise_linear_lr,
                                          extend_with_weight_decay)
from bert4x.bert4keras.snippets import DataGenerator, sequence_padding
from bert4x.bert4keras.tokenizers import Tokenizer

maxlen = 32
batch_size = 4
epochs = int(os.environ.get('EPOCHS', 5))
bert_dir = os.environ.get('BERT_DIR', 'chinese_L-12_H-768_A-12')
data_dir = os.environ.get('DATA_DIR', 'data')
config_path = os.path.join(bert_dir, 'bert_config.json')
checkpoint_path = os.path.join(bert_dir, 'bert_model.ckpt')
dict_path = os.path.join(bert_dir, 'vocab.txt')


def load_data(filename):
    with open(filename, encoding='utf-8') as f:
        return [(t, int(l)) for t, l in (line.rstrip('\n').split('\t') for line in f)]


train_data = load_data(os.path.join(data_dir, 'sentiment.tsv'))
tokenizer = Tokenizer(dict_path, do_lower_case=True)


class data_generator(DataGenerator):
    def __iter__(self, random=False):
        batch_token_ids, batch_segment_ids, batch_labels = [], [], []
        for is_end, (text, label) in self.sample(random):
            token_ids, segment_ids = tokenizer.encode(text, maxlen=maxlen)
            batch_token_ids.append(token_ids)
            batch_segment_ids.append(segment_ids)
            batch_labels.append([label])
            if len(batch_token_ids) == self.batch_size or is_end:
                yield [sequence_padding(batch_token_ids), sequence_padding(batch_segment_ids)], \
                    sequence_padding(batch_labels)
                batch_token_ids, batch_segment_ids, batch_labels = [], [], []


AdamW = extend_with_weight_decay(Adam, 'AdamW')
AdamWLR = extend_with_piecewise_linear_lr(AdamW, 'AdamWLR')
AdamWLRP = extend_with_parameter_wise_lr(AdamWLR, 'AdamWLRP')
AdamWLRPG = extend_with_gradient_accumulation(AdamWLRP, 'AdamWLRPG')

bert = build_transformer_model(config_path, checkpoint_path, return_keras_model=False)
output = Lambda(lambda x: x[:, 0])(bert.model.output)
output = Dense(units=2, activation='softmax', name='Classifier')(output)
model = keras.models.Model(bert.model.input, output)

train_generator = data_generator(train_data, batch_size)
optimizer = AdamWLRPG(
    learning_rate=2e-3, weight_decay_rate=0.01,
    exclude_from_weight_decay=['Norm', 'bias'],
    lr_schedule={len(train_generator): 1, len(train_generator) * epochs * 2: 0.2},
    paramwise_lr_schedule={'Classifier': 5.0},
    grad_accum_steps=2)
model.compile(loss='sparse_categorical_crossentropy', optimizer=optimizer,
              metrics=['accuracy'])
history = model.fit(train_generator.forfit(), steps_per_epoch=len(train_generator),
                    epochs=epochs, verbose=0)
print('loss: %.4f -> %.4f' % (history.history['loss'][0], history.history['loss'][-1]))
