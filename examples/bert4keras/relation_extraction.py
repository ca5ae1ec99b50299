#! -*- coding: utf-8 -*-
# Relation extraction (subject -> predicate -> object pointers), bert4keras style:
# first point at subjects, then, conditioned on a subject through Conditional
# Layer Normalization, point at its objects for every predicate.
# Data: $DATA_DIR/relations.json (one {"text", "spo_list"} per line) and
# $DATA_DIR/schema.json (one {"predicate"} per line).

import json
import os

import numpy as np
from bert4x.bert4keras.backend import K, batch_gather, keras
from bert4x.bert4keras.layers import Dense, Input, Lambda, LayerNormalization, Loss, Reshape
from bert4x.bert4keras.models import build_transformer_model
from bert4x.bert4keras.optimizers import Adam
from bert4x.bert4keras.snippets import DataGenerator, sequence_padding
from bert4x.bert4keras.tokenizers import Tokenizer

maxlen = 32
batch_size = 4
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
            l = json.loads(l)
            D.append({'text': l['text'],
                      'spo_list': [(s['subject'], s['predicate'], s['object'])
                                   for s in l['spo_list']]})
    return D


train_data = load_data(os.path.join(data_dir, 'relations.json'))
with open(os.path.join(data_dir, 'schema.json'), encoding='utf-8') as f:
    predicates = [json.loads(l)['predicate'] for l in f]
tokenizer = Tokenizer(dict_path, do_lower_case=True)


def search(pattern, sequence):
    n = len(pattern)
    for i in range(len(sequence)):
        if sequence[i:i + n] == pattern:
            return i
    return -1


class data_generator(DataGenerator):
    def __iter__(self, random=False):
        batch_token_ids, batch_segment_ids = [], []
        batch_subject_labels, batch_subject_ids, batch_object_labels = [], [], []
        for is_end, d in self.sample(random):
            token_ids, segment_ids = tokenizer.encode(d['text'], maxlen=maxlen)
            spoes = {}
            for s, p, o in d['spo_list']:
                s = tokenizer.encode(s)[0][1:-1]
                o = tokenizer.encode(o)[0][1:-1]
                s_idx, o_idx = search(s, token_ids), search(o, token_ids)
                if s_idx != -1 and o_idx != -1:
                    s = (s_idx, s_idx + len(s) - 1)
                    o = (o_idx, o_idx + len(o) - 1, predicates.index(p))
                    spoes.setdefault(s, []).append(o)
            if spoes:
                subject_labels = np.zeros((len(token_ids), 2))
                for s in spoes:
                    subject_labels[s[0], 0] = 1
                    subject_labels[s[1], 1] = 1
                start, end = list(spoes)[np.random.randint(len(spoes))]
                object_labels = np.zeros((len(token_ids), len(predicates), 2))
                for o in spoes.get((start, end), []):
                    object_labels[o[0], o[2], 0] = 1
                    object_labels[o[1], o[2], 1] = 1
                batch_token_ids.append(token_ids)
                batch_segment_ids.append(segment_ids)
                batch_subject_labels.append(subject_labels)
                batch_subject_ids.append([start, end])
                batch_object_labels.append(object_labels)
            if len(batch_token_ids) == self.batch_size or (is_end and batch_token_ids):
                yield [sequence_padding(batch_token_ids), sequence_padding(batch_segment_ids),
                       sequence_padding(batch_subject_labels), np.array(batch_subject_ids),
                       sequence_padding(batch_object_labels)], None
                batch_token_ids, batch_segment_ids = [], []
                batch_subject_labels, batch_subject_ids, batch_object_labels = [], [], []


def extract_subject(inputs):
    """The subject's vector: its start and end token states, concatenated."""
    output, subject_ids = inputs
    start = batch_gather(output, subject_ids[:, :1])
    end = batch_gather(output, subject_ids[:, 1:])
    return K.concatenate([start, end], 2)[:, 0]


subject_labels = Input(shape=(None, 2), name='Subject-Labels')
subject_ids = Input(shape=(2,), name='Subject-Ids', dtype='int32')
object_labels = Input(shape=(None, len(predicates), 2), name='Object-Labels')

bert = build_transformer_model(config_path, checkpoint_path, return_keras_model=False)
hidden_size = bert.model.output.shape[-1]
output = Dense(2, activation='sigmoid', kernel_initializer='he_normal')(bert.model.output)
subject_preds = Lambda(lambda x: x ** 2)(output)
subject_model = keras.models.Model(bert.model.inputs, subject_preds)

output = bert.model.output
subject = Lambda(extract_subject, output_shape=(2 * hidden_size,))([output, subject_ids])
output = LayerNormalization(conditional=True)([output, subject])
output = Dense(len(predicates) * 2, activation='sigmoid',
               kernel_initializer='he_normal')(output)
output = Lambda(lambda x: x ** 4)(output)
object_preds = Reshape((-1, len(predicates), 2))(output)
object_model = keras.models.Model(bert.model.inputs + [subject_ids], object_preds)


class TotalLoss(Loss):
    """Binary cross-entropy of the subject and object pointers over real tokens."""
    def compute_loss(self, inputs, mask=None):
        subject_labels, object_labels = inputs[:2]
        subject_preds, object_preds, _ = inputs[2:]
        token_mask = K.cast(mask[4], K.floatx())
        subject_loss = K.mean(K.binary_crossentropy(subject_labels, subject_preds), 2)
        subject_loss = K.sum(subject_loss * token_mask) / K.sum(token_mask)
        object_loss = K.sum(K.mean(K.binary_crossentropy(object_labels, object_preds), 3), 2)
        object_loss = K.sum(object_loss * token_mask) / K.sum(token_mask)
        return subject_loss + object_loss


subject_preds, object_preds = TotalLoss([2, 3])(
    [subject_labels, object_labels, subject_preds, object_preds, bert.model.output])
train_model = keras.models.Model(
    bert.model.inputs + [subject_labels, subject_ids, object_labels],
    [subject_preds, object_preds])
train_model.compile(optimizer=Adam(2e-3))


def extract_spoes(text):
    tokens = tokenizer.tokenize(text, maxlen=maxlen)
    mapping = tokenizer.rematch(text, tokens)
    token_ids, segment_ids = tokenizer.encode(text, maxlen=maxlen)
    token_ids, segment_ids = np.array([token_ids]), np.array([segment_ids])
    subject_preds = subject_model.predict([token_ids, segment_ids], verbose=0)
    subject_preds[:, [0, -1]] *= 0
    starts = np.where(subject_preds[0, :, 0] > 0.5)[0]
    ends = np.where(subject_preds[0, :, 1] > 0.5)[0]
    spoes = []
    for i in starts:
        j = ends[ends >= i]
        if len(j) > 0:
            preds = object_model.predict([token_ids, segment_ids, np.array([[i, j[0]]])],
                                         verbose=0)[0]
            for o_start, p in zip(*np.where(preds[:, :, 0] > 0.5)):
                for o_end, p2 in zip(*np.where(preds[:, :, 1] > 0.5)):
                    if o_start <= o_end and p == p2:
                        spoes.append((text[mapping[i][0]:mapping[j[0]][-1] + 1], predicates[p],
                                      text[mapping[o_start][0]:mapping[o_end][-1] + 1]))
                        break
    return spoes


train_generator = data_generator(train_data, batch_size)
history = train_model.fit(train_generator.forfit(), steps_per_epoch=len(train_generator),
                          epochs=epochs, verbose=0)
print('spo:', extract_spoes(train_data[0]['text']))
print('loss: %.4f -> %.4f' % (history.history['loss'][0], history.history['loss'][-1]))
