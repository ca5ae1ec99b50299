"""bert4keras's ``backend`` module: ``keras``, ``K`` and the tensor helpers scripts call.

``K`` offers the Keras 2 backend functions bert4keras scripts and their users
call (``K.sum``, ``K.sparse_categorical_crossentropy``, ``K.concatenate``,
``K.permute_dimensions``, ``K.random_uniform`` ...) with Keras 2's signatures,
defaults and meaning, on ``keras.ops``; the ones it does not offer
(``NOT_OFFERED``) raise an ``AttributeError`` that says what to use.
"""

import functools
import gc
import os
import weakref

import keras
import numpy as np
from keras import ops

__all__ = ["keras", "K", "set_gelu", "sequence_masking", "batch_gather",
           "multilabel_categorical_crossentropy",
           "sparse_multilabel_categorical_crossentropy", "piecewise_linear", "search_layer",
           "symbolic", "recompute_grad", "is_tf_keras"]

#: bert4keras scripts test this flag; bert4x always runs on Keras 3.
is_tf_keras = False

_GELU = {"version": "erf"}


def set_gelu(version):
    """Choose what ``hidden_act="gelu"`` means for models built afterwards.

    Args:
        version: ``"erf"`` (exact, the default) or ``"tanh"`` (the approximation
            of Google's original code).
    """
    version = version.lower()
    if version not in ("erf", "tanh"):
        raise ValueError(f"gelu version must be 'erf' or 'tanh', got {version!r}")
    _GELU["version"] = version


def gelu_activation_name():
    """The bert4x activation name ``"gelu"`` currently stands for (see `set_gelu`)."""
    return "gelu" if _GELU["version"] == "erf" else "gelu_tanh"


def _align(mask, axes, ndim):
    """Expand a ``[batch, length]`` mask so its axes sit at ``axes`` of an ``ndim`` tensor."""
    index = [None] * ndim
    for target in axes:
        index[target] = slice(None)
    return mask[tuple(index)]


def sequence_masking(x, mask=None, value=0, axis=None, bias=None, return_mask=False):
    """Replace the padded positions of ``x`` by ``value`` (bert4keras semantics).

    Args:
        x: a tensor.
        mask: ``[batch, length]`` (bool or 0/1), or None.
        value: the replacement, e.g. ``-np.inf`` or ``"-inf"``.
        axis: the sequence axis of ``x`` (default 1), or a list of them (each is
            masked with the same mask, as for ``[batch, heads, len, len]`` scores).
        bias: an extra boolean mask combined with ``mask``, or an additive bias.
        return_mask: also return the broadcast mask.

    Example:
        >>> sequence_masking(np.ones((1, 3)), np.array([[1, 1, 0]]), -1.0)  # doctest: +SKIP
    """
    if isinstance(value, str):
        value = {"-inf": -np.inf, "inf": np.inf}[value]
    if mask is not None or bias is not None:
        x = ops.convert_to_tensor(x)
        if mask is None:
            if ops.dtype(bias) == "bool":
                mask = bias
                x = ops.where(mask, x, ops.cast(value, x.dtype))
            else:
                x = x + bias
        else:
            axes = [1] if axis is None else (list(axis) if isinstance(axis, (list, tuple))
                                             else [axis])
            ndim = len(x.shape)
            axes = [a if a >= 0 else ndim + a for a in axes]
            mask = ops.cast(mask, "bool")
            full = _align(mask, [0, axes[0]], ndim)
            for a in axes[1:]:
                full = ops.logical_and(full, _align(mask, [0, a], ndim))
            mask = full
            if bias is not None and ops.dtype(bias) == "bool":
                mask = ops.logical_and(mask, bias)
            elif bias is not None:
                x = x + bias
            x = ops.where(mask, x, ops.cast(value, x.dtype))
    return (x, mask) if return_mask else x


def batch_gather(params, indices):
    """``params[b, indices[b, ...]]``: gather along the first non-batch axis.

    ``indices`` has the batch axes of ``params`` but the last one; the result
    has shape ``indices.shape + params.shape[indices.ndim:]`` (TensorFlow's
    ``gather(..., batch_dims=indices.ndim - 1)``).
    """
    params = ops.convert_to_tensor(params)
    indices = ops.cast(indices, "int32")
    rank = len(indices.shape)
    trailing = len(params.shape) - rank
    if trailing:
        target = list(ops.shape(indices)) + list(ops.shape(params)[rank:])
        for _ in range(trailing):
            indices = ops.expand_dims(indices, -1)
        indices = ops.broadcast_to(indices, target)
    return ops.take_along_axis(params, indices, axis=rank - 1)


