"""Keras 3 layers of the BERT family, written with ``keras.ops`` only.

Every layer runs under the TensorFlow, JAX and PyTorch backends, has
``get_config`` and is registered for ``.keras`` serialisation.
"""

import math

import keras
import numpy as np
from keras import ops

_PACKAGE = "bert4x"

# Scores are computed in float32, so this stays finite after the softmax's
# max-subtraction while still giving exactly zero probability.
_MASK_PENALTY = -1e9


@ops.custom_gradient
def _exact_gelu(x):
    dtype = keras.backend.standardize_dtype(x.dtype)
    x32 = ops.cast(x, "float32")
    cdf32 = 0.5 * (1.0 + ops.erf(x32 * (1.0 / math.sqrt(2.0))))
    cdf = ops.cast(cdf32, dtype)  # kept for the backward pass in the input's precision

    def gradient(*args, upstream=None):
        # TensorFlow and JAX pass the upstream gradient; PyTorch passes the inputs
        # and the upstream gradient by name.
        if upstream is None:
            (upstream,) = args
        x_32 = ops.cast(x, "float32")
        pdf = ops.exp(-0.5 * ops.square(x_32)) * (1.0 / math.sqrt(2.0 * math.pi))
        slope = ops.cast(cdf, "float32") + x_32 * pdf
        return ops.cast(ops.cast(upstream, "float32") * slope, dtype)

    return ops.cast(x32 * cdf32, dtype), gradient


@keras.saving.register_keras_serializable(package=_PACKAGE, name="gelu_erf")
def _gelu_erf(x):
    """Exact GELU ``x * Phi(x)`` in float32, with its closed-form derivative.

    Autodiff of ``erf`` unrolls into about ten element-wise passes over the
    feed-forward block's largest activation; the derivative
    ``Phi(x) + x * phi(x)``, reusing ``Phi(x)`` from the forward pass, takes a
    few. This made a BERT-small bfloat16 training step about 8% faster on CPU.
    """
    return _exact_gelu(x)


@keras.saving.register_keras_serializable(package=_PACKAGE, name="gelu_tanh")
def _gelu_tanh(x):
    return keras.activations.gelu(x, approximate=True)


_ACTIVATIONS = {
    "gelu": _gelu_erf,
    "gelu_erf": _gelu_erf,
    "gelu_tanh": _gelu_tanh,
    "gelu_new": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
}


