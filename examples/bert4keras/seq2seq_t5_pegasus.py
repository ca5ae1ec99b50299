#! -*- coding: utf-8 -*-
# Title generation with an encoder-decoder (mT5 / T5-PEGASUS), bert4keras style.
# T5-PEGASUS is an mT5 with a BERT vocabulary: the BERT tokenizer (with jieba first,
# pre_tokenize=lambda s: jieba.cut(s, HMM=False), for the real vocabulary).
# Data: $DATA_DIR/titles.tsv, one "title<TAB>content" per line (the CSL format).
# Model: $T5_DIR holding the config, the checkpoint and vocab.txt.

import os

import numpy as np
from bert4x.bert4keras.backend import K, keras
from bert4x.bert4keras.layers import Loss
from bert4x.bert4keras.models import build_transformer_model
from bert4x.bert4keras.optimizers import Adam
from bert4x.bert4keras.snippets import AutoRegressiveDecoder, DataGenerator, sequence_padding
from bert4x.bert4keras.tokenizers import Tokenizer, load_vocab

max_c_len = 32
max_t_len = 8
batch_size = 8
epochs = int(os.environ.get('EPOCHS', 6))
t5_dir = os.environ.get('T5_DIR', 'chinese_t5_pegasus_base')
data_dir = os.environ.get('DATA_DIR', 'data')
dict_path = os.path.join(t5_dir, 'vocab.txt')


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
        batch_c_token_ids, batch_t_token_ids = [], []
        for is_end, (title, content) in self.sample(random):
            c_token_ids, _ = tokenizer.encode(content, maxlen=max_c_len)
            t_token_ids, _ = tokenizer.encode(title, maxlen=max_t_len)
            batch_c_token_ids.append(c_token_ids)
            # T5-PEGASUS's decoder reads [CLS] title [SEP] ([CLS] is its start id;
            # Google's mT5 starts with 0, the padding id).
            batch_t_token_ids.append(t_token_ids)
            if len(batch_c_token_ids) == self.batch_size or is_end:
                batch_c_token_ids = sequence_padding(batch_c_token_ids)
                batch_t_token_ids = sequence_padding(batch_t_token_ids)
                yield [batch_c_token_ids, batch_t_token_ids], None
                batch_c_token_ids, batch_t_token_ids = [], []


class CrossEntropy(Loss):
    """Cross-entropy on the decoder's tokens (its own mask), shifted by one."""
    def compute_loss(self, inputs, mask=None):
        y_true, y_pred = inputs
        y_true = y_true[:, 1:]
        y_mask = K.cast(mask[1], K.floatx())[:, 1:]
        y_pred = y_pred[:, :-1]
        loss = K.sparse_categorical_crossentropy(y_true, y_pred)
        return K.sum(loss * y_mask) / K.sum(y_mask)


t5 = build_transformer_model(checkpoint_path=t5_dir, keep_tokens=keep_tokens,
                             model='mt5.1.1', return_keras_model=False, name='T5')
encoder, decoder, model = t5.encoder, t5.decoder, t5.model
output = CrossEntropy(1)([model.inputs[1], model.outputs[0]])
model = keras.models.Model(model.inputs, output)
model.compile(optimizer=Adam(2e-3))


class AutoTitle(AutoRegressiveDecoder):
    @AutoRegressiveDecoder.wraps(default_rtype='probas')
    def predict(self, inputs, output_ids, states):
        c_encoded = inputs[0]
        return self.last_token(decoder).predict([c_encoded, output_ids], verbose=0)

    def generate(self, text, topk=1):
        c_token_ids, _ = tokenizer.encode(text, maxlen=max_c_len)
        c_encoded = encoder.predict(np.array([c_token_ids]), verbose=0)[0]
        output_ids = self.beam_search([c_encoded], topk=topk)
        return tokenizer.decode([int(i) for i in output_ids])


autotitle = AutoTitle(start_id=tokenizer._token_start_id, end_id=tokenizer._token_end_id,
                      maxlen=max_t_len)
train_generator = data_generator(train_data, batch_size)
history = model.fit(train_generator.forfit(), steps_per_epoch=len(train_generator),
                    epochs=epochs, verbose=0)
print('title:', autotitle.generate(train_data[0][1], topk=2))
print('loss: %.4f -> %.4f' % (history.history['loss'][0], history.history['loss'][-1]))
