"""Attention position hooks: RoFormer's rotary encoding and NEZHA's relative positions.

References are explicit NumPy loops over the papers' formulas, written here: rotary
pairs ``(x[2m], x[2m+1])`` rotated by ``p * 10000^(-2m/d)``; NEZHA's
``s_ij = (q_i.k_j + q_i.a_ij) / sqrt(d)``, ``o_i = sum_j p_ij (v_j + a_ij)`` with
``a_ij = T[clip(j - i, -K, K) + K]`` and ``T[r, 2m] = sin(r / 10000^(2m/d))``,
``T[r, 2m+1] = cos(r / 10000^(2m/d))``. The cached path (prefill, then one token
per step at the slots and positions the decoder uses) must equal the full run.
"""

import math
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from keras import ops  # noqa: E402

from bert4x.layers import (AttentionProbabilities, CachedAttention,  # noqa: E402
                           MultiHeadAttention, RelativePositionEncoding,
                           RotaryPositionEncoding)

HEADS, HEAD_SIZE, HIDDEN = 3, 6, 10
TOL = 1e-5


def numpy_rotate(x, positions):
    """x: [length, d] rotated at ``positions`` [length], one pair at a time."""
    out = np.array(x, dtype=np.float64)
    d = x.shape[-1]
    for t, p in enumerate(positions):
        for m in range(d // 2):
            angle = p * 10000.0 ** (-2.0 * m / d)
            a, b = x[t, 2 * m], x[t, 2 * m + 1]
            out[t, 2 * m] = a * math.cos(angle) - b * math.sin(angle)
            out[t, 2 * m + 1] = b * math.cos(angle) + a * math.sin(angle)
    return out


def numpy_nezha_table(k, d):
    table = np.zeros((2 * k + 1, d))
    for r in range(2 * k + 1):
        for m in range(d // 2):
            table[r, 2 * m] = math.sin(r / 10000.0 ** (2.0 * m / d))
            table[r, 2 * m + 1] = math.cos(r / 10000.0 ** (2.0 * m / d))
    return table


def numpy_attention(x, weights, allowed, kind, positions, k=64):
    """Self-attention of one row: x [L, H], allowed [L, L] booleans, positions [L]."""
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = weights
    length = x.shape[0]
    table = numpy_nezha_table(k, HEAD_SIZE)
    heads = []
    for h in range(HEADS):
        cols = slice(h * HEAD_SIZE, (h + 1) * HEAD_SIZE)
        q, kk, v = (x @ w[:, cols] + b[cols] for w, b in ((wq, bq), (wk, bk), (wv, bv)))
        if kind == "rotary":
            q, kk = numpy_rotate(q, positions), numpy_rotate(kk, positions)
        out = np.zeros((length, HEAD_SIZE))
        for i in range(length):
            scores = np.full(length, -np.inf)
            rel = [table[min(max(positions[j] - positions[i], -k), k) + k]
                   for j in range(length)]
            for j in range(length):
                if allowed[i, j]:
                    s = q[i] @ kk[j]
                    if kind == "relative":
                        s += q[i] @ rel[j]
                    scores[j] = s / math.sqrt(HEAD_SIZE)
            p = np.exp(scores - scores.max())
            p /= p.sum()
            for j in range(length):
                out[i] += p[j] * (v[j] + (rel[j] if kind == "relative" else 0.0))
        heads.append(out)
    return np.concatenate(heads, axis=-1) @ wo + bo


def encoding(kind, k=64):
    if kind is None:
        return None
    return RotaryPositionEncoding() if kind == "rotary" else RelativePositionEncoding(k)


def attention_layer(kind, k=64, seed=0):
    layer = MultiHeadAttention(HEADS, HEAD_SIZE, position_encoding=encoding(kind, k))
    layer.build((None, None, HIDDEN))
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))
    weights = [(ops.convert_to_numpy(d.kernel).astype(np.float64),
                ops.convert_to_numpy(d.bias).astype(np.float64))
               for d in (layer.query_dense, layer.key_dense, layer.value_dense,
                         layer.output_dense)]
    return layer, weights


