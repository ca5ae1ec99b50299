#! -*- coding: utf-8 -*-
# Sentence classification with adversarial training (FGM on the token embedding table)
# and, on the unlabeled half of the data, virtual adversarial training: the two
# functions bert4keras's adversarial-training examples define themselves, imported.
# Data: $DATA_DIR/sentiment.tsv, one "text<TAB>label" per line.

import os

import numpy as np
from bert4x.bert4keras.backend import (adversarial_training, keras,
                                       virtual_adversarial_training)
from bert4x.bert4keras.layers import Dense, Lambda
from bert4x.bert4keras.models import build_transformer_model
from bert4x.bert4keras.optimizers import Adam
from bert4x.bert4keras.snippets import DataGenerator, sequence_padding
from bert4x.bert4keras.tokenizers import Tokenizer

num_classes = 2
maxlen = 32
batch_size = 8
epochs = int(os.environ.get('EPOCHS', 4))
# The perturbation's norm over the whole embedding table: bert4keras's examples use
# 0.5-1 for BERT-base; a tiny model's embedding rows are far shorter, so less here.
epsilon = float(os.environ.get('EPSILON', 0.05))
bert_dir = os.environ.get('BERT_DIR', 'chinese_L-12_H-768_A-12')
data_dir = os.environ.get('DATA_DIR', 'data')
config_path = os.path.join(bert_dir, 'bert_config.json')
checkpoint_path = os.path.join(bert_dir, 'bert_model.ckpt')
dict_path = os.path.join(bert_dir, 'vocab.txt')


def load_data(filename):
    D = []
    with open(filename, encoding='utf-8') as f:
        for l in f:
            text, label = l.rstrip('\n').split('\t')
            D.append((text, int(label)))
    return D


data = load_data(os.path.join(data_dir, 'sentiment.tsv'))
train_data = data[:len(data) // 2]
unlabeled_data = [(text, 0) for text, _ in data[len(data) // 2:]]
tokenizer = Tokenizer(dict_path, do_lower_case=True)


class data_generator(DataGenerator):
    def __iter__(self, random=False):
        batch_token_ids, batch_segment_ids, batch_labels = [], [], []
        for is_end, (text, label) in self.sample(random):
            token_ids, segment_ids = tokenizer.encode(text, maxlen=maxlen)
            batch_token_ids.append(token_ids)
            batch_segment_ids.append(segment_ids)
            batch_labels.append(np.eye(num_classes)[label])
            if len(batch_token_ids) == self.batch_size or is_end:
                batch_token_ids = sequence_padding(batch_token_ids)
                batch_segment_ids = sequence_padding(batch_segment_ids)
                batch_labels = np.array(batch_labels, dtype='float32')
                yield [batch_token_ids, batch_segment_ids], batch_labels
                batch_token_ids, batch_segment_ids, batch_labels = [], [], []


bert = build_transformer_model(config_path, checkpoint_path, return_keras_model=False)
output = Lambda(lambda x: x[:, 0], name='CLS-token')(bert.model.output)
output = Dense(units=num_classes, activation='softmax')(output)

# The labeled model: cross-entropy with adversarial training.
model = keras.models.Model(bert.model.input, output)
model.compile(loss='kld', optimizer=Adam(1e-3), metrics=['categorical_accuracy'])
adversarial_training(model, 'Embedding-Token', epsilon)

# The same layers trained on unlabeled batches: the KL divergence between the clean
# prediction and the prediction at the adversarially perturbed table.
model_vat = keras.models.Model(bert.model.input, output)
model_vat.compile(loss='kld', optimizer=Adam(5e-4))
virtual_adversarial_training(model_vat, 'Embedding-Token', epsilon)


class VirtualAdversarialStep(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        # forfit() is a tf.data.Dataset on TensorFlow: iter() makes it an iterator.
        self.data = iter(data_generator(unlabeled_data, batch_size).forfit())

    def on_batch_end(self, batch, logs=None):
        dx, dy = next(self.data)
        model_vat.train_on_batch(dx, dy)


train_generator = data_generator(train_data, batch_size)
history = model.fit(train_generator.forfit(), steps_per_epoch=len(train_generator),
                    epochs=epochs, verbose=0, callbacks=[VirtualAdversarialStep()])
print('loss: %.4f -> %.4f' % (history.history['loss'][0], history.history['loss'][-1]))
