"""bert4keras's ``layers`` module on Keras 3.

Every ``keras.layers`` name is available here, as ``from bert4keras.layers
import *`` gave them. Added: :class:`Loss` (a layer that adds a loss computed
from its inputs and their masks), :class:`ConditionalRandomField`,
:class:`MaximumEntropyMarkovModel`, :class:`GlobalPointer`,
:class:`EfficientGlobalPointer`, written with ``keras.ops`` (any backend),
each with ``get_config``, and
:class:`LayerNormalization` with bert4keras's ``[x, condition]`` call.
"""

import keras
import numpy as np
from keras import ops

from bert4x.bert4keras.backend import sequence_masking
from bert4x import layers as _native_layers
from bert4x.layers import RotaryPositionEncoding

globals().update({name: getattr(keras.layers, name) for name in dir(keras.layers)
                  if not name.startswith("_")})
Input = keras.Input
Model = keras.Model

_PACKAGE = "bert4x.bert4keras"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SequenceMask(keras.layers.Layer):
    """Identity on ``x`` that gives it a Keras mask.

    ``SequenceMask(from_ids=True)([x, token_ids])`` masks the positions where
    ``token_ids`` is 0 (padding); ``SequenceMask()([x, y])`` passes on ``y``'s
    mask. bert4x models built through ``bert4x.bert4keras`` use it so that masks
    reach later layers (``Loss``, CRF, GlobalPointer) where bert4keras's masks
    reached them; values are never changed.

    Args:
        from_ids: take the mask from token ids instead of the second input's mask.
        keep_first: never mask the first position (bert4keras's T5 decoder, whose
            ids start with the padding id 0).
    """

    def __init__(self, from_ids=False, keep_first=False, **kwargs):
        super().__init__(**kwargs)
        self.from_ids = bool(from_ids)
        self.keep_first = bool(keep_first)
        self.supports_masking = True

    def call(self, inputs):
        return inputs[0]

    def compute_mask(self, inputs, mask=None):
        if self.from_ids:
            found = ops.not_equal(inputs[1], 0)
        else:
            found = None if mask is None else mask[1]
        if found is not None and self.keep_first:
            found = ops.concatenate([ops.ones_like(found[:, :1]), found[:, 1:]], axis=1)
        return found

    def get_config(self):
        return {**super().get_config(), "from_ids": self.from_ids,
                "keep_first": self.keep_first}

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(inputs[0].shape, inputs[0].dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Loss(keras.layers.Layer):
    """A layer that adds ``compute_loss(inputs, mask)`` to the model's losses.

    Subclass it and write ``compute_loss``; the model is then compiled without a
    loss and fed ``([inputs...], None)`` batches. ``mask`` is the list of the
    inputs' Keras masks (None where an input has none), so a model from
    ``build_transformer_model`` passes its padding mask on, as in bert4keras.

    Args:
        output_axis: which input(s) the layer returns: None for all, an int or a
            list of ints.

    Example:
        >>> class CrossEntropy(Loss):
        ...     def compute_loss(self, inputs, mask=None):
        ...         y_true, y_pred = inputs
        ...         return keras.ops.mean(
        ...             keras.ops.sparse_categorical_crossentropy(y_true, y_pred))
        >>> output = CrossEntropy(1)([labels_in, probabilities])  # doctest: +SKIP
    """

    def __init__(self, output_axis=None, **kwargs):
        super().__init__(**kwargs)
        self.output_axis = output_axis
        self.supports_masking = True

    def call(self, inputs, mask=None):
        self.add_loss(self.compute_loss(inputs, mask))
        return self._select(inputs)

    def compute_loss(self, inputs, mask=None):
        raise NotImplementedError(
            f"{type(self).__name__} must implement compute_loss(inputs, mask=None)")

    def _select(self, items):
        if self.output_axis is None:
            return items
        if isinstance(self.output_axis, list):
            return [items[i] for i in self.output_axis]
        return items[self.output_axis]

    def compute_mask(self, inputs, mask=None):
        return None if mask is None else self._select(mask)

    def compute_output_spec(self, inputs, mask=None):
        spec = lambda t: keras.KerasTensor(t.shape, t.dtype)  # noqa: E731
        selected = self._select(inputs)
        return [spec(t) for t in selected] if isinstance(selected, list) else spec(selected)

    def get_config(self):
        return {**super().get_config(), "output_axis": self.output_axis}


def _padding_mask(y_pred):
    """``[batch, len]`` 1.0 where the scores are real, 0.0 where the layer put ``-inf``."""
    return ops.cast(ops.all(ops.not_equal(y_pred, -np.inf), axis=2), y_pred.dtype)


def _integer_labels(y_true, y_pred):
    return ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")


def _masked_accuracy(y_true, logits, mask):
    best = ops.cast(ops.argmax(logits, axis=2), "int32")
    equal = ops.cast(ops.equal(y_true, best), mask.dtype)
    return ops.sum(equal * mask) / ops.sum(mask)


class _TransitionLayer(keras.layers.Layer):
    """Shared part of the CRF and MEMM: masking the scores, ``lr_multiplier`` weights."""

    def __init__(self, lr_multiplier=1, **kwargs):
        super().__init__(**kwargs)
        self.lr_multiplier = lr_multiplier
        self.supports_masking = True

    def _add_scaled_weight(self, name, shape):
        # Stored divided by the multiplier and used multiplied by it, so the
        # weight's updates are lr_multiplier times larger (bert4keras's trick).
        multiplier = float(self.lr_multiplier)

        def initializer(shape, dtype=None):
            return keras.initializers.GlorotUniform()(shape, dtype) / multiplier

        return self.add_weight(name=name, shape=shape, initializer=initializer)

    def _scaled(self, weight):
        return self.lr_multiplier * weight if self.lr_multiplier != 1 else weight

    def call(self, inputs, mask=None):
        return sequence_masking(inputs, mask, -np.inf, 1)

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "lr_multiplier": self.lr_multiplier}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConditionalRandomField(_TransitionLayer):
    """Linear-chain CRF as bert4keras has it: a transition matrix and its losses.

    The layer returns its input scores with padded positions (from the Keras
    mask) set to ``-inf``; ``sparse_loss``/``dense_loss`` and the accuracies
    read the padding back from those ``-inf``. Decode with
    ``snippets.ViterbiDecoder(K.eval(crf.trans))``.

    Args:
        lr_multiplier: the transition matrix learns this many times faster
            (it is stored divided by the multiplier and used multiplied by it).

    Example:
        >>> crf = ConditionalRandomField(lr_multiplier=100)
        >>> output = crf(Dense(num_labels)(sequence_output))  # doctest: +SKIP
        >>> model.compile(loss=crf.sparse_loss, metrics=[crf.sparse_accuracy])  # doctest: +SKIP
    """

    def build(self, input_shape):
        labels = input_shape[-1]
        self._trans = self._add_scaled_weight("trans", (labels, labels))

    @property
    def trans(self):
        """The transition scores ``[labels, labels]`` (from row label to column label)."""
        return self._scaled(self._trans)

    def _target_score(self, y_true, y_pred):
        point = ops.einsum("bni,bni->b", y_true, y_pred)
        trans = ops.einsum("bni,ij,bnj->b", y_true[:, :-1], self.trans, y_true[:, 1:])
        return point + trans

    def dense_loss(self, y_true, y_pred):
        """``-log p(path)`` for one-hot ``y_true`` ``[batch, len, labels]``."""
        y_true = ops.cast(y_true, y_pred.dtype)
        mask = ops.all(ops.not_equal(y_pred, -np.inf), axis=2, keepdims=True)
        y_true = ops.where(mask, y_true, 0.0)
        y_pred = ops.where(mask, y_pred, 0.0)
        target = self._target_score(y_true, y_pred)
        trans = self.trans[None]
        step_mask = ops.cast(mask, y_pred.dtype)

        def step(states, inputs):
            scores, keep = inputs[:, :-1], inputs[:, -1:]
            outputs = ops.logsumexp(states[:, :, None] + trans, axis=1) + scores
            outputs = keep * outputs + (1 - keep) * states
            return outputs, None

        # One scanned tensor (scores and mask side by side): Keras's TensorFlow
        # scan fails on several when the length is unknown (batches padded to
        # their own longest sequence).
        sequence = ops.concatenate([y_pred[:, 1:], step_mask[:, 1:]], axis=2)
        last, _ = ops.scan(step, y_pred[:, 0], ops.moveaxis(sequence, 1, 0))
        return ops.logsumexp(last, axis=1) - target

    def sparse_loss(self, y_true, y_pred):
        """``-log p(path)`` for integer labels ``[batch, len]`` (or ``[batch, len, 1]``)."""
        y_true = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
        return self.dense_loss(ops.one_hot(y_true, ops.shape(self.trans)[0]), y_pred)

    def dense_accuracy(self, y_true, y_pred):
        """Per-token accuracy of the best label, padding excluded (one-hot labels)."""
        return self.sparse_accuracy(ops.argmax(y_true, axis=2), y_pred)

    def sparse_accuracy(self, y_true, y_pred):
        """Per-token accuracy of the best label, padding excluded (integer labels)."""
        return _masked_accuracy(_integer_labels(y_true, y_pred), y_pred, _padding_mask(y_pred))