def bias_of(allowed):
    return np.where(allowed, 0.0, -1e9).astype("float32")[:, None]


# ----------------------------------------------------------------------- rotary
def test_rotary_rotates_interleaved_pairs_at_given_positions():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, HEADS, 5, HEAD_SIZE)).astype("float32")
    positions = np.array([[0, 3, 7, 100, 1000], [4, 5, 6, 7, 8]], dtype="int32")
    rotary = RotaryPositionEncoding()
    given, _ = rotary.encode(ops.convert_to_tensor(x), ops.convert_to_tensor(x),
                             ops.convert_to_tensor(positions))
    default, _ = rotary.encode(ops.convert_to_tensor(x), ops.convert_to_tensor(x), None)
    for b in range(2):
        for h in range(HEADS):
            np.testing.assert_allclose(ops.convert_to_numpy(given)[b, h],
                                       numpy_rotate(x[b, h], positions[b]), atol=1e-4)
            np.testing.assert_allclose(ops.convert_to_numpy(default)[b, h],
                                       numpy_rotate(x[b, h], range(5)), atol=TOL)


def test_rotary_scores_depend_only_on_the_offset():
    rng = np.random.default_rng(2)
    q = ops.convert_to_tensor(rng.normal(size=(1, 1, 1, 8)).astype("float32"))
    k = ops.convert_to_tensor(rng.normal(size=(1, 1, 1, 8)).astype("float32"))
    rotary = RotaryPositionEncoding()

    def score(i, j):
        qi, _ = rotary.encode(q, q, ops.convert_to_tensor([[i]]))
        _, kj = rotary.encode(k, k, ops.convert_to_tensor([[j]]))
        return float(ops.convert_to_numpy(ops.sum(qi * kj)))

    for i, j in ((0, 3), (5, 1), (7, 7)):
        assert abs(score(i, j) - score(i + 11, j + 11)) < 1e-4
    assert abs(score(0, 3) - score(0, 4)) > 1e-3  # the offset does matter


def test_rotary_refuses_an_odd_head_size():
    layer = MultiHeadAttention(2, 5, position_encoding=RotaryPositionEncoding())
    with pytest.raises(ValueError, match="even head size"):
        layer(ops.ones((1, 3, 10)))


# --------------------------------------------------------------------- relative
def test_nezha_table_is_the_sinusoid_at_the_shifted_index():
    for k, d in ((64, 6), (3, 7)):
        np.testing.assert_allclose(RelativePositionEncoding(k).table(d),
                                   numpy_nezha_table(k, d), atol=1e-6)


# ------------------------------------------------------------------- attention
def padded_inputs(seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 7, HIDDEN)).astype("float32")
    lengths = [7, 4]
    allowed = np.zeros((2, 7, 7), dtype=bool)
    for b, n in enumerate(lengths):
        allowed[b, :, :n] = True
    return x, allowed


@pytest.mark.parametrize("kind,k", [("rotary", 64), ("relative", 64), ("relative", 2)])
def test_attention_equals_numpy(kind, k):
    layer, weights = attention_layer(kind, k)
    x, allowed = padded_inputs()
    out = ops.convert_to_numpy(layer(x, attention_bias=bias_of(allowed)))
    for b in range(2):
        expected = numpy_attention(x[b].astype(np.float64), weights, allowed[b], kind,
                                   list(range(7)), k)
        np.testing.assert_allclose(out[b], expected, atol=1e-4)