def multilabel_categorical_crossentropy(y_true, y_pred):
    """Su's multi-label cross-entropy: ``log(1 + sum_neg e^s) + log(1 + sum_pos e^-s)``.

    ``y_true`` holds 0/1 (or probabilities) with the shape of the scores
    ``y_pred``; classes scored ``-inf`` (masked) are left out. Predict the
    classes whose score is above 0.
    """
    y_true = ops.cast(y_true, y_pred.dtype)
    keep = ops.not_equal(y_pred, -np.inf)
    minus_inf = ops.cast(-np.inf, y_pred.dtype)
    y_neg = ops.where(keep, y_pred, minus_inf) + ops.log(1 - y_true)
    y_pos = ops.where(keep, -y_pred, minus_inf) + ops.log(y_true)
    zeros = ops.zeros_like(y_pred[..., :1])
    return (ops.logsumexp(ops.concatenate([y_neg, zeros], axis=-1), axis=-1)
            + ops.logsumexp(ops.concatenate([y_pos, zeros], axis=-1), axis=-1))


def sparse_multilabel_categorical_crossentropy(y_true, y_pred, mask_zero=False):
    """`multilabel_categorical_crossentropy` with the positives given as indices.

    ``y_true`` ``[..., num_positive]`` holds the indices of the positive classes
    of the scores ``y_pred`` ``[..., num_classes]`` (raw scores, no activation);
    with ``mask_zero`` index 0 is padding (so rows with fewer positives pad with
    0, and class 0 is never a positive). The negatives' term is the log of the
    sum over all classes minus the positives, computed from the two log-sums.

    Example:
        >>> sparse_multilabel_categorical_crossentropy(  # doctest: +SKIP
        ...     np.array([[1, 3]]), np.array([[0.5, 2.0, -1.0, 3.0]]))
    """
    y_true = ops.cast(y_true, "int32")
    zeros = ops.zeros_like(y_pred[..., :1])
    # A zero score appended as class C stands for the 1 in log(1 + sum e^s).
    scores = ops.concatenate([y_pred, zeros], axis=-1)
    first = ops.cast(ops.arange(ops.shape(scores)[-1]) == 0, scores.dtype)
    if mask_zero:  # a padding index 0 picks +inf (left out of the positives' term)
        scores = ops.where(first > 0, np.inf, scores)
    positives = ops.take_along_axis(scores, y_true, axis=-1)
    positive_loss = ops.logsumexp(-ops.concatenate([positives, zeros], axis=-1), axis=-1)
    if mask_zero:  # ...and -inf in the negatives' term
        scores = ops.where(first > 0, -np.inf, scores)
        positives = ops.take_along_axis(scores, y_true, axis=-1)
    every = ops.logsumexp(scores, axis=-1)
    rest = ops.clip(1 - ops.exp(ops.logsumexp(positives, axis=-1) - every),
                    keras.config.epsilon(), 1)
    return positive_loss + every + ops.log(rest)


def piecewise_linear(t, schedule, from_zero=True):
    """Piecewise-linear function of ``t`` through ``{step: value}`` points.

    ``{1000: 1, 2000: 0.1}`` rises from 0 (with ``from_zero``) to 1 at step
    1000, falls to 0.1 at 2000 and stays there.
    """
    from bert4x.optimizers import PiecewiseLinear

    return PiecewiseLinear(schedule, 1.0, from_zero)(t)


#: Models built by ``build_transformer_model``, newest last (weak references).
_BUILT_MODELS = []


def remember_model(model):
    """Let `search_layer` find ``model``'s layers from tensors without Keras history."""
    _BUILT_MODELS[:] = [ref for ref in _BUILT_MODELS if ref() is not None]
    _BUILT_MODELS.append(weakref.ref(model))


