#! -*- coding: utf-8 -*-
# A sentence generator conditioned on a label through Conditional Layer
# Normalization, bert4keras style (BERT as a left-to-right LM).
# Data: $DATA_DIR/sentiment.tsv, one "text<TAB>label" per line.

import os

import numpy as np
from bert4x.bert4keras.backend import K, keras
from bert4x.bert4keras.layers import Embedding, Input, Loss
from bert4x.bert4keras.models import build_transformer_model
from bert4x.bert4keras.optimizers import Adam
from bert4x.bert4keras.snippets import AutoRegressiveDecoder, DataGenerator, sequence_padding
from bert4x.bert4keras.tokenizers import Tokenizer

maxlen = 24
batch_size = 8
num_classes = 2
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
                batch_token_ids = sequence_padding(batch_token_ids)
                batch_segment_ids = sequence_padding(batch_segment_ids)
                batch_labels = sequence_padding(batch_labels)
                yield [batch_token_ids, batch_segment_ids, batch_labels], None
                batch_token_ids, batch_segment_ids, batch_labels = [], [], []


class CrossEntropy(Loss):
    """Next-token cross-entropy over the real tokens (the Keras mask of the output)."""
    def compute_loss(self, inputs, mask=None):
        y_true, y_pred = inputs
        y_mask = K.cast(mask[1][:, 1:], K.floatx())
        loss = K.sparse_categorical_crossentropy(y_true[:, 1:], y_pred[:, :-1])
        return K.sum(loss * y_mask) / K.sum(y_mask)


c_in = Input(shape=(1,))
c = Embedding(num_classes, 16)(c_in)
c = keras.layers.Reshape((16,))(c)

model = build_transformer_model(config_path, checkpoint_path, application='lm',
                                layer_norm_cond=c, layer_norm_cond_hidden_size=16,
                                layer_norm_cond_hidden_act='swish',
                                additional_input_layers=c_in)
output = CrossEntropy(1)([model.inputs[0], model.outputs[0]])
model = keras.models.Model(model.inputs, output)
model.compile(optimizer=Adam(2e-3))


class RandomSentiment(AutoRegressiveDecoder):
    @AutoRegressiveDecoder.wraps(default_rtype='probas')
    def predict(self, inputs, output_ids, states):
        token_ids = output_ids
        segment_ids = np.zeros_like(token_ids)
        return self.last_token(model).predict([token_ids, segment_ids, inputs[0]], verbose=0)

    def generate(self, label, n=1, topp=0.95):
        results = self.random_sample([[label]], n, topp=topp)
        return [tokenizer.decode(ids) for ids in results]


generator = RandomSentiment(start_id=tokenizer._token_start_id,
                            end_id=tokenizer._token_end_id, maxlen=12)
train_generator = data_generator(train_data, batch_size)
history = model.fit(train_generator.forfit(), steps_per_epoch=len(train_generator),
                    epochs=epochs, verbose=0)
np.random.seed(0)
print('positive:', generator.generate(1, n=2))
print('loss: %.4f -> %.4f' % (history.history['loss'][0], history.history['loss'][-1]))