@pytest.mark.parametrize("kind,k", [("rotary", 64), ("relative", 2)])
def test_cached_steps_equal_the_full_run(kind, k):
    """Decoding's layout: sources of lengths 5 and 3 padded to 5 slots; new token t
    goes to slot 5 + t at absolute position length + t, attending causally."""
    layer, weights = attention_layer(kind, k, seed=4)
    rng = np.random.default_rng(5)
    lengths, source, steps = np.array([5, 3]), 5, 3
    sequences = [rng.normal(size=(n + steps, HIDDEN)).astype("float32") for n in lengths]
    prefill_x = np.zeros((2, source, HIDDEN), dtype="float32")
    key_valid = np.zeros((2, source + steps), dtype=bool)
    for b, n in enumerate(lengths):
        prefill_x[b, :n] = sequences[b][:n]
        key_valid[b, :n] = True
    allowed = np.broadcast_to(key_valid[:, None, :source], (2, source, source))
    cache = CachedAttention(layer)(prefill_x, attention_bias=bias_of(allowed))["cache"]
    cache = ops.pad(cache, [[0, 0], [0, 0], [0, 0], [0, steps], [0, 0]])
    key_positions = np.zeros((2, source + steps), dtype="int32")
    key_positions[:, :source] = np.arange(source)
    for t in range(steps):
        slot = source + t
        key_valid[:, slot] = True
        key_positions[:, slot] = lengths + t
        write = np.zeros((2, source + steps), dtype="float32")
        write[:, slot] = 1.0
        step_x = np.stack([sequences[b][n + t] for b, n in enumerate(lengths)])[:, None]
        step = CachedAttention(layer)(
            step_x, attention_bias=bias_of(key_valid[:, None]), cache=cache,
            write_mask=write, query_positions=(lengths + t)[:, None].astype("int32"),
            key_positions=key_positions)
        out, cache = step["output"], step["cache"]
        for b, n in enumerate(lengths):
            full = sequences[b][:n + t + 1].astype(np.float64)
            causal = np.ones((n + t + 1, n + t + 1), dtype=bool)  # source sees all of itself
            for i in range(n, n + t + 1):
                causal[i, i + 1:] = False
            causal[:n, n:] = False
            expected = numpy_attention(full, weights, causal, kind, list(range(n + t + 1)), k)
            np.testing.assert_allclose(ops.convert_to_numpy(out)[b, 0], expected[-1],
                                       atol=1e-4)