def search_layer(inputs, name, exclude_from=None):
    """The layer called ``name`` upstream of ``inputs`` (a layer or a tensor), or None.

    Keras 3 hands a loss function the tensors of the training step, which do
    not know the layers that made them (Keras 2 passed the model's symbolic
    outputs). For such a tensor the layer is looked up in the models
    `build_transformer_model` built that are still alive, as bert4keras scripts
    expect (``search_layer(y_pred, 'Embedding-Token')`` inside a loss).

    Raises:
        ValueError: ``inputs`` is such a tensor and several live models built by
            `build_transformer_model` have *different* layers called ``name``
            (which one made the tensor cannot be told); pass the model instead,
            ``search_layer(model, name)``.

    Example:
        >>> search_layer(model.output, "Embedding-Token")  # doctest: +SKIP
    """
    if isinstance(inputs, keras.layers.Layer):
        start = inputs
    elif hasattr(inputs, "_keras_history"):
        start = inputs._keras_history[0]
    else:
        return _search_built_models(name)
    seen, queue = set(exclude_from or ()), [start]
    while queue:
        layer = queue.pop(0)
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Model):
            for inner in layer.layers:
                if inner.name == name:
                    return inner
        for node in layer._inbound_nodes:
            for parent in node.parent_nodes:
                queue.append(parent.operation)
    return None


def _search_built_models(name):
    # A model nothing refers to any more may still wait for the cycle collector (a
    # notebook cell run twice): collect it first, so that only live models count.
    # This runs when a loss is traced (at every step only if the model runs eagerly).
    gc.collect()
    found = {}
    for ref in _BUILT_MODELS:
        model = ref()
        for layer in model.layers if model is not None else ():
            if layer.name == name:
                found.setdefault(id(layer), (layer, model.name))
    if len(found) > 1:
        owners = ", ".join(repr(owner) for _, owner in found.values())
        raise ValueError(
            f"search_layer: the tensor does not know the layer that made it, and the "
            f"models {owners} built by build_transformer_model each have a layer "
            f"{name!r}; pass the model instead: search_layer(model, {name!r})")
    return next(iter(found.values()))[0] if found else None


def _gradients(loss, variables):
    """Keras 2's ``K.gradients``: symbolic gradients of ``loss`` inside a traced step.

    For losses that use the gradient of the model itself (gradient penalty):
    ``K.gradients(loss, [embeddings])[0]`` inside a loss function, which Keras 3
    traces with TensorFlow's graph. An embedding table's gradient is
    ``tf.IndexedSlices`` (``.values`` holds the rows), as in bert4keras.

    Raises:
        NotImplementedError: on a Keras backend other than TensorFlow, or
            outside a traced function (eager tensors have no symbolic gradient).
    """
    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError(f"K.gradients needs the TensorFlow backend (Keras runs "
                                  f"on {keras.backend.backend()!r}); compute gradients "
                                  "in a custom train_step instead")
    import tensorflow as tf

    if tf.executing_eagerly():
        raise NotImplementedError("K.gradients works inside a loss or a tf.function, "
                                  "not eagerly; use tf.GradientTape there")
    single = not isinstance(variables, (list, tuple))
    variables = [variables] if single else list(variables)
    tensors = [v.value if isinstance(v, keras.Variable) else v for v in variables]
    grads = tf.gradients(loss, tensors)
    return grads[0] if single else grads


def symbolic(f):
    """Identity decorator (bert4keras keeps it for old Keras versions)."""
    return f


def recompute_grad(call):
    """bert4keras's decorator for a layer's ``call``: recompute it in the backward pass.

    With the environment variable ``RECOMPUTE=1`` (read when the decorator is
    applied, as bert4keras reads it at import), the decorated call keeps no
    activations for the backward pass and runs again there (gradient
    checkpointing: less memory for about a third more compute), through
    ``tf.recompute_grad``. Without it the call is returned unchanged. It
    applies to the layers a script decorates; bert4x's own layers do not
    recompute.

    Raises:
        NotImplementedError: ``RECOMPUTE=1`` on a Keras backend other than
            TensorFlow.

    Example:
        >>> class FeedForward(keras.layers.Layer):  # doctest: +SKIP
        ...     @recompute_grad
        ...     def call(self, inputs):
        ...         return self.dense(inputs)
    """
    if os.environ.get("RECOMPUTE", "0").strip().lower() not in ("1", "true", "yes", "on"):
        return call
    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError(f"RECOMPUTE=1 needs the TensorFlow backend (Keras runs "
                                  f"on {keras.backend.backend()!r}); unset RECOMPUTE")
    import tensorflow as tf

    @functools.wraps(call)
    def recomputed(self, inputs, **kwargs):
        def forward(*tensors):
            return call(self, tf.nest.pack_sequence_as(inputs, list(tensors)), **kwargs)

        return tf.recompute_grad(forward)(*tf.nest.flatten(inputs))

    return recomputed


