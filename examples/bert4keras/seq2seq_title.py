#! -*- coding: utf-8 -*-
# Title generation with UniLM (BERT + seq2seq attention mask), bert4keras style.
# Data: $DATA_DIR/titles.tsv, one "title<TAB>content" per line (the CSL format).

import os

import numpy as np
from bert4x.bert4keras.backend import K, keras
from bert4x.bert4keras.layers import Loss
from bert4x.bert4keras.models import build_transformer_model
from bert4x.bert4keras.optimizers import Adam
from bert4x.bert4keras.snippets import AutoRegressiveDecoder, DataGenerator, sequence_padding
from bert4x.bert4keras.tokenizers import Tokenizer, load_vocab

maxlen = 32
batch_size = 8
epochs = int(os.environ.get('EPOCHS', 6))
bert_dir = os.environ.get('BERT_DIR', 'chinese_L-12_H-768_A-12')
data_dir = os.environ.get('DATA_DIR', 'data')
config_path = os.path.join(bert_dir, 'bert_config.json')
checkpoint_path = os.path.join(bert_dir, 'bert_model.ckpt')
dict_path = os.path.join(bert_dir, 'vocab.txt')


def load_data(filename):
    D = []
    with open(filename, encoding='utf-8') as f:
        for l in f:
            title, content = l.rstrip('\n').split('\t')
            D.append((title, content))
    return D


train_data = load_data(os.path.join(data_dir, 'titles.tsv'))
token_dict, keep_tokens = load_vocab(
    dict_path=dict_path, simplified=True,
    startswith=['[PAD]', '[UNK]', '[CLS]', '[SEP]'])
tokenizer = Tokenizer(token_dict, do_lower_case=True)


class data_generator(DataGenerator):
    def __iter__(self, random=False):
        batch_token_ids, batch_segment_ids = [], []
        for is_end, (title, content) in self.sample(random):
            token_ids, segment_ids = tokenizer.encode(content, title, maxlen=maxlen)
            batch_token_ids.append(token_ids)
            batch_segment_ids.append(segment_ids)
            if len(batch_token_ids) == self.batch_size or is_end:
                batch_token_ids = sequence_padding(batch_token_ids)
                batch_segment_ids = sequence_padding(batch_segment_ids)
                yield [batch_token_ids, batch_segment_ids], None
                batch_token_ids, batch_segment_ids = [], []


class CrossEntropy(Loss):
    """Cross-entropy on the target part (segment id 1), shifted by one."""
    def compute_loss(self, inputs, mask=None):
        y_true, y_mask, y_pred = inputs
        y_true = y_true[:, 1:]
        y_mask = K.cast(y_mask[:, 1:], K.floatx())
        y_pred = y_pred[:, :-1]
        loss = K.sparse_categorical_crossentropy(y_true, y_pred)
        return K.sum(loss * y_mask) / K.sum(y_mask)


model = build_transformer_model(config_path, checkpoint_path, application='unilm',
                                keep_tokens=keep_tokens)
output = CrossEntropy(2)(model.inputs + model.outputs)
model = keras.models.Model(model.inputs, output)
model.compile(optimizer=Adam(2e-3))


class AutoTitle(AutoRegressiveDecoder):
    @AutoRegressiveDecoder.wraps(default_rtype='probas')
    def predict(self, inputs, output_ids, states):
        token_ids, segment_ids = inputs
        token_ids = np.concatenate([token_ids, output_ids], 1)
        segment_ids = np.concatenate([segment_ids, np.ones_like(output_ids)], 1)
        return self.last_token(model).predict([token_ids, segment_ids], verbose=0)

    def generate(self, text, topk=1):
        token_ids, segment_ids = tokenizer.encode(text, maxlen=maxlen)
        output_ids = self.beam_search([token_ids, segment_ids], topk=topk)
        return tokenizer.decode(output_ids)


autotitle = AutoTitle(start_id=None, end_id=tokenizer._token_end_id, maxlen=8)
train_generator = data_generator(train_data, batch_size)
history = model.fit(train_generator.forfit(), steps_per_epoch=len(train_generator),
                    epochs=epochs, verbose=0)
print('title:', autotitle.generate(train_data[0][1], topk=2))
print('loss: %.4f -> %.4f' % (history.history['loss'][0], history.history['loss'][-1]))
