"""bert4keras 0.11.5 oracle worker: ``python worker.py jobs.pkl results.pkl``.

Runs in its own process with ``TF_KERAS=1 TF_USE_LEGACY_KERAS=1`` and this
folder's ``sitecustomize.py`` (see ``tests/_oracle.py``). ``jobs.pkl`` holds
``{name: (function_name, kwargs)}``; ``results.pkl`` gets ``{name: result}``,
or ``{name: ("error", traceback)}`` for a job that failed.
"""

import os
import pickle
import sys
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from shared import table_logits, two_character_words  # noqa: E402


def outputs_of(model, inputs):
    """The model's outputs on one small batch, as a list of arrays: an eager call (what
    ``predict`` computes, without tracing a graph for a single batch)."""
    outputs = model([np.asarray(x) for x in inputs])
    return [output.numpy() for output in (outputs if isinstance(outputs, list) else [outputs])]


def model_outputs(config_path, checkpoint_path, inputs, **kwargs):
    from bert4keras.models import build_transformer_model

    model = build_transformer_model(config_path, checkpoint_path, **kwargs)
    return outputs_of(model, inputs)


def roformer_v2_outputs(config_path, checkpoint_path, inputs, **kwargs):
    """bert4keras's RoFormerV2; its ``Output-Mapping`` (E != H), which bert4keras
    neither loads nor saves, set from the checkpoint's ``cls/predictions/output_mapping``
    (bert4x's name for it)."""
    import tensorflow as tf
    from bert4keras.models import build_transformer_model

    model = build_transformer_model(config_path, checkpoint_path, model="roformer_v2",
                                    **kwargs)
    reader = tf.train.load_checkpoint(checkpoint_path)
    name = "cls/predictions/output_mapping/kernel"
    if reader.has_tensor(name):
        model.get_layer("Output-Mapping").set_weights([reader.get_tensor(name)])
    return outputs_of(model, inputs)


def masked_loss(config_path, checkpoint_path, inputs, **kwargs):
    """A Loss layer reading the Keras mask of the MLM output, as seq2seq scripts do."""
    from bert4keras.backend import K, keras
    from bert4keras.layers import Loss
    from bert4keras.models import build_transformer_model

    class MaskedCrossEntropy(Loss):
        def compute_loss(self, inputs, mask=None):
            token_ids, y_pred = inputs
            y_mask = K.cast(mask[1][:, 1:], K.floatx())
            loss = K.sparse_categorical_crossentropy(token_ids[:, 1:], y_pred[:, :-1])
            return K.sum(loss * y_mask) / K.sum(y_mask)

    model = build_transformer_model(config_path, checkpoint_path, **kwargs)
    output = MaskedCrossEntropy(1)([model.inputs[0], model.outputs[0]])
    train = keras.models.Model(model.inputs, output)
    train.compile(optimizer="adam")
    return float(train.evaluate(inputs, verbose=0))


def crf(emissions, mask, trans, labels, lr_multiplier):
    import tensorflow as tf
    from bert4keras.layers import ConditionalRandomField

    mask = tf.constant(mask > 0)
    layer = ConditionalRandomField(lr_multiplier=lr_multiplier)
    layer.build(emissions.shape)
    layer.set_weights([trans / lr_multiplier])
    output = layer(emissions, mask=mask)
    return dict(output=output.numpy(),
                sparse_loss=layer.sparse_loss(labels, output).numpy(),
                sparse_accuracy=float(layer.sparse_accuracy(labels, output)))


def memm(emissions, mask, weights, labels, lr_multiplier, hidden_dim):
    """MEMM outputs, losses, accuracies and the Viterbi paths of its transition matrix."""
    import tensorflow as tf
    from bert4keras.backend import K
    from bert4keras.layers import MaximumEntropyMarkovModel
    from bert4keras.snippets import ViterbiDecoder

    layer = MaximumEntropyMarkovModel(lr_multiplier=lr_multiplier, hidden_dim=hidden_dim)
    layer.build(emissions.shape)
    layer.set_weights([w / lr_multiplier for w in weights])
    output = layer(emissions, mask=tf.constant(mask > 0))
    one_hot = np.eye(emissions.shape[-1], dtype="float32")[labels]
    result = dict(output=output.numpy(),
                  sparse_loss=float(layer.sparse_loss(labels, output)),
                  dense_loss=float(layer.dense_loss(one_hot, output)),
                  sparse_accuracy=float(layer.sparse_accuracy(labels, output)),
                  dense_accuracy=float(layer.dense_accuracy(one_hot, output)))
    if hidden_dim is None:  # bert4keras's low-rank MEMM has no `trans`
        decoder = ViterbiDecoder(K.eval(layer.trans))
        result["paths"] = [decoder.decode(e[m > 0].copy()) for e, m in zip(emissions, mask)]
    return result