class _Backend:
    """Keras 2 backend functions (``K.*``) with Keras 2 signatures on ``keras.ops``."""

    floatx = staticmethod(keras.config.floatx)
    epsilon = staticmethod(keras.config.epsilon)
    gradients = staticmethod(_gradients)

    @staticmethod
    def int_shape(x):
        return tuple(x.shape)

    @staticmethod
    def ndim(x):
        return len(x.shape)

    @staticmethod
    def dtype(x):
        return ops.dtype(x)

    @staticmethod
    def concatenate(tensors, axis=-1):
        return ops.concatenate(tensors, axis=axis)

    @staticmethod
    def argmax(x, axis=-1):
        return ops.argmax(x, axis=axis)

    @staticmethod
    def argmin(x, axis=-1):
        return ops.argmin(x, axis=axis)

    @staticmethod
    def cumsum(x, axis=0):
        return ops.cumsum(x, axis=axis)

    @staticmethod
    def sparse_categorical_crossentropy(target, output, from_logits=False, axis=-1):
        return ops.sparse_categorical_crossentropy(ops.cast(target, "int32"), output,
                                                   from_logits=from_logits, axis=axis)

    @staticmethod
    def categorical_crossentropy(target, output, from_logits=False, axis=-1):
        return ops.categorical_crossentropy(target, output, from_logits=from_logits,
                                            axis=axis)

    @staticmethod
    def binary_crossentropy(target, output, from_logits=False):
        return ops.binary_crossentropy(target, output, from_logits=from_logits)

    @staticmethod
    def l2_normalize(x, axis=None):
        return ops.normalize(x, axis=-1 if axis is None else axis)

    @staticmethod
    def batch_dot(x, y, axes=None):
        """Keras 2's ``batch_dot`` for 2-D and 3-D operands."""
        if len(x.shape) == 2 and len(y.shape) == 2:
            return ops.sum(x * y, axis=-1, keepdims=True)
        if axes is None:
            axes = (len(x.shape) - 1, len(y.shape) - 2)
        axes = (axes, axes) if isinstance(axes, int) else tuple(axes)
        return ops.matmul(ops.moveaxis(x, axes[0], -1), ops.moveaxis(y, axes[1], 1))

    @staticmethod
    def switch(condition, then_expression, else_expression):
        return ops.where(condition, then_expression, else_expression)

    @staticmethod
    def one_hot(indices, num_classes):
        return ops.one_hot(indices, num_classes)

    @staticmethod
    def clip(x, min_value, max_value):
        return ops.clip(x, min_value, max_value)

    @staticmethod
    def eval(x):
        return keras.ops.convert_to_numpy(x)

    get_value = eval

    @staticmethod
    def set_value(x, value):
        x.assign(value)

    @staticmethod
    def variable(value, dtype=None, name=None):
        return keras.Variable(value, dtype=dtype, name=name)

    @staticmethod
    def constant(value, dtype=None, shape=None, name=None):
        value = np.full(shape, value) if shape is not None else value
        return ops.convert_to_tensor(value, dtype=dtype)

    @staticmethod
    def count_params(x):
        return int(np.prod(x.shape))

    # Keras 2 functions that keras.ops names differently, or whose defaults or
    # meaning differ from the keras.ops function of the same name.
    @staticmethod
    def permute_dimensions(x, pattern):
        return ops.transpose(x, pattern)

    @staticmethod
    def pow(x, a):
        return ops.power(x, a)

    @staticmethod
    def gather(reference, indices):
        return ops.take(reference, indices, axis=0)

    @staticmethod
    def batch_flatten(x):
        return ops.reshape(x, (ops.shape(x)[0], -1))

    @staticmethod
    def flatten(x):
        return ops.reshape(x, (-1,))

    @staticmethod
    def expand_dims(x, axis=-1):
        return ops.expand_dims(x, axis)

    @staticmethod
    def repeat(x, n):
        """``[batch, dim]`` -> ``[batch, n, dim]`` (not ``ops.repeat``)."""
        return ops.repeat(ops.expand_dims(x, 1), n, axis=1)

    @staticmethod
    def repeat_elements(x, rep, axis):
        return ops.repeat(x, rep, axis=axis)

    @staticmethod
    def reverse(x, axes):
        return ops.flip(x, axis=axes)

    @staticmethod
    def relu(x, alpha=0.0, max_value=None, threshold=0.0):
        y = ops.where(x > threshold, x, alpha * (x - threshold))
        return y if max_value is None else ops.minimum(y, max_value)

    @staticmethod
    def hard_sigmoid(x):
        """Keras 2's ``clip(0.2 x + 0.5, 0, 1)`` (``ops.hard_sigmoid`` is x / 6 + 0.5)."""
        return ops.clip(0.2 * x + 0.5, 0.0, 1.0)

    @staticmethod
    def bias_add(x, bias):
        return x + bias

    @staticmethod
    def temporal_padding(x, padding=(1, 1)):
        return ops.pad(x, [(0, 0), tuple(padding), (0, 0)])

    @staticmethod
    def cumprod(x, axis=0):
        return ops.cumprod(x, axis=axis)

    @staticmethod
    def arange(start, stop=None, step=1, dtype="int32"):
        return ops.arange(start, stop, step, dtype=dtype)

    @staticmethod
    def in_top_k(predictions, targets, k):
        return ops.in_top_k(targets, predictions, k)

    @staticmethod
    def dropout(x, level, noise_shape=None, seed=None):
        return keras.random.dropout(x, level, noise_shape=noise_shape, seed=seed)

    @staticmethod
    def random_uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
        return keras.random.uniform(shape, minval, maxval, dtype=dtype, seed=seed)

    @staticmethod
    def random_normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        return keras.random.normal(shape, mean, stddev, dtype=dtype, seed=seed)

    @staticmethod
    def truncated_normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        return keras.random.truncated_normal(shape, mean, stddev, dtype=dtype, seed=seed)

    @staticmethod
    def random_bernoulli(shape, p=0.0, dtype=None, seed=None):
        draw = keras.random.uniform(shape, seed=seed)
        return ops.cast(draw < p, dtype or keras.config.floatx())

    random_binomial = random_bernoulli

    @staticmethod
    def update(x, new_x):
        return x.assign(new_x)

    @staticmethod
    def update_add(x, increment):
        return x.assign_add(increment)

    @staticmethod
    def update_sub(x, decrement):
        return x.assign_sub(decrement)

    @staticmethod
    def batch_get_value(tensors):
        return [keras.ops.convert_to_numpy(x) for x in tensors]

    @staticmethod
    def batch_set_value(tuples):
        for variable, value in tuples:
            variable.assign(value)

    is_keras_tensor = staticmethod(keras.backend.is_keras_tensor)
    clear_session = staticmethod(keras.backend.clear_session)
    get_uid = staticmethod(keras.backend.get_uid)

    def __getattr__(self, name):
        if name in NOT_OFFERED:
            raise AttributeError(f"K.{name} is not offered by bert4x.bert4keras: "
                                 f"{NOT_OFFERED[name]}")
        if not name.startswith("_") and hasattr(ops, name):
            return getattr(ops, name)
        raise AttributeError(f"K.{name} is not provided by bert4x.bert4keras (Keras 3 has "
                             "no Keras 2 backend module); use the keras.ops function "
                             "of the same purpose")


