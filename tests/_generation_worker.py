"""Cache and decoder checks run under one Keras backend.

``tests/test_generation.py`` imports these functions for TensorFlow and runs this
file with ``KERAS_BACKEND=jax`` / ``torch`` in a subprocess (the backend is fixed
when Keras is imported). Run directly, it prints one JSON object of results.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bert4x.configs import BertConfig  # noqa: E402
from bert4x.decoding import Decoder  # noqa: E402
from bert4x.families import T5Config  # noqa: E402
from bert4x.models import MODELS  # noqa: E402

VOCAB = 30
END_ID = 3
SOURCES = [[2, 5, 6, 7, 8, 3], [2, 9, 3], [2, 10, 11, 12, 3]]
TARGETS = [[13, 14, 15, 16], [17, 18, 19, 20], [21, 22, 23, 24]]
CLASSES = np.array([[0], [1], [1]], dtype="int32")


def tiny_config(config_class=BertConfig, **overrides):
    values = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=40, max_position_embeddings=40,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                  initializer_range=0.3)
    values.update(overrides)
    return config_class(**values)


def class_condition():
    """A class id ``[batch, 1]`` embedded as the CLN condition ``[batch, 8]``."""
    class_id = keras.Input((1,), dtype="int32", name="class_id")
    embedded = keras.layers.Embedding(2, 8, name="class_embedding")(class_id)
    return class_id, keras.layers.Reshape((8,))(embedded)


def build(application, conditional, seed=0, randomise_conditions=True, model="bert",
          **config):
    """A tiny builder of family ``model``; with CLN, the zero-initialised condition
    weights are randomised (at zero they would make the conditional check vacuous)."""
    keras.utils.set_random_seed(seed)
    kwargs = {}
    if conditional:
        class_id, condition = class_condition()
        kwargs = dict(layer_norm_cond=condition, additional_input_layers=[class_id],
                      layer_norm_cond_hidden_size=16, layer_norm_cond_hidden_act="tanh")
    builder = MODELS[model](tiny_config(MODELS[model].config_class, **config),
                            application=application, with_mlm="linear", **kwargs)
    if conditional and randomise_conditions:
        rng = np.random.default_rng(seed)
        for variable in builder.model.weights:
            if "gamma_dense" in variable.path or "beta_dense" in variable.path:
                variable.assign(rng.normal(0, 0.2, variable.shape).astype("float32"))
    return builder


# Tiny configs of the other families: odd head counts, factorised embeddings,
# shared layers, fairseq RoBERTa's padding id 1 and offset positions, RoFormer's
# rotary and NEZHA's relative positions (K = 3 clips within these sequences),
# RoFormer-V2's bias-free, scale-free layers.
FAMILY_CONFIGS = {
    "roberta": dict(model_type="roberta", pad_token_id=1, type_vocab_size=1,
                    hidden_size=30, num_attention_heads=3, max_position_embeddings=42,
                    layer_norm_eps=1e-5),
    "albert": dict(embedding_size=12, hidden_size=30, num_attention_heads=3,
                   num_hidden_layers=3),
    "albert_unshared": dict(embedding_size=12, hidden_size=30, num_attention_heads=3),
    "electra": dict(embedding_size=12, hidden_size=30, num_attention_heads=3),
    "roformer": dict(embedding_size=12, hidden_size=30, num_attention_heads=3),
    "nezha": dict(hidden_size=30, num_attention_heads=3, max_relative_position=3),
    # No biases, RMS norms without gamma or beta, the output mapping back to E.
    "roformer_v2": dict(embedding_size=12, hidden_size=30, num_attention_heads=3),
}


def build_family(family, application="unilm", seed=0, conditional=False):
    """A tiny builder of ``family`` (``FAMILY_CONFIGS``) with random weights; with CLN,
    random condition weights."""
    keras.utils.set_random_seed(seed)
    kwargs = {}
    if conditional:
        class_id, condition = class_condition()
        kwargs = dict(layer_norm_cond=condition, additional_input_layers=[class_id])
    builder = MODELS[family](tiny_config(**FAMILY_CONFIGS[family]), application=application,
                             with_mlm="linear", **kwargs)
    rng = np.random.default_rng(seed)
    for variable in builder.model.weights if conditional else []:
        if "gamma_dense" in variable.path or "beta_dense" in variable.path:
            variable.assign(rng.normal(0, 0.2, variable.shape).astype("float32"))
    return builder


def target_segment(application):
    return 1 if application == "unilm" else 0


REFERENCE_LENGTH = 24
# Every re-run batch has this many rows (the cache check's), so that JAX, which
# compiles each operation run eagerly per shape, compiles it once for all the
# re-runs of models of one size.
REFERENCE_ROWS = 6


def padded_rows(rows):
    """``rows`` followed by copies of its first row, to ``REFERENCE_ROWS`` rows."""
    return list(rows) + [rows[0]] * (REFERENCE_ROWS - len(rows))


def full_logits_rows(builder, rows):
    """Logits of full re-runs of several sequences at once: ``rows`` holds ``(source,
    generated, extra)``; answer ``i`` is ``[len(generated) + 1, vocab]``, from the last
    source token of row ``i``.

    The rows are right-padded to a fixed length (padding keys are masked, so real
    positions are unaffected) and run by one direct call of the model: a check
    re-runs each model once or twice, where ``predict`` would first trace (or, on
    JAX, compile) a function of its own for it.
    """
    application = builder.application
    batch = padded_rows(rows)
    token_ids = np.full((len(batch), REFERENCE_LENGTH), builder.config.pad_token_id, "int32")
    segment_ids = np.zeros_like(token_ids)
    for index, (source, generated, _) in enumerate(batch):
        end = len(source) + len(generated)
        token_ids[index, :end] = list(source) + list(generated)
        segment_ids[index, len(source):end] = target_segment(application)
    extras = [np.stack([np.asarray(row[2][k]) for row in batch])
              for k in range(len(rows[0][2]))]
    logits = keras.ops.convert_to_numpy(builder.model(
        model_inputs(builder, token_ids, segment_ids) + extras, training=False))
    return [logits[index, len(source) - 1:len(source) + len(generated)]
            for index, (source, generated, _) in enumerate(rows)]


def full_logits(builder, source, generated, extra=()):
    """Logits ``[len(generated) + 1, vocab]`` of a full re-run, from the last source
    token (:func:`full_logits_rows` of one row)."""
    return full_logits_rows(builder, [(source, generated, extra)])[0]


def model_inputs(builder, token_ids, segment_ids):
    """The model's id inputs: token and segment ids, or token ids alone (GPT-2)."""
    return [token_ids, segment_ids] if builder.takes_segment_ids() else [token_ids]