def viterbi(trans, nodes, starts, ends):
    from bert4keras.snippets import ViterbiDecoder

    decoder = ViterbiDecoder(trans, starts, ends)
    return [decoder.decode(n.copy()) for n in nodes]


def global_pointer(efficient, x, mask, weights, y_true, **kwargs):
    from bert4keras.backend import multilabel_categorical_crossentropy
    import tensorflow as tf
    from bert4keras.layers import EfficientGlobalPointer, GlobalPointer

    mask = tf.constant(mask > 0)
    layer = (EfficientGlobalPointer if efficient else GlobalPointer)(**kwargs)
    layer(x, mask=mask)  # builds the inner Dense layers
    dense = [layer.p_dense, layer.q_dense] if efficient else [layer.dense]
    for d, (kernel, bias) in zip(dense, weights):
        d.set_weights([kernel, bias])
    output = layer(x, mask=mask)
    batch, heads = output.shape[:2]
    y_pred = np.reshape(output.numpy(), (batch * heads, -1))
    loss = multilabel_categorical_crossentropy(y_true.reshape(batch * heads, -1), y_pred)
    return dict(output=output.numpy(), loss=loss.numpy())


def layer_norm(x, c, weights, **kwargs):
    from bert4keras.layers import LayerNormalization

    layer = LayerNormalization(conditional=True, **kwargs)
    layer([x, c])
    layer.gamma.assign(weights["gamma"])
    layer.beta.assign(weights["beta"])
    layer.hidden_dense.set_weights([weights["hidden"]])
    layer.gamma_dense.set_weights([weights["gamma_dense"]])
    layer.beta_dense.set_weights([weights["beta_dense"]])
    return layer([x, c]).numpy()


def layer_norm_variants(x, c, weights, cases, epsilon):
    """bert4keras's LayerNormalization for each ``(zero_mean, scale, offset, conditional)``
    of ``cases`` (a conditional one takes ``[x, c]``)."""
    from bert4keras.layers import LayerNormalization

    outputs = []
    for zero_mean, scale, offset, conditional in cases:
        layer = LayerNormalization(zero_mean=zero_mean, scale=scale, offset=offset,
                                   conditional=conditional, epsilon=epsilon)
        inputs = [x, c] if conditional else x
        layer(inputs)
        for part, used in (("gamma", scale), ("beta", offset)):
            if used:
                getattr(layer, part).assign(weights[part])
                if conditional:
                    getattr(layer, f"{part}_dense").set_weights([weights[f"{part}_dense"]])
        outputs.append(layer(inputs).numpy())
    return outputs


def decoder_ids(vocab_size, start_id, end_id, maxlen, minlen, beams, samples):
    from bert4keras.snippets import AutoRegressiveDecoder

    class Table(AutoRegressiveDecoder):
        @AutoRegressiveDecoder.wraps(default_rtype="logits")
        def predict(self, inputs, output_ids, states):
            return table_logits(output_ids, vocab_size)

    decoder = Table(start_id=start_id, end_id=end_id, maxlen=maxlen, minlen=minlen)
    results = dict(beam=[decoder.beam_search([np.array([1])], **b).tolist() for b in beams])
    sampled = []
    for s in samples:
        np.random.seed(s.pop("seed"))
        sampled.append([ids.tolist() for ids in decoder.random_sample([np.array([1])], **s)])
    results["sample"] = sampled
    return results


def tokenizer(vocab_path, texts, pairs, do_lower_case, maxlen):
    from bert4keras.tokenizers import Tokenizer

    tok = Tokenizer(vocab_path, do_lower_case=do_lower_case)
    result = dict(tokens=[], ids=[], rematch=[], decode=[], pairs=[])
    for text in texts:
        tokens = tok.tokenize(text)
        result["tokens"].append(tokens)
        result["ids"].append(tok.encode(text)[0])
        result["rematch"].append(tok.rematch(text, tokens))
        result["decode"].append(tok.decode(tok.encode(text)[0]))
    for first, second in pairs:
        result["pairs"].append([tok.encode(first, second, maxlen=maxlen),
                                tok.encode(first, second, maxlen=maxlen, pattern="S*ES*E",
                                           truncate_from="left")])
    return result