#: Keras 2 backend functions ``K`` does not offer, and what to use instead.
NOT_OFFERED = {
    **dict.fromkeys(("learning_phase", "set_learning_phase", "in_train_phase",
                     "in_test_phase"), "Keras 3 has no learning phase; pass training= "
                    "to layers"),
    **dict.fromkeys(("function", "placeholder", "get_session", "set_session"),
                    "Keras 3 runs eagerly or traces models itself; call the model"),
    **dict.fromkeys(("rnn", "map_fn", "foldl", "foldr"), "use keras.ops.scan / "
                    "keras.ops.map / keras.ops.fori_loop"),
    **dict.fromkeys(("conv1d", "conv2d", "conv3d", "separable_conv2d", "pool2d", "pool3d",
                     "resize_images", "spatial_2d_padding", "spatial_3d_padding",
                     "batch_normalization", "ctc_batch_cost", "ctc_decode"),
                    "use keras.ops.conv / keras.ops.max_pool / keras.ops.pad / the layers"),
    **dict.fromkeys(("print_tensor", "moving_average_update", "random_uniform_variable",
                     "random_normal_variable", "to_dense", "is_sparse"),
                    "no Keras 3 equivalent is offered"),
}

#: The ``keras.backend`` functions bert4keras scripts call, on ``keras.ops``.
K = _Backend()