def get_activation(name):
    """Resolve an activation name as BERT configs spell it.

    ``"gelu"`` (or ``"gelu_erf"``, bert4keras's explicit name) is the exact erf
    form (Hugging Face, bert4keras); ``"gelu_new"`` and ``"gelu_tanh"`` are the
    tanh approximation of Google's original code.
    Other names go to ``keras.activations.get`` (``"relu"``, ``"tanh"``, ...).
    """
    if name is None or callable(name):
        return name
    key = name.lower()
    if key in _ACTIVATIONS:
        return _ACTIVATIONS[key]
    if key == "swish":
        key = "silu"
    try:
        return keras.activations.get(key)
    except ValueError as error:
        raise ValueError(
            f"unknown hidden_act {name!r}; expected one of "
            f"{sorted(_ACTIVATIONS) + ['relu', 'tanh', 'silu', 'swish']}") from error


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Dropout(keras.layers.Dropout):
    """``keras.layers.Dropout`` that draws 15 random bits per element, not a float.

    On CPU, generating a uniform float per element (in bfloat16 under mixed
    precision) is most of dropout's cost, and dropout on the attention
    probabilities and hidden states is a tenth of a BERT training step. This
    layer draws one 30-bit integer for every two elements and keeps an element
    when its 15 bits are at least ``round(rate * 2**15)``: Keras's Bernoulli
    mask with the rate rounded to a multiple of 1/32768 (0.1 becomes 0.100006),
    kept elements scaled by ``1 / (1 - rate)``. With ``noise_shape`` it is
    Keras's layer unchanged.

    Example:
        >>> layer = Dropout(0.1)
        >>> outputs = layer(keras.ops.ones((2, 8)), training=True)
    """

    _BITS = 15

    def call(self, inputs, training=False):
        if not training or self.rate == 0 or self.noise_shape is not None:
            return super().call(inputs, training=training)
        if self.rate >= 1:
            return ops.zeros_like(inputs)
        limit = 1 << self._BITS
        threshold = round(self.rate * limit)
        size = ops.size(inputs)
        pairs = keras.random.randint(((size + 1) // 2,), 0, limit * limit, dtype="int32",
                                     seed=self.seed_generator)
        keep = ops.concatenate([ops.bitwise_and(pairs, limit - 1) >= threshold,
                                ops.right_shift(pairs, self._BITS) >= threshold])
        keep = ops.reshape(keep[:size], ops.shape(inputs))
        scale = ops.cast(1.0 / (1.0 - self.rate), inputs.dtype)
        return inputs * (ops.cast(keep, inputs.dtype) * scale)


def _values_known(tensor):
    """Whether ``tensor`` holds values now (an eager call), not a traced graph's."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        return tf.executing_eagerly()
    if backend == "jax":
        import jax
        return not isinstance(tensor, jax.core.Tracer)
    if backend == "torch":
        return tensor.device.type != "meta"  # Keras traces shapes on the meta device
    return True


def check_ids(ids, size, what):
    """Refuse ids outside ``0..size - 1`` (Keras's lookup wraps -1 to the last row).

    Checked where the values are known: every eager call (PyTorch always;
    TensorFlow and JAX outside ``tf.function``/``jit``). In a traced graph
    (``predict``, ``fit``) :class:`Embedding` treats a negative id as one >= size,
    which the backend's lookup refuses (TensorFlow on the CPU) or turns into NaN (JAX).

    Raises:
        ValueError: naming the first bad id, its position and the range.
    """
    if not _values_known(ids):
        return
    values = ops.convert_to_numpy(ids)
    bad = np.argwhere((values < 0) | (values >= size))
    if len(bad):
        where = tuple(int(i) for i in bad[0])
        raise ValueError(f"{what} id {int(values[where])} at position {where} is outside "
                         f"0..{size - 1} (the table has {size} rows)")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Embedding(keras.layers.Embedding):
    """Keras's ``Embedding`` that refuses ids outside the table (see :func:`check_ids`)
    instead of reading the last row for -1.

    Example:
        >>> Embedding(2, 4)(np.array([[0, 1, -1]]))  # doctest: +SKIP
        ValueError: Embedding id -1 at position (0, 2) is outside 0..1 ...
    """

    def call(self, inputs):
        check_ids(inputs, self.input_dim, self.name)
        # Traced: a negative id becomes one past the table, which fails as an id >= size
        # does (TensorFlow's error on the CPU, NaN on JAX) instead of wrapping.
        inputs = ops.where(inputs < 0, self.input_dim, inputs)
        return super().call(inputs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ReversibleEmbedding(Embedding):
    """Token embedding whose matrix also serves as the tied output projection.

    Called normally it looks up ids; called with ``reverse=True`` it maps hidden
    states to vocabulary logits ``x . E^T`` (BERT's MLM head ties these weights).

    Example:
        >>> embedding = ReversibleEmbedding(100, 16)
        >>> hidden = embedding(ops.ones((2, 5), "int32"))
        >>> embedding(hidden, reverse=True).shape
        (2, 5, 100)
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Its mask is Embedding's (none unless mask_zero); a mask reaching the tied
        # output call is dropped without Keras's "does not support masking" warning.
        self.supports_masking = True

    def call(self, inputs, reverse=False):
        if not reverse:
            return super().call(inputs)
        kernel = ops.cast(self.embeddings, self.compute_dtype)
        return ops.matmul(inputs, ops.transpose(kernel))

    def compute_output_spec(self, inputs, reverse=False):
        if not reverse:
            return super().compute_output_spec(inputs)
        shape = tuple(inputs.shape[:-1]) + (self.input_dim,)
        return keras.KerasTensor(shape, dtype=self.compute_dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PositionEmbedding(keras.layers.Layer):
    """Learned absolute position embeddings.

    Given hidden states ``[batch, L, dim]``, returns the embeddings of positions
    ``0..L-1`` broadcast to that shape (to be added), or those of explicit
    ``position_ids`` ``[batch, L]``, which incremental decoding needs.

    Args:
        max_length: size of the position table.
        output_dim: embedding size.
        embeddings_initializer: initializer of the table.
    """

    def __init__(self, max_length, output_dim, embeddings_initializer="glorot_uniform",
                 **kwargs):
        super().__init__(**kwargs)
        self.max_length = int(max_length)
        self.output_dim = int(output_dim)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.max_length, self.output_dim),
            initializer=self.embeddings_initializer)

    def call(self, inputs, position_ids=None):
        table = ops.cast(self.embeddings, self.compute_dtype)
        if position_ids is None:
            length = ops.shape(inputs)[1]
            # Known here in eager calls, on JAX and torch, and in TensorFlow's first
            # trace of a length; the backend's own error would name a broadcast.
            if isinstance(length, int) and length > self.max_length:
                raise ValueError(
                    f"an input of {length} tokens is longer than this model can take: "
                    f"its position table has {self.max_length} positions "
                    f"(max_position_embeddings); cut inputs to at most "
                    f"{self.max_length} tokens (e.g. the tokenizer's maxlen)")
            return ops.broadcast_to(table[None, :length], ops.shape(inputs))
        return ops.take(table, ops.cast(position_ids, "int32"), axis=0)

    def compute_output_spec(self, inputs, position_ids=None):
        if position_ids is None:
            return keras.KerasTensor(inputs.shape, self.compute_dtype)
        return keras.KerasTensor(tuple(position_ids.shape) + (self.output_dim,),
                                 self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(max_length=self.max_length, output_dim=self.output_dim,
                      embeddings_initializer=keras.initializers.serialize(
                          self.embeddings_initializer))
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LayerNormalization(keras.layers.Layer):
    """Layer normalisation and its variants (RMS norm, no scale, no offset), optionally
    conditioned on a vector (CLN).

    ``y = (x - mean) / sqrt(var + eps) * (gamma + W_g c) + (beta + W_b c)``.
    Without ``zero_mean`` the mean is not subtracted and ``var`` is the mean of
    ``x^2`` (RMS norm: T5, RoFormer-V2); without ``scale`` there is no ``gamma``
    (1), without ``offset`` no ``beta`` (0). ``W_g`` and ``W_b`` are bias-free and
    start at zero, so a conditional norm computes exactly what the pretrained one
    does until training moves them; as in bert4keras, a conditional norm
    conditions the parts it has (``W_g`` with ``scale``, ``W_b`` with ``offset``),
    so it needs one of them. Statistics are computed in float32 even under mixed
    precision.

    Args:
        epsilon: added to the variance.
        conditional: whether ``call`` takes a ``condition`` tensor.
        zero_mean: subtract the mean (False: RMS norm).
        scale: a learned ``gamma``.
        offset: a learned ``beta``.

    Example:
        >>> norm = LayerNormalization(conditional=True)
        >>> y = norm(ops.ones((2, 3, 8)), condition=ops.ones((2, 4)))
        >>> rms = LayerNormalization(zero_mean=False, offset=False)  # T5's norm
        >>> y = rms(ops.ones((2, 3, 8)))
        >>> [weight.name for weight in rms.weights]
        ['gamma']
    """

    def __init__(self, epsilon=1e-12, conditional=False, zero_mean=True, scale=True,
                 offset=True, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.conditional = bool(conditional)
        self.zero_mean = bool(zero_mean)
        self.scale = bool(scale)
        self.offset = bool(offset)
        if self.conditional and not (self.scale or self.offset):
            raise ValueError(f"{self.name}: a conditional LayerNormalization conditions its "
                             "gamma (scale=True) or its beta (offset=True); this one has "
                             "neither")
        # Position-wise: a Keras padding mask (bert4x.bert4keras models carry one) passes
        # through, also in a model loaded from .keras.
        self.supports_masking = True

    def build(self, inputs_shape, condition_shape=None):
        dim = inputs_shape[-1]
        self.gamma = self.beta = None
        if self.scale:
            self.gamma = self.add_weight(name="gamma", shape=(dim,), initializer="ones")
        if self.offset:
            self.beta = self.add_weight(name="beta", shape=(dim,), initializer="zeros")
        self.gamma_dense = self.beta_dense = None
        if self.conditional:
            cond_dim = condition_shape[-1] if condition_shape is not None else None
            if cond_dim is None:
                raise ValueError(
                    f"{self.name}: a conditional LayerNormalization needs a condition "
                    "with a known last dimension")
            if self.scale:
                self.gamma_dense = self._condition_dense("gamma_dense", dim, cond_dim)
            if self.offset:
                self.beta_dense = self._condition_dense("beta_dense", dim, cond_dim)

    def _condition_dense(self, name, dim, cond_dim):
        dense = keras.layers.Dense(dim, use_bias=False, kernel_initializer="zeros", name=name,
                                   dtype=self.dtype_policy)
        dense.build((None, cond_dim))
        return dense

    def call(self, inputs, condition=None):
        if self.conditional and condition is None:
            raise ValueError(f"{self.name} is conditional: pass condition=<tensor [batch, c]>")
        x = ops.cast(inputs, "float32")
        if self.zero_mean:
            mean, variance = ops.moments(x, axes=[-1], keepdims=True)
            x = (x - mean) * ops.rsqrt(variance + self.epsilon)
        else:
            mean_square = ops.mean(ops.square(x), axis=-1, keepdims=True)
            x = x * ops.rsqrt(mean_square + self.epsilon)
        gamma = None if self.gamma is None else ops.cast(self.gamma, "float32")
        beta = None if self.beta is None else ops.cast(self.beta, "float32")
        if self.gamma_dense is not None:
            gamma = gamma + self._delta(self.gamma_dense, condition, inputs)
        if self.beta_dense is not None:
            beta = beta + self._delta(self.beta_dense, condition, inputs)
        if gamma is not None:
            x = x * gamma
        if beta is not None:
            x = x + beta
        return ops.cast(x, self.compute_dtype)

    @staticmethod
    def _delta(dense, condition, inputs):
        """``dense(condition)`` ``[batch, c]`` in float32, as ``[batch, 1, ..., dim]`` so
        that it broadcasts over the positions of ``inputs``."""
        delta = ops.cast(dense(condition), "float32")
        for _ in range(len(inputs.shape) - 2):
            delta = ops.expand_dims(delta, 1)
        return delta

    def compute_output_spec(self, inputs, condition=None):
        return keras.KerasTensor(inputs.shape, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, conditional=self.conditional,
                      zero_mean=self.zero_mean, scale=self.scale, offset=self.offset)
        return config


class PositionEncoding:
    """How attention sees token positions; subclasses override one hook or both.

    :class:`MultiHeadAttention` (given ``position_encoding=``) calls the hooks on
    per-head tensors ``[batch, heads, length, head_size]``. Positions are either
    None, meaning ``0..length-1`` for every row (the training model and the
    prefill of incremental decoding, whose rows are padded at the end), or
    absolute int positions ``[batch, length]`` (a decoding step).

    * :meth:`encode` transforms this call's queries and keys, after their
      projections and before the key is written to a cache (so a cache holds
      encoded keys).
    * :meth:`relative_embeddings` returns vectors ``a_ij`` ``[..., query, key,
      head_size]`` added to the keys in the scores and to the values in the
      context: ``s_ij = q_i . (k_j + a_ij) / sqrt(d)``, ``o_i = sum_j p_ij (v_j +
      a_ij)``; the cache then holds raw keys and values, and a cached step needs
      the absolute positions of every cached key.

    Encodings hold no weights; ``get_config`` makes a ``.keras`` file round trip.
    """

    #: Whether a cached step must be given ``key_positions``.
    needs_key_positions = False

    def encode(self, query, key, positions):
        """Return ``(query, key)`` for this call's tokens at ``positions``."""
        return query, key

    def relative_embeddings(self, query_positions, key_positions, query_length, key_length,
                            head_size):
        """``a_ij`` in float32 (``[query, key, d]`` or ``[batch, query, key, d]``), or None."""
        return None

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _position_grid(positions, length):
    """Float32 positions: ``[length]`` when ``positions`` is None, else ``[batch, length]``."""
    if positions is None:
        return ops.arange(length, dtype="float32")
    return ops.cast(positions, "float32")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RotaryPositionEncoding(PositionEncoding):
    """Rotary position embedding (RoFormer) of queries and keys, interleaved pairs.

    Each head's dimensions ``(2m, 2m+1)`` of a query or key at position ``p`` are
    rotated by the angle ``p * theta_m``, ``theta_m = base^(-2m/d)``::

        x'[2m]   = x[2m] cos(p theta_m) - x[2m+1] sin(p theta_m)
        x'[2m+1] = x[2m+1] cos(p theta_m) + x[2m] sin(p theta_m)

    so ``q'_i . k'_j`` depends only on ``j - i``. Values are not rotated. This is
    the pairing of Zhuiyi's RoFormer, bert4keras and Hugging Face
    ``RoFormerSelfAttention`` (not GPT-NeoX's split halves). A key/value cache
    holds keys already rotated at their absolute positions; each new query is
    rotated at its own.

    Args:
        base: the wavelength base (10000 in RoFormer).

    Example:
        >>> attention = MultiHeadAttention(
        ...     num_heads=2, head_size=8, position_encoding=RotaryPositionEncoding())
        >>> outputs = attention(keras.ops.ones((1, 5, 16)))
    """

    def __init__(self, base=10000.0):
        self.base = float(base)

    def _rotate(self, x, positions):
        head_size = x.shape[-1]
        if head_size % 2:
            raise ValueError(f"rotary position encoding needs an even head size, got "
                             f"{head_size}")
        # theta in float64 on the host: it is a constant of the graph.
        theta = self.base ** (-np.arange(0, head_size, 2, dtype=np.float64) / head_size)
        grid = _position_grid(positions, ops.shape(x)[2])
        angles = grid[..., None] * ops.convert_to_tensor(theta.astype(np.float32))
        if positions is not None:
            angles = angles[:, None]  # [batch, 1 (heads), length, d/2]
        cos = ops.cast(ops.cos(angles), x.dtype)
        sin = ops.cast(ops.sin(angles), x.dtype)
        shape = ops.shape(x)
        pairs = ops.reshape(x, (shape[0], shape[1], shape[2], head_size // 2, 2))
        even, odd = pairs[..., 0], pairs[..., 1]
        rotated = ops.stack([even * cos - odd * sin, odd * cos + even * sin], axis=-1)
        return ops.reshape(rotated, shape)

    def encode(self, query, key, positions):
        return self._rotate(query, positions), self._rotate(key, positions)

    def get_config(self):
        return {"base": self.base}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RelativePositionEncoding(PositionEncoding):
    """NEZHA's functional relative positions, added to keys and values.

    With ``r_ij = clip(j - i, -K, K) + K`` and the fixed sinusoid table
    ``T[r, 2m] = sin(r / 10000^(2m/d))``, ``T[r, 2m+1] = cos(r / 10000^(2m/d))``
    (evaluated at the shifted index ``r``, as Huawei's code does), ``a_ij =
    T[r_ij]`` is shared by all heads and layers and enters both the scores and the
    context (see :class:`PositionEncoding`). A key/value cache holds raw keys and
    values; a cached step needs the query's absolute position and those of every
    cached key.

    Args:
        max_relative_position: ``K`` (64 in NEZHA).

    Example:
        >>> attention = MultiHeadAttention(
        ...     num_heads=2, head_size=8, position_encoding=RelativePositionEncoding())
        >>> outputs = attention(keras.ops.ones((1, 5, 16)))
    """

    needs_key_positions = True

    def __init__(self, max_relative_position=64):
        self.max_relative_position = int(max_relative_position)
        if self.max_relative_position < 1:
            raise ValueError(f"max_relative_position must be >= 1, got "
                             f"{max_relative_position}")

    def table(self, head_size):
        """The ``[2K + 1, head_size]`` float32 sinusoid table ``T``."""
        k = self.max_relative_position
        pairs = head_size // 2
        inv_freq = 10000.0 ** (-2.0 * np.arange(pairs, dtype=np.float64) / head_size)
        angles = np.arange(2 * k + 1, dtype=np.float64)[:, None] * inv_freq
        table = np.zeros((2 * k + 1, head_size), dtype=np.float64)
        table[:, 0:2 * pairs:2] = np.sin(angles)
        table[:, 1:2 * pairs:2] = np.cos(angles)
        return table.astype(np.float32)

    def relative_embeddings(self, query_positions, key_positions, query_length, key_length,
                            head_size):
        k = self.max_relative_position
        if query_positions is None and key_positions is None:
            distance = (ops.arange(key_length, dtype="int32")[None, :]
                        - ops.arange(query_length, dtype="int32")[:, None])
        else:
            if query_positions is None or key_positions is None:
                raise ValueError("relative positions need both query_positions and "
                                 "key_positions, or neither")
            distance = (ops.cast(key_positions, "int32")[:, None, :]
                        - ops.cast(query_positions, "int32")[:, :, None])
        index = ops.clip(distance, -k, k) + k
        return ops.take(ops.convert_to_tensor(self.table(head_size)), index, axis=0)

    def get_config(self):
        return {"max_relative_position": self.max_relative_position}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention with an additive mask: self-attention, or cross-attention
    over a ``context``.

    Scores are ``q k^T / sqrt(head_size) + attention_bias`` (without the
    ``1 / sqrt(head_size)`` when ``attention_scale=False``, as T5, which folds it
    into its initialisation), softmaxed in float32. ``layer(x, attention_bias)``
    returns the output ``[batch, length, hidden]``, one tensor whatever it is
    given; ``layer(x, attention_bias, context=c)`` takes the keys and values from
    ``c`` ``[batch, M, hidden]`` (an encoder's output) instead of ``x``.

    The same weights serve two other uses, each a layer of its own with a fixed
    output (a Keras graph records a layer's output structure at its first call,
    so one layer cannot return one tensor here and a pair there):

    * :class:`CachedAttention` (``CachedAttention(layer)``) runs them with a
      key/value cache for incremental decoding and returns ``{"output",
      "cache"}``;
    * :class:`AttentionProbabilities` returns the attention probabilities
      ``[batch, heads, query, key]``.

    Both build on two public methods, :meth:`project` (per-head queries, keys
    and values) and :meth:`attend` (attention of queries over keys).

    Positions: with ``position_encoding=None`` (BERT, whose positions are in
    the embeddings) attention ignores them. With a :class:`PositionEncoding`,
    queries and keys are encoded at positions ``0..length-1`` here; a cached
    step gives absolute positions (see :class:`CachedAttention`).

    Args:
        num_heads: number of heads.
        head_size: size of each head; the output size equals the input size.
        attention_dropout: dropout on the attention probabilities.
        kernel_initializer: initializer of the four projections.
        position_encoding: None, or a :class:`PositionEncoding`
            (:class:`RotaryPositionEncoding`, :class:`RelativePositionEncoding`).
        use_bias: biases in the four projections (T5 has none).
        attention_scale: divide the scores by ``sqrt(head_size)``.

    Example:
        >>> attention = MultiHeadAttention(num_heads=2, head_size=8)
        >>> tuple(attention(keras.ops.ones((1, 5, 16))).shape)
        (1, 5, 16)
        >>> attention(keras.ops.ones((1, 5, 16)), context=keras.ops.ones((1, 7, 16))).shape
        (1, 5, 16)
    """

    def __init__(self, num_heads, head_size, attention_dropout=0.0,
                 kernel_initializer="glorot_uniform", position_encoding=None, use_bias=True,
                 attention_scale=True, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.head_size = int(head_size)
        self.attention_dropout = float(attention_dropout)
        self.use_bias = bool(use_bias)
        self.attention_scale = bool(attention_scale)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        # Position-wise: a Keras padding mask (bert4x.bert4keras models carry one) passes
        # through, also in a model loaded from .keras.
        self.supports_masking = True
        if isinstance(position_encoding, dict):
            position_encoding = keras.saving.deserialize_keras_object(position_encoding)
        if position_encoding is not None and not isinstance(position_encoding,
                                                            PositionEncoding):
            raise TypeError(f"{self.name}: position_encoding must be a PositionEncoding or "
                            f"None, got {type(position_encoding).__name__}")
        self.position_encoding = position_encoding
        self.dropout = Dropout(self.attention_dropout, dtype=self.dtype_policy)

    def build(self, input_shape, *args, **kwargs):
        hidden = input_shape[-1]
        inner = self.num_heads * self.head_size

        def dense(units, name, in_dim):
            layer = keras.layers.Dense(
                units, kernel_initializer=keras.initializers.get(
                    keras.initializers.serialize(self.kernel_initializer)),
                use_bias=self.use_bias, name=name, dtype=self.dtype_policy)
            layer.build((None, in_dim))
            return layer

        self.query_dense = dense(inner, "query", hidden)
        self.key_dense = dense(inner, "key", hidden)
        self.value_dense = dense(inner, "value", hidden)
        self.output_dense = dense(hidden, "output", inner)

    def _split_heads(self, x):
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        x = ops.reshape(x, (batch, length, self.num_heads, self.head_size))
        return ops.transpose(x, (0, 2, 1, 3))

    def call(self, inputs, attention_bias=None, context=None, training=None):
        query, key, value = self.project(inputs, context=context)
        output, _ = self.attend(query, key, value, attention_bias, training=training)
        return output

    def project(self, inputs, positions=None, context=None):
        """Per-head ``(query, key, value)``, each ``[batch, heads, length, head_size]``.

        Queries and keys are position-encoded (a :class:`PositionEncoding`'s
        :meth:`~PositionEncoding.encode`) at ``positions`` ``[batch, length]``,
        None meaning ``0..length-1``. With ``context`` ``[batch, M, hidden]``
        (cross-attention) the keys and values are the context's, ``M`` long.

        Example:
            >>> attention = MultiHeadAttention(num_heads=2, head_size=8)
            >>> attention.build((None, None, 16))
            >>> query, key, value = attention.project(keras.ops.ones((1, 5, 16)))
            >>> tuple(key.shape)
            (1, 2, 5, 8)
        """
        query = self.project_query(inputs)
        source = inputs
        if context is not None:
            if self.position_encoding is not None:
                raise ValueError(f"{self.name}: cross-attention (context=) takes no "
                                 "position encoding: the keys are another sequence's")
            source = context
        key = self._split_heads(self.key_dense(source))
        value = self._split_heads(self.value_dense(source))
        if self.position_encoding is not None:
            query, key = self.position_encoding.encode(query, key, positions)
        return query, key, value

    def project_query(self, inputs):
        """Per-head queries ``[batch, heads, length, head_size]``, not position-encoded
        (cross-attention's, whose keys are cached already)."""
        return self._split_heads(self.query_dense(inputs))

    def attend(self, query, key, value, attention_bias=None, query_positions=None,
               key_positions=None, source=None, training=None):
        """``(output, probabilities)`` of per-head queries over per-head keys and values.

        Args:
            query: ``[batch, heads, length, head_size]`` (from :meth:`project`).
            key, value: ``[batch, heads, M, head_size]``; None with a ``source``
                (the rows attend to the source's keys alone: cross-attention
                over cached keys and values).
            attention_bias: additive mask broadcastable to ``[batch, heads,
                length, M]``.
            query_positions, key_positions: absolute positions ``[batch,
                length]`` and ``[batch, M]`` for a relative encoding (None:
                ``0..length-1`` and ``0..M-1``).
            source: None, or keys shared by groups of rows, attended before
                ``key``: a dict with ``cache`` ``[sources, 2, heads, S,
                head_size]``, ``bias`` ``[sources, 1, 1, S]`` and
                ``key_positions`` ``[sources, S]`` (or None); the rows are
                ``batch // sources`` consecutive ones per source.

        Returns:
            The output ``[batch, length, hidden]`` and the probabilities
            ``[batch, heads, length, S + M]`` (float32, before dropout).

        Example:
            >>> attention = MultiHeadAttention(num_heads=2, head_size=8)
            >>> attention.build((None, None, 16))
            >>> output, probabilities = attention.attend(
            ...     *attention.project(keras.ops.ones((1, 5, 16))))
            >>> tuple(probabilities.shape)
            (1, 2, 5, 5)
        """
        query32 = ops.cast(query, "float32")
        parts = []
        if key is not None:
            parts.append(self._keys(query32, key, value, attention_bias, query_positions,
                                    key_positions))
        elif source is None:
            raise ValueError(f"{self.name}: nothing to attend to: pass keys, or a source")
        if source is not None:
            source_cache = source["cache"]
            parts.insert(0, self._keys(query32, source_cache[:, 0], source_cache[:, 1],
                                       source["bias"], query_positions,
                                       source.get("key_positions"), shared=True))
        if len(parts) == 1:
            scores = parts[0]["scores"]
        else:
            scores = ops.concatenate([part["scores"] for part in parts], axis=-1)
        # One key (T5's start id alone): its probability is 1, and Keras warns about
        # a softmax over one element.
        probs = ops.ones_like(scores) if scores.shape[-1] == 1 else ops.softmax(scores, axis=-1)
        dropped = self.dropout(ops.cast(probs, self.compute_dtype), training=training)
        if len(parts) == 1:
            context = self._context(dropped, parts[0])
        else:
            width = ops.shape(parts[0]["scores"])[-1]
            context = (self._context(dropped[..., :width], parts[0])
                       + self._context(dropped[..., width:], parts[1]))
        context = ops.transpose(context, (0, 2, 1, 3))
        batch, length = ops.shape(context)[0], ops.shape(context)[1]
        context = ops.reshape(context, (batch, length, self.num_heads * self.head_size))
        return self.output_dense(context), probs

    def _keys(self, query32, key, value, bias, query_positions, key_positions, shared=False):
        """Scaled scores of ``query32`` against one set of keys, and what the context
        needs of them. ``shared`` keys are ``[sources, heads, K, d]``, each attended by
        its group of ``batch // sources`` consecutive query rows."""
        sources = ops.shape(key)[0]
        if shared:
            grouped = _by_source(query32, sources)
            scores = _by_row(ops.einsum("schqd,shkd->schqk", grouped,
                                        ops.cast(key, "float32")))
            if key_positions is not None and query_positions is not None:
                # every row of a source sees that source's key positions
                key_positions = _by_row(ops.broadcast_to(
                    key_positions[:, None], tuple(ops.shape(grouped)[:2]) + (ops.shape(key)[2],)))
        else:
            scores = ops.einsum("bhqd,bhkd->bhqk", query32, ops.cast(key, "float32"))
        relative = None
        if self.position_encoding is not None:
            relative = self.position_encoding.relative_embeddings(
                query_positions, key_positions, ops.shape(query32)[2], ops.shape(key)[2],
                self.head_size)
        if relative is not None:
            scores = scores + _with_relative(query32, relative, "scores")
        if self.attention_scale:
            scores = scores / math.sqrt(self.head_size)
        if bias is not None and shared:  # one bias per source, for its group of rows
            scores = _by_row(_by_source(scores, sources) + ops.cast(bias, "float32")[:, None])
        elif bias is not None:
            scores = scores + ops.cast(bias, "float32")
        return {"scores": scores, "value": value, "relative": relative, "shared": shared}

    def _context(self, probs, part):
        """``sum_j p_ij v_j`` (plus the relative term) over one set of keys."""
        value = part["value"]
        if part["shared"]:
            context = _by_row(ops.einsum("schqk,shkd->schqd",
                                         _by_source(probs, ops.shape(value)[0]), value))
        else:
            context = ops.einsum("bhqk,bhkd->bhqd", probs, value)
        if part["relative"] is not None:
            context = context + _with_relative(
                probs, ops.cast(part["relative"], self.compute_dtype), "context")
        return context

    def compute_output_spec(self, inputs, attention_bias=None, context=None, training=None):
        return keras.KerasTensor(inputs.shape, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, head_size=self.head_size,
                      attention_dropout=self.attention_dropout, use_bias=self.use_bias,
                      attention_scale=self.attention_scale,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                      position_encoding=None if self.position_encoding is None else
                      keras.saving.serialize_keras_object(self.position_encoding))
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CachedAttention(keras.layers.Wrapper):
    """A :class:`MultiHeadAttention`'s weights run with a key/value cache.

    Every call returns ``{"output": [batch, length, hidden], "cache": [batch, 2,
    heads, M, head_size]}``, the keys and values stacked. The weights are those
    of ``layer`` (not copied), so checkpoints and layer names stay the
    attention's own.

    * ``cached(x, attention_bias)``: the prefill of incremental decoding; the
      cache holds this call's keys and values (``M = length``).
    * ``cached(x, attention_bias, cache=c, write_mask=w)``: one new position
      per row; ``c`` is ``[batch, 2, heads, M, head_size]``, ``w`` a one-hot
      ``[batch, M]`` of the slot the new key/value is written to, and
      ``attention_bias`` covers the M cached keys. The cache comes back with the
      slot written. The blend with a one-hot keeps every shape static, so a
      compiled step never retraces.
    * ``cached(x, attention_bias, context=c)``: cross-attention over ``c``
      ``[batch, M, hidden]``; the cache holds the context's keys and values.
    * ``cached(x, source_cache=s, source_bias=b)`` without ``cache``: the rows
      attend to the source's keys and values alone (cross-attention over a
      context cached once per source; see below); the cache comes back as ``s``.
    * ``cache`` and ``write_mask`` with ``source_cache=s, source_bias=b``: the keys and values of
      the sources, ``[sources, 2, heads, S, head_size]``, stored once per
      source and attended by every row of that source (the rows are grouped
      by source: ``batch // sources`` consecutive rows each, e.g. the beams
      of a beam search), before the rows' own ``cache`` of generated slots;
      ``b`` ``[sources, 1, 1, S]`` is their additive mask. Only the generated
      slots are per row, so reordering beams copies those alone, and a step
      reads each source's keys once however many rows share them.

    Positions, for a layer with a :class:`PositionEncoding`: ``query_positions``
    ``[batch, length]`` are the absolute positions of this call's tokens (their
    keys are cached encoded at them) and ``key_positions`` ``[batch, M]`` those
    of every cache slot; both default to ``0..length-1``. A cached step passes
    ``query_positions`` and, for encodings with ``needs_key_positions``,
    ``key_positions`` (any value in slots the bias masks), and
    ``source_key_positions`` ``[sources, S]`` with a source cache.

    Args:
        layer: the :class:`MultiHeadAttention` whose weights this runs.
        name: default ``<layer name>-Cached``.

    Example:
        >>> attention = MultiHeadAttention(num_heads=2, head_size=8)
        >>> cached = CachedAttention(attention)
        >>> prefill = cached(keras.ops.ones((1, 5, 16)))
        >>> tuple(prefill["cache"].shape)
        (1, 2, 2, 5, 8)
    """

    def __init__(self, layer, **kwargs):
        if not isinstance(layer, MultiHeadAttention):
            raise TypeError(f"CachedAttention runs a bert4x MultiHeadAttention, got "
                            f"{type(layer).__name__}")
        kwargs.setdefault("name", f"{layer.name}-Cached")
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        # The mask of the input stays on the output (see compute_mask).
        self.supports_masking = layer.supports_masking

    def call(self, inputs, attention_bias=None, cache=None, write_mask=None,
             query_positions=None, key_positions=None, source_cache=None, source_bias=None,
             source_key_positions=None, context=None, training=None):
        attention = self.layer
        if cache is None and source_cache is not None:
            return self._attend_source(inputs, source_cache, source_bias, training)
        query, key, value = attention.project(inputs, query_positions, context=context)
        if cache is not None:
            if write_mask is None:
                raise ValueError(f"{self.name}: a cache needs write_mask=<one-hot [batch, M]>")
            slot = ops.cast(write_mask, key.dtype)[:, None, :, None]
            key = cache[:, 0] * (1 - slot) + key * slot
            value = cache[:, 1] * (1 - slot) + value * slot
        encoding = attention.position_encoding
        if encoding is not None and cache is not None and encoding.needs_key_positions and (
                query_positions is None or key_positions is None
                or (source_cache is not None and source_key_positions is None)):
            raise ValueError(f"{self.name}: {type(encoding).__name__} needs "
                             "query_positions and key_positions with a cache (and "
                             "source_key_positions with a source cache)")
        source = None
        if source_cache is not None:
            source = dict(cache=source_cache, bias=source_bias,
                          key_positions=source_key_positions)
        output, _ = attention.attend(query, key, value, attention_bias, query_positions,
                                     key_positions, source=source, training=training)
        return {"output": output, "cache": ops.stack([key, value], axis=1)}

    def _attend_source(self, inputs, source_cache, source_bias, training):
        """The rows' queries over the source's cached keys and values alone."""
        attention = self.layer
        if attention.position_encoding is not None:
            raise ValueError(f"{self.name}: attending to a source alone is cross-attention, "
                             "which takes no position encoding")
        output, _ = attention.attend(attention.project_query(inputs), None, None,
                                     source=dict(cache=source_cache, bias=source_bias),
                                     training=training)
        return {"output": output, "cache": source_cache}

    def compute_output_spec(self, inputs, attention_bias=None, cache=None, source_cache=None,
                            context=None, **kwargs):
        attention = self.layer
        batch, length = inputs.shape[0], inputs.shape[1]
        if cache is None and source_cache is not None:
            return {"output": keras.KerasTensor(inputs.shape, self.compute_dtype),
                    "cache": keras.KerasTensor(source_cache.shape, self.compute_dtype)}
        keys = cache.shape[3] if cache is not None else length
        if cache is None and context is not None:
            keys = context.shape[1]
        return {"output": keras.KerasTensor(inputs.shape, self.compute_dtype),
                "cache": keras.KerasTensor(
                    (batch, 2, attention.num_heads, keys, attention.head_size),
                    self.compute_dtype)}

    def compute_mask(self, inputs, previous_mask=None):
        return {"output": previous_mask, "cache": None}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AttentionProbabilities(keras.layers.Wrapper):
    """The attention probabilities ``[batch, heads, query, key]`` of a
    :class:`MultiHeadAttention` called as ``layer(x, attention_bias)`` (or with
    ``context=``: cross-attention's, over the context's keys).

    Float32, before dropout; masked keys get probability 0. The weights are
    those of ``layer`` (not copied). :func:`bert4x.models.attention_model` reads
    a model's attention this way.

    Args:
        layer: the :class:`MultiHeadAttention` whose weights this runs.
        name: default ``<layer name>-Probabilities``.

    Example:
        >>> attention = MultiHeadAttention(num_heads=2, head_size=8)
        >>> tuple(AttentionProbabilities(attention)(keras.ops.ones((1, 5, 16))).shape)
        (1, 2, 5, 5)
    """

    def __init__(self, layer, **kwargs):
        if not isinstance(layer, MultiHeadAttention):
            raise TypeError(f"AttentionProbabilities reads a bert4x MultiHeadAttention, "
                            f"got {type(layer).__name__}")
        kwargs.setdefault("name", f"{layer.name}-Probabilities")
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        # A padding mask is dropped quietly (compute_mask): the axes are not the input's.
        self.supports_masking = True

    def call(self, inputs, attention_bias=None, context=None, training=None):
        attention = self.layer
        _, probabilities = attention.attend(*attention.project(inputs, context=context),
                                            attention_bias, training=training)
        return probabilities

    def compute_output_spec(self, inputs, attention_bias=None, context=None, training=None):
        batch, length = inputs.shape[0], inputs.shape[1]
        keys = length if context is None else context.shape[1]
        return keras.KerasTensor((batch, self.layer.num_heads, length, keys), "float32")

    def compute_mask(self, inputs, previous_mask=None):
        return None


def _by_source(rows, sources):
    """``[batch, ...]`` -> ``[sources, batch // sources, ...]`` (rows grouped by source)."""
    return ops.reshape(rows, (sources, -1) + tuple(ops.shape(rows)[1:]))


def _by_row(grouped):
    """The inverse of :func:`_by_source`."""
    return ops.reshape(grouped, (-1,) + tuple(ops.shape(grouped)[2:]))


def _with_relative(per_head, relative, term):
    """The relative term of the scores (``q_i . a_ij``) or of the context (``sum_j p_ij a_ij``).

    ``relative`` is ``[query, key, d]`` (shared by the batch) or
    ``[batch, query, key, d]``.
    """
    batch = "b" if len(relative.shape) == 4 else ""
    if term == "scores":
        return ops.einsum(f"bhqd,{batch}qkd->bhqk", per_head, relative)
    return ops.einsum(f"bhqk,{batch}qkd->bhqd", per_head, relative)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FeedForward(keras.layers.Layer):
    """Position-wise feed-forward: ``Dense(units, activation)`` then back to the input size.

    With a list of activations it is gated (T5.1.1's ``gated-gelu``): one
    intermediate Dense per activation, their outputs multiplied, e.g.
    ``["gelu_new", "linear"]`` gives ``gelu(x W_0) * (x W_1)`` before the output
    Dense. The first intermediate Dense is named ``intermediate``, the others
    ``intermediate_1``, ``intermediate_2``, ...

    Args:
        units: the intermediate size.
        activation: a name understood by :func:`get_activation`, or a list of them.
        kernel_initializer: initializer of the kernels.
        use_bias: biases in the Dense layers (T5 has none).

    Example:
        >>> gated = FeedForward(8, ["gelu_new", "linear"], use_bias=False)
        >>> gated(keras.ops.ones((2, 3, 4))).shape
        (2, 3, 4)
    """

    def __init__(self, units, activation="gelu", kernel_initializer="glorot_uniform",
                 use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        if isinstance(activation, (list, tuple)):
            if not activation:
                raise ValueError("FeedForward needs at least one activation, got []")
            activation = list(activation)
        self.activation = activation
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        # Position-wise: a Keras padding mask (bert4x.bert4keras models carry one) passes
        # through, also in a model loaded from .keras.
        self.supports_masking = True

    @property
    def activations(self):
        """The activation names, one per intermediate Dense."""
        return self.activation if isinstance(self.activation, list) else [self.activation]

    def build(self, input_shape):
        hidden = input_shape[-1]
        init = keras.initializers.serialize(self.kernel_initializer)

        def dense(units, name, in_dim, activation=None):
            layer = keras.layers.Dense(
                units, activation=get_activation(activation), name=name,
                use_bias=self.use_bias, kernel_initializer=keras.initializers.get(init),
                dtype=self.dtype_policy)
            layer.build((None, in_dim))
            return layer

        self.intermediate_denses = [
            dense(self.units, "intermediate" + (f"_{index}" if index else ""), hidden,
                  activation)
            for index, activation in enumerate(self.activations)]
        self.intermediate_dense = self.intermediate_denses[0]
        self.output_dense = dense(hidden, "output", self.units)

    def call(self, inputs):
        hidden = self.intermediate_denses[0](inputs)
        for gate in self.intermediate_denses[1:]:
            hidden = hidden * gate(inputs)
        return self.output_dense(hidden)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(inputs.shape, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, activation=self.activation, use_bias=self.use_bias,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AttentionBias(keras.layers.Layer):
    """Additive attention bias ``[batch, 1, query, key]`` from token and segment ids.

    Keys holding ``pad_id`` (0 for BERT, 1 for fairseq RoBERTa) are masked
    (``pad_id=None``: none is, as in T5's decoder, whose first token is the pad
    id and whose causal mask keeps real tokens from the padding after them).
    ``application`` picks the pattern:

    * ``"encoder"``: every position sees every non-padding key;
    * ``"lm"``: position i sees keys j <= i;
    * ``"unilm"``: with ``c = cumsum(segment_ids)``, query i sees key j iff
      ``c[j] <= c[i]`` (the source is bidirectional, the target left to right).
    """

    APPLICATIONS = ("encoder", "lm", "unilm")

    def __init__(self, application="encoder", pad_id=0, **kwargs):
        super().__init__(**kwargs)
        if application not in self.APPLICATIONS:
            raise ValueError(
                f"unknown application {application!r}; expected one of {self.APPLICATIONS}")
        self.application = application
        self.pad_id = None if pad_id is None else int(pad_id)

    def call(self, token_ids, segment_ids=None):
        allowed = attention_mask(token_ids, segment_ids, self.application, self.pad_id)
        return ops.where(allowed, 0.0, _MASK_PENALTY)[:, None, :, :]

    def compute_output_spec(self, token_ids, segment_ids=None):
        batch, length = token_ids.shape
        return keras.KerasTensor((batch, 1, length, length), "float32")

    def get_config(self):
        config = super().get_config()
        config.update(application=self.application, pad_id=self.pad_id)
        return config


def attention_mask(token_ids, segment_ids=None, application="encoder", pad_id=0):
    """Boolean mask ``[batch, query, key]`` (True = may attend); see :class:`AttentionBias`."""
    if pad_id is None:
        key_valid = ops.ones_like(token_ids, dtype="bool")[:, None, :]
    else:
        key_valid = ops.not_equal(token_ids, pad_id)[:, None, :]
    length = ops.shape(token_ids)[1]
    if application == "encoder":
        return ops.broadcast_to(key_valid, (ops.shape(token_ids)[0], length, length))
    if application == "lm":
        positions = ops.arange(length)
        causal = positions[None, :, None] >= positions[None, None, :]
        return ops.logical_and(causal, key_valid)
    if segment_ids is None:
        raise ValueError("the unilm mask needs segment_ids")
    cumulative = ops.cumsum(ops.cast(segment_ids, "int32"), axis=1)
    seq2seq = cumulative[:, None, :] <= cumulative[:, :, None]
    return ops.logical_and(seq2seq, key_valid)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PaddingBias(keras.layers.Layer):
    """Additive bias ``[batch, 1, 1, keys]`` masking padded keys: 0 where a key may be
    attended, -1e9 where it is padding.

    Called on ids ``[batch, keys]``, the keys holding ``pad_id`` are padding; called
    on vectors ``[batch, keys, width]`` (an encoder's output given to a decoder,
    as bert4keras's T5 decoder takes it), the all-zero vectors are.

    Args:
        pad_id: the padding id (for ids).

    Example:
        >>> keras.ops.convert_to_numpy(PaddingBias()(np.array([[5, 6, 0]])))[0, 0, 0].tolist()
        [0.0, 0.0, -1000000000.0]
    """

    def __init__(self, pad_id=0, **kwargs):
        super().__init__(**kwargs)
        self.pad_id = int(pad_id)

    def call(self, inputs):
        if len(inputs.shape) == 3:
            valid = ops.any(ops.not_equal(inputs, 0), axis=-1)
        else:
            valid = ops.not_equal(inputs, self.pad_id)
        return ops.where(valid, 0.0, _MASK_PENALTY)[:, None, None, :]

    def compute_output_spec(self, inputs):
        return keras.KerasTensor((inputs.shape[0], 1, 1, inputs.shape[1]), "float32")

    def get_config(self):
        config = super().get_config()
        config.update(pad_id=self.pad_id)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RMSNormalization(keras.layers.Layer):
    """Root-mean-square normalisation (T5's ``layer_norm``): no centring, no offset.

    ``y = x / sqrt(mean(x^2) + epsilon) * scale``, computed in float32.

    Args:
        epsilon: added to the mean square (1e-6 in T5).

    Example:
        >>> RMSNormalization()(keras.ops.ones((2, 3, 8))).shape
        (2, 3, 8)
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.supports_masking = True  # position-wise: a padding mask passes through

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],),
                                     initializer="ones")

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        x = x * ops.rsqrt(ops.mean(ops.square(x), axis=-1, keepdims=True) + self.epsilon)
        return ops.cast(x * ops.cast(self.scale, "float32"), self.compute_dtype)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(inputs.shape, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon)
        return config


def t5_relative_buckets(relative, bidirectional=True, num_buckets=32, max_distance=128):
    """T5's bucket of each relative position ``key - query`` (int ``[...]``).

    Distances below ``num_buckets / 2`` (bidirectional: per direction, half the
    buckets each) get a bucket of their own, longer ones share logarithmically
    wider buckets up to ``max_distance``, beyond which all share the last.
    A causal (not bidirectional) stack puts every key after the query in bucket 0.
    The logarithm is taken in float32, as Mesh TensorFlow and Hugging Face do, so
    the buckets are theirs at every boundary.

    Example:
        >>> buckets = t5_relative_buckets(np.array([-200, -20, -1, 0, 1, 20]))
        >>> keras.ops.convert_to_numpy(buckets).tolist()
        [15, 10, 1, 0, 17, 26]
    """
    relative = ops.convert_to_tensor(relative, "int32")
    buckets = ops.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + ops.cast(relative > 0, "int32") * num_buckets
        distance = ops.abs(relative)
    else:
        distance = -ops.minimum(relative, 0)
    exact = num_buckets // 2
    # log(0) is never used (those distances are exact); 1 keeps it finite.
    scaled = ops.log(ops.cast(ops.maximum(distance, 1), "float32") / exact)
    scaled = scaled / math.log(max_distance / exact) * (num_buckets - exact)
    large = ops.minimum(exact + ops.cast(scaled, "int32"), num_buckets - 1)
    return buckets + ops.where(distance < exact, distance, large)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RelativePositionBias(keras.layers.Layer):
    """T5's learned relative position bias ``[batch or 1, heads, query, key]``.

    One scalar per head and bucket of ``key position - query position`` (see
    :func:`t5_relative_buckets`), added to the attention scores. T5 computes it
    once per stack (in its first layer) and every layer of the stack adds it.
    The table ``embeddings`` is ``[heads, num_buckets]``, as Mesh TensorFlow
    stores it.

    ``layer(queries, keys)`` on hidden states ``[batch, q, width]`` and ``[batch,
    k, width]`` takes their positions ``0..q-1`` and ``0..k-1`` and returns ``[1,
    heads, q, k]``; on int positions ``[batch, q]`` and ``[batch, k]`` (absolute:
    a decoding step) it returns ``[batch, heads, q, k]``. The bias is float32,
    as the scores it is added to.

    Args:
        num_heads: heads.
        num_buckets: buckets (32 in T5).
        max_distance: the distance from which all share the last bucket (128).
        bidirectional: an encoder's (True) or a causal decoder's buckets.
        embeddings_initializer: initializer of the table.

    Example:
        >>> bias = RelativePositionBias(num_heads=2)
        >>> bias(keras.ops.ones((1, 5, 8)), keras.ops.ones((1, 7, 8))).shape
        (1, 2, 5, 7)
    """

    def __init__(self, num_heads, num_buckets=32, max_distance=128, bidirectional=True,
                 embeddings_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.num_buckets = int(num_buckets)
        self.max_distance = int(max_distance)
        self.bidirectional = bool(bidirectional)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        least = 4 if self.bidirectional else 2  # each direction needs an exact bucket
        if self.num_buckets < least or self.max_distance < 1:
            raise ValueError(f"{self.name}: num_buckets must be >= {least} and max_distance "
                             f">= 1, got {num_buckets} and {max_distance}")

    def build(self, *shapes, **kwargs):
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.num_heads, self.num_buckets),
            initializer=self.embeddings_initializer)

    def call(self, queries, keys):
        if len(queries.shape) != len(keys.shape):
            raise ValueError(f"{self.name}: pass two hidden states [batch, length, width] "
                             f"or two position tensors [batch, length], got ranks "
                             f"{len(queries.shape)} and {len(keys.shape)}")
        if len(queries.shape) == 3:
            queries = ops.arange(ops.shape(queries)[1], dtype="int32")[None]
            keys = ops.arange(ops.shape(keys)[1], dtype="int32")[None]
        relative = ops.cast(keys, "int32")[:, None, :] - ops.cast(queries, "int32")[:, :, None]
        buckets = t5_relative_buckets(relative, self.bidirectional, self.num_buckets,
                                      self.max_distance)
        table = ops.cast(self.embeddings, "float32")
        return ops.transpose(ops.take(table, buckets, axis=1), (1, 0, 2, 3))

    def compute_output_spec(self, queries, keys):
        batch = 1 if len(queries.shape) == 3 else queries.shape[0]
        return keras.KerasTensor((batch, self.num_heads, queries.shape[1], keys.shape[1]),
                                 "float32")

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, num_buckets=self.num_buckets,
                      max_distance=self.max_distance, bidirectional=self.bidirectional,
                      embeddings_initializer=keras.initializers.serialize(
                          self.embeddings_initializer))
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TiedProjection(keras.layers.Layer):
    """A bias-free projection ``x . W`` whose transpose also maps back: ``z . W^T``.

    brightmart's albert_zh projects its narrow token embeddings to the hidden
    size with such a matrix (``word_embeddings_2``) and ties the MLM output
    through its transpose.

    Args:
        units: output width of the forward direction.
        kernel_initializer: initializer of ``W``.

    Example:
        >>> projection = TiedProjection(8)
        >>> wide = projection(ops.ones((2, 5, 4)))
        >>> projection(wide, reverse=True).shape
        (2, 5, 4)
    """

    def __init__(self, units, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        # Position-wise: a Keras padding mask (bert4x.bert4keras models carry one) passes
        # through, also in a model loaded from .keras.
        self.supports_masking = True

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units),
                                      initializer=self.kernel_initializer)

    def call(self, inputs, reverse=False):
        kernel = ops.cast(self.kernel, self.compute_dtype)
        return ops.matmul(inputs, ops.transpose(kernel) if reverse else kernel)

    def compute_output_spec(self, inputs, reverse=False):
        width = self.kernel.shape[0] if reverse else self.units
        return keras.KerasTensor(tuple(inputs.shape[:-1]) + (width,), self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, kernel_initializer=keras.initializers.serialize(
            self.kernel_initializer))
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FirstToken(keras.layers.Layer):
    """Takes the hidden state of the first position (``[CLS]``) for the pooler."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True  # drops a padding mask quietly (compute_mask)

    def call(self, inputs):
        return inputs[:, 0]

    def compute_mask(self, inputs, previous_mask=None):
        return None  # the sequence axis, and with it any padding mask, is gone

    def compute_output_spec(self, inputs):
        return keras.KerasTensor((inputs.shape[0], inputs.shape[-1]), inputs.dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BiasAdd(keras.layers.Layer):
    """Adds a learned bias vector (BERT's MLM ``output_bias``)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True  # position-wise, as the layers above

    def build(self, input_shape):
        self.bias = self.add_weight(name="bias", shape=(input_shape[-1],),
                                    initializer="zeros")

    def call(self, inputs):
        return inputs + ops.cast(self.bias, inputs.dtype)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(inputs.shape, inputs.dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FanTruncatedNormal(keras.initializers.TruncatedNormal):
    """Truncated normal whose values have standard deviation ``gain / sqrt(fan)``
    (RoFormer-V2's initializer, as bert4keras draws it).

    The normal is cut at two standard deviations, which leaves 0.8796 of its
    spread, so it is drawn ``1.13684723`` times wider. ``fan`` is the first
    dimension of the shape, except for tables whose first dimension is above
    10000 or below 10 (a vocabulary, the segment table): their second.

    Args:
        gain: RoFormer-V2 uses ``num_hidden_layers ** -0.5``.
        seed: as Keras's initializers take it (None: a new seed per instance).

    Example:
        >>> initializer = FanTruncatedNormal(gain=0.5, seed=1)
        >>> tuple(initializer((64, 32)).shape)
        (64, 32)
    """

    _WIDENING = 1.13684723

    def __init__(self, gain=1.0, seed=None):
        super().__init__(mean=0.0, stddev=1.0, seed=seed)
        self.gain = float(gain)

    def __call__(self, shape, dtype=None):
        if len(shape) != 2:
            raise ValueError(f"FanTruncatedNormal initialises matrices, got shape {shape}")
        fan = shape[1] if shape[0] > 10000 or shape[0] < 10 else shape[0]
        stddev = self._WIDENING * self.gain / math.sqrt(fan)
        return keras.random.truncated_normal(shape, stddev=stddev, dtype=dtype,
                                             seed=self.seed)

    def get_config(self):
        return {"gain": self.gain, "seed": super().get_config()["seed"]}