def check_cache(builder, rows_per_source=2):
    """Max |cached step logits - full re-run logits| over every step and row.

    Each source is decoded by ``rows_per_source`` rows with different targets (as
    beams and samples are), so the rows of a source share its cached keys while
    each keeps its own generated tokens.
    """
    application, conditional = builder.application, builder.conditional
    prefill, step = builder.cache_models()
    sources, source_length, steps = len(SOURCES), max(map(len, SOURCES)), 4
    batch = sources * rows_per_source
    # Row r continues source r // rows_per_source with a target of its own.
    row_sources = [row // rows_per_source for row in range(batch)]
    row_targets = [TARGETS[(source + row) % sources] for row, source in enumerate(row_sources)]
    pad = builder.config.pad_token_id
    token_ids = np.full((sources, source_length), pad, "int32")
    for index, source in enumerate(SOURCES):
        token_ids[index, :len(source)] = source
    lengths = np.array([len(source) for source in SOURCES], "int32")
    row_lengths = lengths[row_sources]
    # The decoding graphs name the condition's input as its keras.Input is named.
    extra = {"class_id": CLASSES} if conditional else {}
    row_extra = {"class_id": CLASSES[row_sources]} if conditional else {}
    inputs = dict(token_ids=token_ids, segment_ids=np.zeros_like(token_ids),
                  last_index=lengths - 1, **extra)
    outputs = prefill({key: keras.ops.convert_to_tensor(x) for key, x in inputs.items()})
    logits, source_cache = outputs["logits"], outputs["cache"]
    source_key_mask = (token_ids != pad).astype("float32")
    new_slots = steps - 1
    shape = list(keras.ops.shape(source_cache))
    shape[0], shape[4] = batch, new_slots
    cache = keras.ops.zeros(shape, dtype=source_cache.dtype)
    key_mask = np.zeros((batch, new_slots), "float32")
    cached = [keras.ops.convert_to_numpy(logits)[row_sources]]
    for t in range(steps - 1):
        write_mask = np.zeros((batch, new_slots), "float32")
        write_mask[:, t] = 1
        key_mask = key_mask + write_mask
        tokens = np.array([[target[t]] for target in row_targets], "int32")
        segments = np.full((batch, 1), target_segment(application), "int32")
        inputs = dict(token_ids=tokens, segment_ids=segments,
                      position_ids=(row_lengths + t)[:, None], source_cache=source_cache,
                      source_key_mask=source_key_mask, cache=cache, key_mask=key_mask,
                      write_mask=write_mask, **row_extra)
        outputs = step({key: keras.ops.convert_to_tensor(x) for key, x in inputs.items()})
        logits, cache = outputs["logits"], outputs["cache"]
        cached.append(keras.ops.convert_to_numpy(logits))
    references = full_logits_rows(builder, [
        (SOURCES[source], row_targets[row][:steps - 1],
         [CLASSES[source]] if conditional else []) for row, source in enumerate(row_sources)])
    worst = 0.0
    for row, reference in enumerate(references):
        stepped = np.stack([logits[row] for logits in cached])
        worst = max(worst, float(np.abs(reference - stepped).max()))
    return worst


def greedy_confirmed(scores, found, max_length, pad_id):
    """The greedy continuation that re-run ``scores`` confirm of ``found``.

    ``scores[t]`` are the next-token scores after ``found[:t]``, from one full re-run
    of the source and ``found`` (each position sees only the tokens before it, which
    ``check_cache`` checks against separate re-runs). Walking ``t`` up: the argmax
    (never the padding id) is the greedy token after ``found[:t]`` while ``found``
    agrees so far; the walk stops at the end token, at ``max_length`` tokens, or
    after the first token where ``found`` disagrees. So the answer equals ``found``
    exactly when greedy decoding by separate re-runs of every prefix gives ``found``.
    """
    generated = []
    for t in range(min(len(found) + 1, max_length)):
        row = np.array(scores[t], np.float64)
        row[pad_id] = -np.inf
        token = int(np.argmax(row))
        if token == END_ID:
            break
        generated.append(token)
        if t == len(found) or token != found[t]:
            break
    return generated


def check_greedy(builder, max_length=6):
    """Whether the cached, compiled greedy decoder matches argmax over full re-runs."""
    conditional = builder.conditional
    decoder = Decoder(builder, end_id=END_ID, max_length=max_length)
    extra = [CLASSES] if conditional else None
    found = [result.token_ids for result in
             decoder.greedy(SOURCES, additional_inputs=extra)]
    scores = full_logits_rows(builder, [
        (source, tokens, [CLASSES[row]] if conditional else [])
        for row, (source, tokens) in enumerate(zip(SOURCES, found))])
    return all(greedy_confirmed(rows, tokens, max_length, builder.config.pad_token_id)
               == tokens for rows, tokens in zip(scores, found))


# Encoder-decoders: T5.1.0 (ReLU, tied, scaled output) and mT5 with bert4keras's
# cross-attention position bias; 3 heads of 7 on 30, 3 decoder blocks, 8 buckets.
T5_CONFIGS = {"t5.1.0": {}, "mt5.1.1": dict(cross_position_bias=True)}


def build_t5(version, seed=0, **overrides):
    """A tiny random T5 builder of ``version`` (``T5_CONFIGS``)."""
    keras.utils.set_random_seed(seed)
    values = dict(vocab_size=VOCAB, hidden_size=30, num_hidden_layers=2, num_decoder_layers=3,
                  num_attention_heads=3, attention_head_size=7, intermediate_size=40,
                  relative_attention_num_buckets=8, relative_attention_max_distance=10,
                  hidden_dropout_prob=0.0, initializer_range=0.3)
    values.update(T5_CONFIGS[version], **overrides)
    return MODELS[version](T5Config(**values))


def t5_full_log_probs(builder, source, generated):
    """Log-probabilities ``[len(generated) + 1, vocab]`` of a full re-run of the
    encoder-decoder on ``source`` and ``[start] + generated`` (padded to fixed
    lengths, which change nothing at the real positions)."""
    encoder_ids = np.zeros((1, REFERENCE_LENGTH), "int32")
    decoder_ids = np.zeros((1, REFERENCE_LENGTH), "int32")
    encoder_ids[0, :len(source)] = source
    decoder_ids[0, 1:len(generated) + 1] = generated
    probabilities = np.asarray(builder.model.predict_on_batch([encoder_ids, decoder_ids]))
    return np.log(probabilities[0, :len(generated) + 1].astype(np.float64))


def t5_full_log_probs_rows(builder, rows):
    """:func:`t5_full_log_probs` of several ``(source, generated)`` rows at once, by
    one direct call of the model (no ``predict`` function traced for a check that
    re-runs the model once or twice)."""
    encoder_ids = np.zeros((REFERENCE_ROWS, REFERENCE_LENGTH), "int32")
    decoder_ids = np.zeros((REFERENCE_ROWS, REFERENCE_LENGTH), "int32")
    for index, (source, generated) in enumerate(padded_rows(rows)):
        encoder_ids[index, :len(source)] = source
        decoder_ids[index, 1:len(generated) + 1] = generated
    probabilities = keras.ops.convert_to_numpy(
        builder.model([encoder_ids, decoder_ids], training=False))
    return [np.log(probabilities[index, :len(generated) + 1].astype(np.float64))
            for index, (_, generated) in enumerate(rows)]


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    logits = logits - logits.max(axis=-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def check_t5_cache(builder, rows_per_source=2, steps=4):
    """Max |cached step log-probs - full re-run log-probs| over every step and row of an
    encoder-decoder; each source is continued by ``rows_per_source`` rows with
    targets of their own (they share its cross-attention keys and start id)."""
    prefill, step = builder.cache_models()
    sources, source_length = len(SOURCES), max(map(len, SOURCES))
    batch = sources * rows_per_source
    row_sources = [row // rows_per_source for row in range(batch)]
    row_targets = [TARGETS[(source + row) % sources] for row, source in enumerate(row_sources)]
    token_ids = np.zeros((sources, source_length), "int32")
    for index, source in enumerate(SOURCES):
        token_ids[index, :len(source)] = source
    outputs = prefill({"token_ids": keras.ops.convert_to_tensor(token_ids)})
    shared = dict(source_cache=outputs["cache"], cross_cache=outputs["cross_cache"],
                  source_key_mask=(token_ids != 0).astype("float32"))
    shape = list(keras.ops.shape(outputs["cache"]))
    shape[0], shape[4] = batch, steps - 1
    cache = keras.ops.zeros(shape, dtype=outputs["cache"].dtype)
    key_mask = np.zeros((batch, steps - 1), "float32")
    cached = [log_softmax(keras.ops.convert_to_numpy(outputs["logits"]))[row_sources]]
    for t in range(steps - 1):
        write_mask = np.zeros((batch, steps - 1), "float32")
        write_mask[:, t] = 1
        key_mask = key_mask + write_mask
        tokens = np.array([[target[t]] for target in row_targets], "int32")
        inputs = dict(shared, token_ids=tokens, cache=cache, key_mask=key_mask,
                      write_mask=write_mask)
        outputs = step({key: keras.ops.convert_to_tensor(x) for key, x in inputs.items()})
        cache = outputs["cache"]
        cached.append(log_softmax(keras.ops.convert_to_numpy(outputs["logits"])))
    references = t5_full_log_probs_rows(builder, [
        (SOURCES[source], row_targets[row][:steps - 1])
        for row, source in enumerate(row_sources)])
    worst = 0.0
    for row, reference in enumerate(references):
        stepped = np.stack([log_probs[row] for log_probs in cached])
        worst = max(worst, float(np.abs(reference - stepped).max()))
    return worst


def check_t5_greedy(builder, max_length=6):
    """Whether the cached greedy decoder of an encoder-decoder matches argmax over full
    re-runs (the padding id, which is the start id, is never emitted; see
    :func:`greedy_confirmed`)."""
    found = [result.token_ids for result in
             Decoder(builder, end_id=END_ID, max_length=max_length).greedy(SOURCES)]
    scores = t5_full_log_probs_rows(builder, list(zip(SOURCES, found)))
    return all(greedy_confirmed(rows, tokens, max_length, 0) == tokens
               for rows, tokens in zip(scores, found))


def run_all():
    results = {"backend": keras.backend.backend()}
    for application in ("unilm", "lm"):
        for conditional in (False, True):
            key = f"{application}{'-cln' if conditional else ''}"
            builder = build(application, conditional)
            results[f"cache:{key}"] = check_cache(builder)
            results[f"greedy:{key}"] = check_greedy(builder)
    for family in FAMILY_CONFIGS:
        builder = build_family(family)
        results[f"cache:{family}"] = check_cache(builder)
        results[f"greedy:{family}"] = check_greedy(builder)
    for version in T5_CONFIGS:
        builder = build_t5(version)
        results[f"cache:{version}"] = check_t5_cache(builder)
        results[f"greedy:{version}"] = check_t5_greedy(builder)
    return results


if __name__ == "__main__":
    print("RESULT " + json.dumps(run_all()))