def jieba_tokenizer(vocab_path, texts):
    """T5-PEGASUS's tokenizer: a BERT vocabulary, jieba words first."""
    import logging

    import jieba
    from bert4keras.tokenizers import Tokenizer

    jieba.setLogLevel(logging.WARNING)
    tok = Tokenizer(vocab_path, do_lower_case=True,
                    pre_tokenize=lambda text: jieba.cut(text, HMM=False))
    return dict(tokens=[tok.tokenize(text) for text in texts],
                ids=[tok.encode(text)[0] for text in texts])


def snippets_results(pairs, texts, square):
    from bert4keras import snippets

    truncated = []
    for maxlen, index, sequences in pairs:
        sequences = [list(x) if x is not None else None for x in sequences]
        returned = snippets.truncate_sequences(maxlen, index, *sequences)
        truncated.append((returned, sequences))
    return dict(
        truncated=truncated,
        segmented=[snippets.text_segmentate(text, 8, "\n。，", "。") for text in texts],
        substring=[snippets.longest_common_substring(a, b) for a, b in zip(texts, texts[1:])],
        subsequence=[snippets.longest_common_subsequence(a, b) for a, b in zip(texts, texts[1:])],
        applied=snippets.parallel_apply(globals()[square], list(range(20)), 3, 4, dummy=True,
                                        unordered=False))


def sp_tokenizer(model_path, texts, pairs, maxlen):
    from bert4keras.tokenizers import SpTokenizer

    tok = SpTokenizer(model_path)
    return dict(ids=[tok.encode(text) for text in texts],
                pairs=[tok.encode(a, b, maxlen=maxlen) for a, b in pairs],
                decoded=[tok.decode(tok.encode(text)[0][1:-1]) for text in texts],
                pre_tokenized=[SpTokenizer(model_path, pre_tokenize=two_character_words)
                               .encode(text) for text in texts])


def optimizer_steps(kernel, bias, x, y, steps, factories, base="Adam", ema=False, **settings):
    """Weights of a Dense layer after ``steps`` updates on a squared-error loss.

    ``x`` is one input batch, or one per step (``x.ndim == 3``). Returns a list of
    weight snapshots: after training, then with ``ema`` the weights after
    ``apply_ema_weights()``, ``apply_ema_weights(bias_correction=False)`` and
    ``reset_old_weights()``.
    """
    import tensorflow as tf
    from bert4keras import optimizers

    optimizer_class = getattr(optimizers, base)
    for name in factories:
        optimizer_class = getattr(optimizers, name)(optimizer_class)
    optimizer = optimizer_class(**settings)
    inputs = x if x.ndim == 3 else [x] * steps
    dense = tf.keras.layers.Dense(kernel.shape[1], name="Transformer-0-FeedForward")
    dense(inputs[0])  # built by a call, so its variables are named after the layer
    dense.set_weights([kernel, bias])
    for batch in inputs:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(dense(batch) - y))
        grads = tape.gradient(loss, dense.trainable_weights)
        optimizer.apply_gradients(zip(grads, dense.trainable_weights))
    snapshots = [[w.numpy() for w in dense.weights]]
    if ema:
        for bias_correction in (True, False):
            optimizer.apply_ema_weights(bias_correction=bias_correction)
            snapshots.append([w.numpy() for w in dense.weights])
            optimizer.reset_old_weights()
        snapshots.append([w.numpy() for w in dense.weights])
    return snapshots


def sparse_multilabel_losses(y_true, y_pred):
    import tensorflow as tf
    from bert4keras.backend import sparse_multilabel_categorical_crossentropy as loss

    return [loss(tf.constant(y_true), tf.constant(y_pred), mask_zero).numpy()
            for mask_zero in (False, True)]


def keras2_backend(cases):
    """Keras 2's backend (tf-keras's, with the functions its public API no longer
    lists, such as ``logsumexp``) on each ``(function, args, kwargs)`` case."""
    import tensorflow as tf
    from tf_keras.src import backend

    def tensor(value):
        if isinstance(value, list):
            return [tensor(item) for item in value]
        return tf.constant(value) if isinstance(value, np.ndarray) else value

    results = []
    for name, args, kwargs in cases:
        value = getattr(backend, name)(*[tensor(arg) for arg in args], **kwargs)
        results.append(np.asarray(value))
    return results


def square(x):
    return x * x


def main(jobs_path, results_path):
    with open(jobs_path, "rb") as file:
        jobs = pickle.load(file)
    results = {}
    for name, (function, kwargs) in jobs.items():
        try:
            results[name] = globals()[function](**kwargs)
        except Exception:  # reported to the test that asked, with the oracle's traceback
            results[name] = ("error", traceback.format_exc())
    with open(results_path + ".tmp", "wb") as file:
        pickle.dump(results, file)
    os.replace(results_path + ".tmp", results_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
