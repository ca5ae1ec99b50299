#! -*- coding: utf-8 -*-
# Reading comprehension as seq2seq (UniLM), bert4keras style: the passage and
# the question are the source, the answer is generated, and decoding may only
# produce text that occurs in the passage.
# Data: $DATA_DIR/qa.json, a list of {"question", "passage", "answer"}.

import json
import os

import numpy as np
from bert4x.bert4keras.backend import K, keras
from bert4x.bert4keras.layers import Loss
from bert4x.bert4keras.models import build_transformer_model
from bert4x.bert4keras.optimizers import Adam
from bert4x.bert4keras.snippets import AutoRegressiveDecoder, DataGenerator, sequence_padding
from bert4x.bert4keras.tokenizers import Tokenizer

max_p_len = 24
max_q_len = 12
max_a_len = 6
batch_size = 6
epochs = int(os.environ.get('EPOCHS', 6))
bert_dir = os.environ.get('BERT_DIR', 'chinese_L-12_H-768_A-12')
data_dir = os.environ.get('DATA_DIR', 'data')
config_path = os.path.join(bert_dir, 'bert_config.json')
checkpoint_path = os.path.join(bert_dir, 'bert_model.ckpt')
dict_path = os.path.join(bert_dir, 'vocab.txt')

with open(os.path.join(data_dir, 'qa.json'), encoding='utf-8') as f:
    train_data = json.load(f)
tokenizer = Tokenizer(dict_path, do_lower_case=True)


class data_generator(DataGenerator):
    def __iter__(self, random=False):
        batch_token_ids, batch_segment_ids = [], []
        for is_end, d in self.sample(random):
            p_token_ids, _ = tokenizer.encode(d['passage'], maxlen=max_p_len + 1)
            q_token_ids, _ = tokenizer.encode(d['question'], maxlen=max_q_len + 1)
            a_token_ids, _ = tokenizer.encode(d['answer'], maxlen=max_a_len)
            token_ids = p_token_ids + q_token_ids[1:]
            segment_ids = [0] * len(token_ids) + [1] * (len(a_token_ids) - 1)
            token_ids += a_token_ids[1:]
            batch_token_ids.append(token_ids)
            batch_segment_ids.append(segment_ids)
            if len(batch_token_ids) == self.batch_size or is_end:
                yield [sequence_padding(batch_token_ids),
                       sequence_padding(batch_segment_ids)], None
                batch_token_ids, batch_segment_ids = [], []


class CrossEntropy(Loss):
    def compute_loss(self, inputs, mask=None):
        y_true, y_mask, y_pred = inputs
        y_mask = K.cast(y_mask[:, 1:], K.floatx())
        loss = K.sparse_categorical_crossentropy(y_true[:, 1:], y_pred[:, :-1])
        return K.sum(loss * y_mask) / K.sum(y_mask)


model = build_transformer_model(config_path, checkpoint_path, application='unilm')
output = CrossEntropy(2)(model.inputs + model.outputs)
model = keras.models.Model(model.inputs, output)
model.compile(optimizer=Adam(2e-3))


class ReadingComprehension(AutoRegressiveDecoder):
    """Beam search whose next token must continue a substring of the passage."""
    @AutoRegressiveDecoder.wraps(default_rtype='probas')
    def predict(self, inputs, output_ids, states):
        token_ids, segment_ids, passage_ids = inputs
        all_ids = np.concatenate([token_ids, output_ids], 1)
        all_segments = np.concatenate([segment_ids, np.ones_like(output_ids)], 1)
        probas = self.last_token(model).predict([all_ids, all_segments], verbose=0)
        allowed = np.zeros_like(probas)
        allowed[:, self.end_id] = 1
        for row, ids in enumerate(output_ids):
            prefix = list(ids)
            for i in range(len(passage_ids[row]) - len(prefix)):
                if list(passage_ids[row][i:i + len(prefix)]) == prefix:
                    allowed[row, passage_ids[row][i + len(prefix)]] = 1
        return probas * allowed

    def answer(self, question, passage, topk=2):
        p_token_ids, _ = tokenizer.encode(passage, maxlen=max_p_len + 1)
        q_token_ids, _ = tokenizer.encode(question, maxlen=max_q_len + 1)
        token_ids = p_token_ids + q_token_ids[1:]
        segment_ids = [0] * len(token_ids)
        output_ids = self.beam_search([token_ids, segment_ids, p_token_ids[1:-1]], topk=topk)
        return tokenizer.decode(output_ids)


reader = ReadingComprehension(start_id=None, end_id=tokenizer._token_end_id,
                              maxlen=max_a_len)
train_generator = data_generator(train_data, batch_size)
history = model.fit(train_generator.forfit(), steps_per_epoch=len(train_generator),
                    epochs=epochs, verbose=0)
print('answer:', reader.answer(train_data[0]['question'], train_data[0]['passage']))
print('loss: %.4f -> %.4f' % (history.history['loss'][0], history.history['loss'][-1]))