@pytest.mark.parametrize("kind,k", [(None, 64), ("rotary", 64), ("relative", 2)])
def test_shared_source_cache_equals_the_full_run(kind, k):
    """Beam search's layout: each source's keys are cached once (sources of lengths 5
    and 3, padded to 5 slots) and shared by its 2 consecutive rows, which cache only
    their own generated tokens (slot t at position length + t)."""
    layer, weights = attention_layer(kind, k, seed=6)
    rng = np.random.default_rng(7)
    lengths, source, steps, copies = np.array([5, 3]), 5, 3, 2
    sources = [rng.normal(size=(n, HIDDEN)).astype("float32") for n in lengths]
    generated = [rng.normal(size=(steps, HIDDEN)).astype("float32") for _ in range(4)]
    prefill_x = np.zeros((2, source, HIDDEN), dtype="float32")
    source_valid = np.zeros((2, source), dtype=bool)
    for b, n in enumerate(lengths):
        prefill_x[b, :n] = sources[b]
        source_valid[b, :n] = True
    allowed = np.broadcast_to(source_valid[:, None], (2, source, source))
    cached = CachedAttention(layer)
    source_cache = cached(prefill_x, attention_bias=bias_of(allowed))["cache"]
    row_lengths = np.repeat(lengths, copies)
    cache = ops.zeros((4, 2, HEADS, steps, HEAD_SIZE))
    key_valid = np.zeros((4, steps), dtype=bool)
    for t in range(steps):
        key_valid[:, t] = True
        write = np.eye(steps, dtype="float32")[[t] * 4]
        step = cached(
            np.stack([g[t] for g in generated])[:, None], attention_bias=bias_of(key_valid[:, None]),
            cache=cache, write_mask=write,
            query_positions=(row_lengths + t)[:, None].astype("int32"),
            key_positions=(row_lengths[:, None] + np.arange(steps)).astype("int32"),
            source_cache=source_cache, source_bias=bias_of(source_valid[:, None]),
            source_key_positions=np.broadcast_to(np.arange(source), (2, source)).astype("int32"))
        out, cache = step["output"], step["cache"]
        for row, n in enumerate(row_lengths):
            full = np.concatenate([sources[row // copies], generated[row][:t + 1]])
            causal = np.tril(np.ones((n + t + 1, n + t + 1), dtype=bool))
            causal[:n, :n] = True
            expected = numpy_attention(full.astype(np.float64), weights, causal, kind,
                                       list(range(n + t + 1)), k)
            np.testing.assert_allclose(ops.convert_to_numpy(out)[row, 0], expected[-1],
                                       atol=1e-4)


def test_relative_cache_step_needs_key_positions():
    layer, _ = attention_layer("relative")
    cache = ops.zeros((1, 2, HEADS, 4, HEAD_SIZE))
    write = np.eye(4, dtype="float32")[None, 3]
    with pytest.raises(ValueError, match="key_positions"):
        CachedAttention(layer)(np.ones((1, 1, HIDDEN), "float32"), cache=cache,
                               write_mask=write, query_positions=np.array([[3]], "int32"))


@pytest.mark.parametrize("kind", ["rotary", "relative"])
def test_keras_file_round_trip(kind, tmp_path):
    layer, _ = attention_layer(kind, k=3)
    inputs = keras.Input((None, HIDDEN))
    model = keras.Model(inputs, layer(inputs))
    path = str(tmp_path / "attention.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    restored_encoding = restored.layers[-1].position_encoding
    assert type(restored_encoding) is type(layer.position_encoding)
    assert restored_encoding.get_config() == layer.position_encoding.get_config()
    x, _ = padded_inputs()
    np.testing.assert_allclose(ops.convert_to_numpy(restored(x)),
                               ops.convert_to_numpy(model(x)), atol=1e-6)


def test_each_attention_layer_has_one_output_structure(tmp_path):
    """The attention returns its output; the cached attention on the same weights
    returns {output, cache} in the prefill and in a step alike; the probabilities are
    a layer of their own. All three live in one graph and in a .keras file."""
    layer, _ = attention_layer("rotary")
    cached = CachedAttention(layer)
    x, allowed = padded_inputs()
    prefill = cached(x, attention_bias=bias_of(allowed))
    assert set(prefill) == {"output", "cache"}
    plain = layer(x, attention_bias=bias_of(allowed))
    np.testing.assert_allclose(ops.convert_to_numpy(prefill["output"]),
                               ops.convert_to_numpy(plain), atol=1e-6)
    write = np.eye(7, dtype="float32")[[0, 0]]
    step = cached(x[:, :1], cache=prefill["cache"], write_mask=write,
                  query_positions=np.zeros((2, 1), "int32"))
    assert set(step) == {"output", "cache"}
    assert tuple(step["cache"].shape) == tuple(prefill["cache"].shape)

    inputs = keras.Input((None, HIDDEN))
    read = AttentionProbabilities(layer)(inputs)
    model = keras.Model(inputs, [layer(inputs), cached(inputs)["cache"], read])
    assert [operation.name for operation in model.layers[1:]] == [
        layer.name, f"{layer.name}-Cached", f"{layer.name}-Probabilities"]
    path = str(tmp_path / "three_uses.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    attention, *wrappers = restored.layers[1:]
    assert all(wrapper.layer is attention for wrapper in wrappers)  # still one set of weights
    for ours, theirs in zip(restored(x), model(x)):
        np.testing.assert_allclose(ops.convert_to_numpy(ours), ops.convert_to_numpy(theirs),
                                   atol=1e-6)
    for wrapper in (cached, AttentionProbabilities(layer, name="probabilities")):
        clone = type(wrapper).from_config(wrapper.get_config())
        assert clone.name == wrapper.name and clone.layer.get_config() == layer.get_config()
    with pytest.raises(TypeError, match="MultiHeadAttention"):
        CachedAttention(keras.layers.Dense(4))


def test_attention_without_encoding_has_no_position_term():
    layer = MultiHeadAttention(HEADS, HEAD_SIZE)
    assert layer.get_config()["position_encoding"] is None
    layer.build((None, None, HIDDEN))
    x, _ = padded_inputs()
    # Permuting the positions permutes the outputs: attention alone is position-blind.
    order = np.array([3, 0, 6, 1, 5, 2, 4])
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x[:, order])),
                               ops.convert_to_numpy(layer(x))[:, order], atol=1e-5)
    with pytest.raises(TypeError, match="PositionEncoding"):
        MultiHeadAttention(HEADS, HEAD_SIZE, position_encoding="rotary")