def _reverse_sequences(x, lengths):
    """Reverse the first ``lengths[b]`` steps of each row of ``x`` (as ``tf.reverse_sequence``)."""
    positions = ops.arange(ops.shape(x)[1])[None]
    lengths = lengths[:, None]
    index = ops.where(positions < lengths, lengths - 1 - positions, positions)
    if len(x.shape) == 3:
        index = ops.broadcast_to(index[:, :, None], ops.shape(x))
    return ops.take_along_axis(x, index, axis=1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaximumEntropyMarkovModel(_TransitionLayer):
    """(Bidirectional) maximum entropy Markov model: bert4keras's faster CRF alternative.

    Like :class:`ConditionalRandomField`, the layer returns its input scores with
    padded positions set to ``-inf`` and trains a transition matrix. Its loss
    is local: position ``t`` (after the first) predicts its label by
    ``softmax((scores[t] + trans[label[t-1]]) / 2)`` (the first position by its
    scores alone), and ``sparse_loss`` averages this cross-entropy over the real
    tokens, left to right and right to left (with ``trans`` transposed), as
    bert4keras does. Decode with ``snippets.ViterbiDecoder(K.eval(memm.trans))``.

    Args:
        lr_multiplier: the transition weights learn this many times faster.
        hidden_dim: if set, the transition matrix is the low-rank product
            ``l_trans @ r_trans.T`` of two ``[labels, hidden_dim]`` weights.
            (bert4keras has no ``trans`` attribute then; here ``trans`` returns
            that product, so it can be decoded too.)

    Example:
        >>> memm = MaximumEntropyMarkovModel(lr_multiplier=100)
        >>> output = memm(Dense(num_labels)(sequence_output))  # doctest: +SKIP
        >>> model.compile(loss=memm.sparse_loss, metrics=[memm.sparse_accuracy])  # doctest: +SKIP
    """

    def __init__(self, lr_multiplier=1, hidden_dim=None, **kwargs):
        super().__init__(lr_multiplier=lr_multiplier, **kwargs)
        self.hidden_dim = hidden_dim

    def build(self, input_shape):
        labels = input_shape[-1]
        if self.hidden_dim is None:
            self._trans = self._add_scaled_weight("trans", (labels, labels))
        else:
            self._l_trans = self._add_scaled_weight("l_trans", (labels, self.hidden_dim))
            self._r_trans = self._add_scaled_weight("r_trans", (labels, self.hidden_dim))

    @property
    def trans(self):
        """The transition scores ``[labels, labels]`` (from row label to column label)."""
        if self.hidden_dim is None:
            return self._scaled(self._trans)
        return ops.matmul(self.l_trans, ops.transpose(self.r_trans))

    @property
    def l_trans(self):
        """Left factor ``[labels, hidden_dim]`` of ``trans`` (only with ``hidden_dim``)."""
        return self._scaled(self._l_trans)

    @property
    def r_trans(self):
        """Right factor ``[labels, hidden_dim]`` of ``trans`` (only with ``hidden_dim``)."""
        return self._scaled(self._r_trans)

    def _directed_logits(self, y_true, y_pred, mask, go_backwards):
        """Labels and per-position logits, read left to right or right to left."""
        trans = self.trans
        if go_backwards:
            lengths = ops.cast(ops.sum(mask, axis=1), "int32")
            y_true, y_pred = _reverse_sequences(y_true, lengths), _reverse_sequences(y_pred, lengths)
            trans = ops.transpose(trans)
        history = ops.take(trans, y_true, axis=0)
        history = ops.concatenate([y_pred[:, :1], history[:, :-1]], axis=1)
        return y_true, (y_pred + history) / 2

    def _both_directions(self, score, y_true, y_pred):
        mask = _padding_mask(y_pred)
        y_true = _integer_labels(y_true, y_pred)
        # Padding's -inf would make the logits and their gradients NaN.
        y_pred = ops.where(mask[..., None] > 0, y_pred, 0.0)
        total = 0.0
        for go_backwards in (False, True):
            labels, logits = self._directed_logits(y_true, y_pred, mask, go_backwards)
            total = total + score(labels, logits, mask)
        return total / 2

    def sparse_loss(self, y_true, y_pred):
        """Mean cross-entropy of both directions over real tokens (integer labels)."""

        def loss(labels, logits, mask):
            losses = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            return ops.sum(losses * mask) / ops.sum(mask)

        return self._both_directions(loss, y_true, y_pred)

    def dense_loss(self, y_true, y_pred):
        """:meth:`sparse_loss` for one-hot ``y_true`` ``[batch, len, labels]``."""
        return self.sparse_loss(ops.argmax(y_true, axis=2), y_pred)

    def sparse_accuracy(self, y_true, y_pred):
        """Per-token accuracy of both directions' best labels, padding excluded."""
        return self._both_directions(_masked_accuracy, y_true, y_pred)

    def dense_accuracy(self, y_true, y_pred):
        """:meth:`sparse_accuracy` for one-hot ``y_true``."""
        return self.sparse_accuracy(ops.argmax(y_true, axis=2), y_pred)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim}


def _pointer_scores(qw, kw, head_size, rope):
    """``[batch, heads, len, len]`` scores of queries/keys ``[batch, heads, len, d]``."""
    if rope:
        qw, kw = RotaryPositionEncoding().encode(qw, kw, None)
    return ops.einsum("bhmd,bhnd->bhmn", qw, kw) / head_size ** 0.5


def _mask_pointer_scores(logits, mask, tril_mask):
    upper = None
    if tril_mask:
        length = ops.shape(logits)[-1]
        rows = ops.arange(length)
        upper = rows[:, None] <= rows[None, :]
    return sequence_masking(logits, mask, -np.inf, [2, 3], upper)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GlobalPointer(keras.layers.Layer):
    """GlobalPointer: a score for every ``(start, end)`` span and entity type.

    Scores ``[batch, heads, len, len]`` are ``q_i . k_j / sqrt(head_size)`` of
    per-type query/key projections (rotary-encoded with ``RoPE``); spans that
    touch padding and, with ``tril_mask``, spans with ``end < start`` get
    ``-inf``. Train with ``multilabel_categorical_crossentropy``.

    Args:
        heads: number of entity types.
        head_size: size of each query and key.
        RoPE: rotary position encoding of queries and keys.
        use_bias: bias of the projection.
        tril_mask: exclude spans that end before they start.
        kernel_initializer: of the projection.

    Example:
        >>> scores = GlobalPointer(heads=4, head_size=64)(sequence_output)  # doctest: +SKIP
    """

    def __init__(self, heads, head_size, RoPE=True, use_bias=True, tril_mask=True,  # noqa: N803
                 kernel_initializer="lecun_normal", **kwargs):
        super().__init__(**kwargs)
        self.heads, self.head_size = heads, head_size
        self.RoPE, self.use_bias, self.tril_mask = RoPE, use_bias, tril_mask
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.supports_masking = True

    def _dense(self, units, name):
        return keras.layers.Dense(units, use_bias=self.use_bias, name=name,
                                  kernel_initializer=self.kernel_initializer)

    def build(self, input_shape):
        self.dense = self._dense(self.heads * self.head_size * 2, "dense")
        self.dense.build(input_shape)

    def call(self, inputs, mask=None):
        x = self.dense(inputs)
        shape = ops.shape(x)
        x = ops.reshape(x, (shape[0], shape[1], self.heads, 2 * self.head_size))
        x = ops.transpose(x, (0, 2, 1, 3))
        logits = _pointer_scores(x[..., :self.head_size], x[..., self.head_size:],
                                 self.head_size, self.RoPE)
        return _mask_pointer_scores(logits, mask, self.tril_mask)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.heads, input_shape[1], input_shape[1])

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "head_size": self.head_size,
                "RoPE": self.RoPE, "use_bias": self.use_bias, "tril_mask": self.tril_mask,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class EfficientGlobalPointer(GlobalPointer):
    """GlobalPointer with one shared query/key projection and per-type biases.

    Scores are the shared ``q_i . k_j / sqrt(head_size)`` plus, per type, a
    start bias of ``i`` and an end bias of ``j`` (halves of a ``Dense(2 *
    heads)`` of the projected tokens), masked as in :class:`GlobalPointer`.
    """

    def build(self, input_shape):
        self.p_dense = self._dense(self.head_size * 2, "p_dense")
        self.p_dense.build(input_shape)
        self.q_dense = self._dense(self.heads * 2, "q_dense")
        self.q_dense.build(tuple(input_shape[:-1]) + (self.head_size * 2,))

    def call(self, inputs, mask=None):
        x = self.p_dense(inputs)
        qw, kw = x[..., ::2], x[..., 1::2]
        logits = _pointer_scores(qw[:, None], kw[:, None], self.head_size, self.RoPE)
        bias = ops.transpose(self.q_dense(x), (0, 2, 1)) / 2
        logits = logits + bias[:, ::2, None] + bias[:, 1::2, :, None]
        return _mask_pointer_scores(logits, mask, self.tril_mask)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LayerNormalization(_native_layers.LayerNormalization):
    """bert4keras's LayerNormalization: ``LayerNormalization(conditional=True)([x, c])``.

    bert4x's (conditional) layer normalisation, called bert4keras's way: with
    ``conditional=True`` the input is ``[x, c]`` with ``c`` of shape ``[batch,
    c_dim]``; ``hidden_units`` first maps ``c`` through a bias-free Dense with
    ``hidden_activation``. The condition's gamma and beta Dense layers start at
    zero, so the layer starts as a plain layer normalisation.

    Args:
        zero_mean: subtract the mean (False: RMS norm, as T5 and RoFormer-V2).
        unit_variance: must be True (bert4x's layer always divides by the RMS).
        scale, offset: a learned gamma, a learned beta (True or False; bert4keras's
            constant values are not supported).
        epsilon: added to the variance (default ``keras.config.epsilon()``, as
            bert4keras; its models use 1e-12).
        conditional: take ``[x, c]``.
        hidden_units, hidden_activation, hidden_initializer: the condition's Dense.
    """

    def __init__(self, zero_mean=True, unit_variance=True, epsilon=None, scale=True,
                 offset=True, conditional=False, hidden_units=None,
                 hidden_activation="linear", hidden_initializer="glorot_uniform", **kwargs):
        if unit_variance is not True:
            raise NotImplementedError("LayerNormalization without unit_variance is not "
                                      "supported by bert4x.bert4keras")
        for name, flag in (("zero_mean", zero_mean), ("scale", scale), ("offset", offset)):
            if not isinstance(flag, bool):
                raise NotImplementedError(f"LayerNormalization({name}={flag!r}): bert4x.bert4keras "
                                          f"takes True or False")
        super().__init__(epsilon=epsilon or keras.config.epsilon(), conditional=conditional,
                         zero_mean=zero_mean, scale=scale, offset=offset, **kwargs)
        self.hidden_units = hidden_units
        self.hidden_activation = hidden_activation
        self.hidden_initializer = keras.initializers.get(hidden_initializer)
        self.supports_masking = True

    def build(self, input_shape):
        if not self.conditional:
            return super().build(input_shape)
        x_shape, c_shape = input_shape
        if len(c_shape) != 2:
            raise NotImplementedError(f"{self.name}: the condition must be [batch, c], got "
                                      f"shape {tuple(c_shape)}")
        self.hidden_dense = None
        if self.hidden_units:
            self.hidden_dense = keras.layers.Dense(
                self.hidden_units, activation=self.hidden_activation, use_bias=False,
                kernel_initializer=self.hidden_initializer, name="hidden_dense")
            self.hidden_dense.build(c_shape)
            c_shape = (c_shape[0], self.hidden_units)
        super().build(x_shape, c_shape)

    def call(self, inputs):
        if not self.conditional:
            return super().call(inputs)
        x, condition = inputs
        if self.hidden_dense is not None:
            condition = self.hidden_dense(condition)
        return super().call(x, condition=condition)

    def compute_mask(self, inputs, mask=None):
        if self.conditional and isinstance(mask, (list, tuple)):
            return mask[0]
        return mask

    def compute_output_spec(self, inputs):
        x = inputs[0] if self.conditional else inputs
        return keras.KerasTensor(x.shape, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "hidden_units": self.hidden_units,
                "hidden_activation": self.hidden_activation,
                "hidden_initializer": keras.initializers.serialize(self.hidden_initializer)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Lambda(keras.layers.Lambda):
    """Keras's ``Lambda`` with Keras 2's mask rule, as bert4keras scripts expect.

    Without ``mask=``, a mask on the input is dropped quietly (Keras 2 did so;
    Keras 3's ``Lambda`` warns each time it meets one, e.g. on the masked
    sequence output of a model from ``build_transformer_model``). With
    ``mask=`` (a tensor or ``mask(inputs, mask)``), that mask is the output's.

    Example:
        >>> first = Lambda(lambda x: x[:, 0], name="CLS-token")  # doctest: +SKIP
        >>> pooled = first(bert.model.output)  # doctest: +SKIP
    """

    def __init__(self, function, output_shape=None, mask=None, arguments=None, **kwargs):
        super().__init__(function, output_shape=output_shape, mask=mask,
                         arguments=arguments, **kwargs)
        self.supports_masking = True
