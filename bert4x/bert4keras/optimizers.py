"""bert4keras's ``optimizers`` module as Keras 3 optimisers.

``Adam`` is bert4x's :class:`bert4x.optimizers.AdamW` (its slots, clipping,
serialisation) with bert4keras's update ``w -= lr * m_hat / (sqrt(v_hat) +
epsilon)`` (Keras adds epsilon before the bias correction of ``v``, which differs
by up to ``epsilon / sqrt(1 - beta_2 ** t)``). ``AdaFactor`` is bert4keras's
AdaFactor. The ``extend_with_*`` factories take either (or a class already
extended) and return a subclass that takes bert4keras's hyperparameter names:

* ``extend_with_weight_decay``: ``weight_decay_rate`` (0.01),
  ``exclude_from_weight_decay`` (regular expressions searched in the variable
  path); decoupled, scaled by the (scheduled) learning rate;
* ``extend_with_layer_adaptation``: ``exclude_from_layer_adaptation``; LAMB's
  trust ratio applied to the step;
* ``extend_with_piecewise_linear_lr``: ``lr_schedule`` ``{step: multiplier}``;
* ``extend_with_parameter_wise_lr``: ``paramwise_lr_schedule`` ``{substring:
  multiplier}``; every substring found in the path multiplies the step;
* ``extend_with_gradient_accumulation``: ``grad_accum_steps``, with
  bert4keras's timing (see its docstring);
* ``extend_with_lookahead``: ``steps_per_slow_update`` (5), ``slow_step_size``
  (0.5);
* ``extend_with_lazy_optimization``: ``include_in_lazy_optimization``; rows
  with a zero gradient keep their value;
* ``extend_with_exponential_moving_average``: ``ema_momentum`` (0.999), and
  the optimizer methods ``apply_ema_weights(bias_correction=True)`` and
  ``reset_old_weights()``.

How extensions compose, as in bert4keras: each extension transforms the values
its base optimizer writes (bert4keras patched ``K.update``); the innermost
extension, the first one applied, transforms first. So
``extend_with_layer_adaptation(extend_with_weight_decay(Adam))`` puts the decay
inside the trust ratio (LAMB), and the reverse order decays after it. The
``_v2`` names are the same factories (bert4keras on ``tf.keras`` used its v2
classes, which compute the same numbers as the v1 ones).
"""

import contextlib
import re

import keras
import numpy as np
from keras import ops

from bert4x.accumulation import densify
from bert4x.optimizers import AdamW, PiecewiseLinear, trust_ratio, variable_path

__all__ = ["Adam", "AdaFactor", "extend_with_weight_decay", "extend_with_piecewise_linear_lr",
           "extend_with_parameter_wise_lr", "extend_with_gradient_accumulation",
           "extend_with_layer_adaptation", "extend_with_lookahead",
           "extend_with_lazy_optimization", "extend_with_exponential_moving_average"]


class _Untracked:
    """Holds values Keras must not track as optimizer state (e.g. the model's weights)."""

    def __init__(self, value):
        self.value = value


class _Extensible:
    """bert4keras's extension mechanism on a Keras 3 optimizer.

    Every write of an update step goes through `_write`, which passes the new
    value through the hooks the extensions pushed, innermost first: the order in
    which bert4keras's patched ``K.update`` functions ran.
    """

    def _init_hooks(self):
        self._hooks = _Untracked([])

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._paths = _Untracked([variable_path(v) for v in var_list])

    @contextlib.contextmanager
    def _hook(self, transform):
        """Makes ``transform(target, value) -> value`` see the writes of the block."""
        self._hooks.value.append(transform)
        try:
            yield
        finally:
            self._hooks.value.pop()

    def _write(self, target, value):
        """bert4keras's ``K.update``: assigns ``value`` after the hooks' transforms."""
        for transform in reversed(self._hooks.value):
            value = transform(target, value)
        self.assign(target, value)

    def _decayed_lr(self, learning_rate):
        """The learning rate of this step (bert4keras's ``_decayed_lr``)."""
        return learning_rate

    def _path(self, variable):
        return self._paths.value[self._get_variable_index(variable)]

    def _searched(self, variable, patterns):
        """Whether a regular expression of `patterns` is found in the variable's path."""
        return any(re.search(pattern, self._path(variable)) for pattern in patterns)


class Adam(_Extensible, AdamW):
    """bert4keras's Adam: ``epsilon=1e-6``, epsilon added after bias correction.

    Args:
        learning_rate, beta_1, beta_2, epsilon: as in bert4keras.
        bias_correction: divide the moments by ``1 - beta ** t``.
        **kwargs: Keras optimizer arguments (``clipnorm``, ``name``, ...).

    Example:
        >>> model.compile(loss="mse", optimizer=Adam(1e-5))
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-6,
                 bias_correction=True, **kwargs):
        kwargs.setdefault("weight_decay", 0.0)
        kwargs.setdefault("exclude_from_weight_decay", [])
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, **kwargs)
        self.bias_correction = bool(bias_correction)
        self._init_hooks()

    def update_step(self, gradient, variable, learning_rate):
        gradient, learning_rate, _ = self._prepare_update(gradient, variable, learning_rate)
        dtype = variable.dtype
        learning_rate = ops.cast(self._decayed_lr(learning_rate), dtype)
        gradient = ops.cast(gradient, dtype)
        index = self._index_of(variable)
        m, v = self._momentums[index], self._velocities[index]
        step = ops.cast(self.iterations + 1, dtype)
        self._write(m, self.beta_1 * m + (1 - self.beta_1) * gradient)
        self._write(v, self.beta_2 * v + (1 - self.beta_2) * ops.square(gradient))
        m_hat, v_hat = m, v
        if self.bias_correction:
            m_hat = m / (1 - ops.power(ops.cast(self.beta_1, dtype), step))
            v_hat = v / (1 - ops.power(ops.cast(self.beta_2, dtype), step))
        self._write(variable, variable - learning_rate * m_hat / (ops.sqrt(v_hat) + self.epsilon))

    def get_config(self):
        return {**super().get_config(), "bias_correction": self.bias_correction}


def _root_mean_square(x, axis=None, keepdims=False):
    return ops.sqrt(ops.mean(ops.square(x), axis=axis, keepdims=keepdims))


class AdaFactor(_Extensible, keras.optimizers.Optimizer):
    """bert4keras's AdaFactor (Shazeer & Stern, 2018), on Keras 3.

    For a gradient ``g`` at step ``t`` (from 1)::

        v = beta2 * v + (1 - beta2) * (g**2 + epsilon1)   # factored for matrices
        u = g / sqrt(v + epsilon1)
        u = u / max(1, rms(u) / clipping_threshold)       # unless threshold is None
        u = m = beta1 * m + (1 - beta1) * u               # only when beta1 > 0
        u = u * max(rms(w), epsilon2)                      # multiply_by_parameter_scale
        w = w - lr * u

    A variable of two or more dimensions whose second-largest dimension is at least
    `min_dim_size_to_factor` keeps ``v`` factored: one mean over each of its two
    largest dimensions, recombined as ``vr * vc / mean(vr)``. ``learning_rate=None``
    is the relative step ``min(1 / sqrt(t), 0.01)`` (times 0.05 without parameter
    scale), ``beta2=None`` is ``1 - t ** -0.8``. ``keras.optimizers.Adafactor``
    differs (it factors every matrix over its last two axes, has no momentum and
    steps by ``min(learning_rate, 1 / sqrt(t))``), hence this class.

    Args:
        learning_rate: float, schedule, or None for the relative step.
        beta1: momentum of the update (0 keeps no momentum slot).
        beta2: decay of the second moment, or None for ``1 - t ** -0.8``.
        epsilon1, epsilon2: the regularisers of ``v`` and of the parameter scale.
        multiply_by_parameter_scale: scale the step by the weight's RMS.
        clipping_threshold: largest RMS of the step, or None.
        min_dim_size_to_factor: smallest second-largest dimension to factor ``v``.
        exclude_from_parameter_scale: regular expressions searched in the variable
            path; matching variables get no parameter scale.
        **kwargs: Keras optimizer arguments (``clipnorm``, ``name``, ...).

    Example:
        >>> model.compile(loss="mse", optimizer=AdaFactor(learning_rate=1e-3))
    """

    def __init__(self, learning_rate=1e-3, beta1=0.0, beta2=None, epsilon1=1e-30,
                 epsilon2=1e-3, multiply_by_parameter_scale=True, clipping_threshold=1.0,
                 min_dim_size_to_factor=128, exclude_from_parameter_scale=None, **kwargs):
        kwargs.setdefault("name", "AdaFactor")
        # The relative step is computed per update; Keras's own rate stays at 1.
        super().__init__(learning_rate=1.0 if learning_rate is None else learning_rate,
                         **kwargs)
        self.relative_step = learning_rate is None
        self.beta1 = float(beta1)
        self.beta2 = beta2
        self.epsilon1 = epsilon1
        self.epsilon2 = epsilon2
        self.multiply_by_parameter_scale = bool(multiply_by_parameter_scale)
        self.clipping_threshold = clipping_threshold
        self.min_dim_size_to_factor = int(min_dim_size_to_factor)
        self.exclude_from_parameter_scale = list(exclude_from_parameter_scale or [])
        self._init_hooks()

    def factored_shape(self, shape):
        """``(row shape, row axis, column shape, column axis)``, or None if not factored."""
        if len(shape) < 2:
            return None
        shape = np.array(shape)
        largest = shape.argpartition(-2)
        if shape[largest[-2]] < self.min_dim_size_to_factor:
            return None
        rows, columns = shape.copy(), shape.copy()
        rows[largest[-1]] = 1
        columns[largest[-2]] = 1
        return tuple(rows), largest[-1], tuple(columns), largest[-2]

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._slots = []
        for variable in var_list:
            slots = {}
            if self.beta1 > 0:
                slots["m"] = self.add_variable_from_reference(variable, "momentum")
            factored = self.factored_shape(tuple(variable.shape))
            if factored is None:
                slots["v"] = self.add_variable_from_reference(variable, "velocity")
            else:
                for key, shape in (("vr", factored[0]), ("vc", factored[2])):
                    slots[key] = self.add_variable(shape, dtype=variable.dtype,
                                                   name=f"{variable.name}_{key}")
            self._slots.append(slots)

    def _decayed_lr(self, learning_rate):
        if not self.relative_step:
            return learning_rate
        step = ops.cast(self.iterations + 1, "float32")
        rate = ops.minimum(1.0 / ops.sqrt(step), 0.01)
        return rate if self.multiply_by_parameter_scale else rate * 0.05

    def _beta2(self):
        if self.beta2 is None:
            return 1.0 - ops.power(ops.cast(self.iterations + 1, "float32"), -0.8)
        return self.beta2

    def update_step(self, gradient, variable, learning_rate):
        gradient = ops.cast(densify(gradient), variable.dtype)
        learning_rate = ops.cast(self._decayed_lr(learning_rate), variable.dtype)
        slots = self._slots[self._get_variable_index(variable)]
        beta2 = self._beta2()
        squared = ops.square(gradient) + self.epsilon1
        factored = self.factored_shape(tuple(variable.shape))
        if factored is None:
            v = slots["v"]
            self._write(v, beta2 * v + (1.0 - beta2) * squared)
        else:
            _, row_axis, _, column_axis = factored
            vr, vc = slots["vr"], slots["vc"]
            self._write(vr, beta2 * vr + (1.0 - beta2) * ops.mean(squared, axis=int(row_axis),
                                                                  keepdims=True))
            self._write(vc, beta2 * vc + (1.0 - beta2) * ops.mean(squared, axis=int(column_axis),
                                                                  keepdims=True))
            v = vr * vc / ops.mean(vr, axis=int(column_axis), keepdims=True)
        update = gradient / ops.sqrt(v + self.epsilon1)
        if self.clipping_threshold is not None:
            update = update / ops.maximum(
                1.0, _root_mean_square(update) / self.clipping_threshold)
        if self.beta1 > 0:
            m = slots["m"]
            self._write(m, self.beta1 * m + (1.0 - self.beta1) * update)
            update = ops.convert_to_tensor(m)
        if self.multiply_by_parameter_scale and not self._searched(
                variable, self.exclude_from_parameter_scale):
            update = update * ops.maximum(_root_mean_square(variable), self.epsilon2)
        self._write(variable, variable - learning_rate * update)

    def get_config(self):
        config = super().get_config()
        config.update(
            learning_rate=None if self.relative_step else config["learning_rate"],
            beta1=self.beta1, beta2=self.beta2, epsilon1=self.epsilon1,
            epsilon2=self.epsilon2, multiply_by_parameter_scale=self.multiply_by_parameter_scale,
            clipping_threshold=self.clipping_threshold,
            min_dim_size_to_factor=self.min_dim_size_to_factor,
            exclude_from_parameter_scale=self.exclude_from_parameter_scale)
        return config


def _named(factory):
    """bert4keras's ``extend_with_x(BaseOptimizer, name=None)`` signature."""
    def extend(BaseOptimizer, name=None):  # noqa: N803
        if not (isinstance(BaseOptimizer, type) and issubclass(BaseOptimizer, _Extensible)):
            raise TypeError(f"{factory.__name__} extends bert4x.bert4keras.optimizers.Adam, "
                            f"AdaFactor or a class derived from them, got {BaseOptimizer!r}")
        new = factory(BaseOptimizer)
        new.__name__ = new.__qualname__ = name or new.__name__
        return new
    extend.__name__, extend.__doc__ = factory.__name__, factory.__doc__
    return extend


def _read(variable):
    """A variable's current value as a tensor (``ops.where`` takes no variables on JAX)."""
    return ops.convert_to_tensor(variable)


def _only(variable, transform):
    """A hook applying ``transform(value)`` to the writes of `variable` alone."""
    return lambda target, value: transform(value) if target is variable else value


@_named
def extend_with_weight_decay(BaseOptimizer):  # noqa: N803
    """Add ``weight_decay_rate`` (default 0.01) and ``exclude_from_weight_decay``.

    ``w <- w_new - lr * weight_decay_rate * w``, with ``lr`` the scheduled learning
    rate; variables whose path matches an ``exclude_from_weight_decay`` regular
    expression are not decayed.
    """
    class WeightDecay(BaseOptimizer):
        def __init__(self, *args, weight_decay_rate=0.01, exclude_from_weight_decay=(),
                     **kwargs):
            super().__init__(*args, **kwargs)
            self.weight_decay_rate = float(weight_decay_rate)
            self.weight_decay_exclusions = list(exclude_from_weight_decay)

        def update_step(self, gradient, variable, learning_rate):
            if self._searched(variable, self.weight_decay_exclusions):
                return super().update_step(gradient, variable, learning_rate)
            rate = ops.multiply(ops.cast(self._decayed_lr(learning_rate), variable.dtype),
                                self.weight_decay_rate)
            with self._hook(_only(variable, lambda value: value - rate * variable)):
                super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            return {**super().get_config(), "weight_decay_rate": self.weight_decay_rate,
                    "exclude_from_weight_decay": self.weight_decay_exclusions}
    return WeightDecay


@_named
def extend_with_layer_adaptation(BaseOptimizer):  # noqa: N803
    """Add ``exclude_from_layer_adaptation``: LAMB's trust ratio on each step.

    The step ``dx`` the base optimizer writes (with everything the extensions inside
    this one added, e.g. weight decay) becomes ``dx * ||w|| / ||dx / lr||``, i.e. its
    length is ``lr * ||w||`` (ratio 1 when a norm is 0), with ``lr`` the scheduled
    learning rate (at least ``keras.config.epsilon()``). The ratio is bert4x's
    :class:`bert4x.optimizers.Lamb` one; variables whose path matches an
    ``exclude_from_layer_adaptation`` regular expression keep their step.
    """
    class LayerAdaptation(BaseOptimizer):
        def __init__(self, *args, exclude_from_layer_adaptation=(), **kwargs):
            super().__init__(*args, **kwargs)
            self.exclude_from_layer_adaptation = list(exclude_from_layer_adaptation)

        def update_step(self, gradient, variable, learning_rate):
            if self._searched(variable, self.exclude_from_layer_adaptation):
                return super().update_step(gradient, variable, learning_rate)
            rate = ops.maximum(ops.cast(self._decayed_lr(learning_rate), variable.dtype),
                               keras.config.epsilon())

            def adapt(value):
                step = value - variable
                return variable + step * trust_ratio(variable, step / rate)

            with self._hook(_only(variable, adapt)):
                super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            return {**super().get_config(),
                    "exclude_from_layer_adaptation": self.exclude_from_layer_adaptation}
    return LayerAdaptation


@_named
def extend_with_piecewise_linear_lr(BaseOptimizer):  # noqa: N803
    """Add ``lr_schedule`` ``{step: multiplier}`` (default ``{0: 1}``).

    The learning rate is multiplied by bert4x's :class:`bert4x.optimizers.PiecewiseLinear`
    of the optimizer's iterations (from 0, from multiplier 0 if step 0 is not given).
    """
    class PiecewiseLinearLR(BaseOptimizer):
        def __init__(self, *args, lr_schedule=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.lr_schedule = {int(k): v for k, v in (lr_schedule or {0: 1}).items()}
            self._multiplier = PiecewiseLinear(self.lr_schedule)

        def _decayed_lr(self, learning_rate):
            return ops.multiply(super()._decayed_lr(learning_rate),
                                self._multiplier(self.iterations))

        def get_config(self):
            return {**super().get_config(), "lr_schedule": self.lr_schedule}
    return PiecewiseLinearLR


@_named
def extend_with_parameter_wise_lr(BaseOptimizer):  # noqa: N803
    """Add ``paramwise_lr_schedule`` ``{substring: multiplier}``.

    Every substring found in a variable's path multiplies its step (the written
    change, including what inner extensions added).
    """
    class ParameterWiseLR(BaseOptimizer):
        def __init__(self, *args, paramwise_lr_schedule=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.paramwise_lr_schedule = dict(paramwise_lr_schedule or {})

        def update_step(self, gradient, variable, learning_rate):
            multiplier = 1.0
            for substring, factor in self.paramwise_lr_schedule.items():
                if substring in self._path(variable):
                    multiplier *= factor
            if multiplier == 1:
                return super().update_step(gradient, variable, learning_rate)
            scaled = _only(variable, lambda value: variable + (value - variable) * multiplier)
            with self._hook(scaled):
                super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            return {**super().get_config(), "paramwise_lr_schedule": self.paramwise_lr_schedule}
    return ParameterWiseLR


@_named
def extend_with_gradient_accumulation(BaseOptimizer):  # noqa: N803
    """Add ``grad_accum_steps``: update every that many steps with the mean gradient.

    bert4keras's rule, kept as it is: at step ``t`` (from 0) with ``t %
    grad_accum_steps == 0`` the update uses the gradients accumulated *before*
    step ``t`` (so the first update, at step 0, uses a zero gradient and each
    batch's gradient is applied one update later), and the base optimizer's step
    count is ``t + 1``, not the number of updates; at the other steps every write
    of the base optimizer (weights and slots) is discarded. Keras's own
    ``gradient_accumulation_steps`` applies the current window instead.
    """
    class GradientAccumulation(BaseOptimizer):
        def __init__(self, *args, grad_accum_steps=2, **kwargs):
            super().__init__(*args, **kwargs)
            self.grad_accum_steps = int(grad_accum_steps)

        def build(self, var_list):
            if self.built:
                return
            super().build(var_list)
            self._accumulated = [self.add_variable_from_reference(v, "accumulated_gradient")
                                 for v in var_list]

        def update_step(self, gradient, variable, learning_rate):
            accumulated = self._accumulated[self._get_variable_index(variable)]
            apply = ops.equal(ops.mod(self.iterations, self.grad_accum_steps), 0)
            with self._hook(lambda target, value: ops.where(apply, value, _read(target))):
                super().update_step(accumulated / self.grad_accum_steps, variable,
                                    learning_rate)
            accumulated_value = _read(accumulated)
            self._write(accumulated, ops.where(apply, ops.zeros_like(accumulated_value),
                                               accumulated_value))
            self._write(accumulated, accumulated + ops.cast(densify(gradient),
                                                            accumulated.dtype))

        def get_config(self):
            return {**super().get_config(), "grad_accum_steps": self.grad_accum_steps}
    return GradientAccumulation


@_named
def extend_with_lookahead(BaseOptimizer):  # noqa: N803
    """Add Lookahead (Zhang et al., 2019): ``steps_per_slow_update`` (k, default 5)
    and ``slow_step_size`` (alpha, default 0.5).

    After the base update of step ``t`` (from 0), when ``t % k == 0``:
    ``slow <- slow + alpha * (w - slow)`` and ``w <- slow``. As in bert4keras, the
    slow weights start at zero, not at the weights, so the first update (``t =
    0``) also multiplies every weight by ``alpha``: kept for identical numbers.
    """
    class Lookahead(BaseOptimizer):
        def __init__(self, *args, steps_per_slow_update=5, slow_step_size=0.5, **kwargs):
            super().__init__(*args, **kwargs)
            self.steps_per_slow_update = int(steps_per_slow_update)
            self.slow_step_size = float(slow_step_size)

        def build(self, var_list):
            if self.built:
                return
            super().build(var_list)
            self._slow_weights = [self.add_variable_from_reference(v, "slow_weight")
                                  for v in var_list]

        def update_step(self, gradient, variable, learning_rate):
            super().update_step(gradient, variable, learning_rate)
            slow = self._slow_weights[self._get_variable_index(variable)]
            sync = ops.equal(ops.mod(self.iterations, self.steps_per_slow_update), 0)
            slow_value = _read(slow)
            self._write(slow, ops.where(sync, slow_value + self.slow_step_size * (
                variable - slow_value), slow_value))
            self._write(variable, ops.where(sync, _read(slow), _read(variable)))

        def get_config(self):
            return {**super().get_config(), "steps_per_slow_update": self.steps_per_slow_update,
                    "slow_step_size": self.slow_step_size}
    return Lookahead


@_named
def extend_with_lazy_optimization(BaseOptimizer):  # noqa: N803
    """Add ``include_in_lazy_optimization``: update only rows with a nonzero gradient.

    For a variable whose path matches one of the regular expressions, the change
    written is kept only in the rows (slices along the last axis) where the gradient
    has a nonzero entry; the base optimizer's slots (e.g. Adam's moments) are still
    updated everywhere, as in bert4keras. Keras 3 gives optimisers dense gradients
    (on TensorFlow an embedding's ``IndexedSlices`` is made dense here, as
    bert4keras did), so this selects the rows of the tokens in the batch (and any
    row whose gradient is exactly zero); the computation stays dense, so it saves
    no time, it only keeps absent tokens' embeddings (and their weight decay) still.
    """
    class LazyOptimization(BaseOptimizer):
        def __init__(self, *args, include_in_lazy_optimization=(), **kwargs):
            super().__init__(*args, **kwargs)
            self.include_in_lazy_optimization = list(include_in_lazy_optimization)

        def update_step(self, gradient, variable, learning_rate):
            if not self._searched(variable, self.include_in_lazy_optimization):
                return super().update_step(gradient, variable, learning_rate)
            gradient = densify(gradient)
            rows = ops.cast(ops.any(ops.not_equal(gradient, 0), axis=-1, keepdims=True),
                            variable.dtype)
            with self._hook(_only(variable, lambda value: variable + (value - variable) * rows)):
                super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            return {**super().get_config(),
                    "include_in_lazy_optimization": self.include_in_lazy_optimization}
    return LazyOptimization


@_named
def extend_with_exponential_moving_average(BaseOptimizer):  # noqa: N803
    """Add ``ema_momentum`` (default 0.999): an average of the weights.

    After each update ``ema <- ema_momentum * ema + (1 - ema_momentum) * w``, the
    average starting at zero. ``optimizer.apply_ema_weights(bias_correction=True)``
    backs the weights up and writes the averages into them (divided by ``1 -
    ema_momentum ** iterations`` with bias correction);
    ``optimizer.reset_old_weights()`` writes the backup back. The native
    :class:`bert4x.optimizers.ExponentialMovingAverage` callback starts its average at
    the weights instead (no bias correction), which gives other numbers.

    Example:
        >>> AdamEMA = extend_with_exponential_moving_average(Adam, name="AdamEMA")
        >>> model.compile(loss="mse", optimizer=AdamEMA(1e-3, ema_momentum=0.999))
        >>> model.fit(x, y)
        >>> model.optimizer.apply_ema_weights(); model.evaluate(x, y)
        >>> model.optimizer.reset_old_weights()
    """
    class ExponentialMovingAverage(BaseOptimizer):
        def __init__(self, *args, ema_momentum=0.999, **kwargs):
            super().__init__(*args, **kwargs)
            self.ema_momentum = float(ema_momentum)
            self._old_weights = None

        def build(self, var_list):
            if self.built:
                return
            super().build(var_list)
            self._model_weights = _Untracked(list(var_list))
            self._ema_weights = [self.add_variable_from_reference(v, "ema") for v in var_list]

        def update_step(self, gradient, variable, learning_rate):
            super().update_step(gradient, variable, learning_rate)
            ema = self._ema_weights[self._get_variable_index(variable)]
            self._write(ema, ema * self.ema_momentum + variable * (1.0 - self.ema_momentum))

        def apply_ema_weights(self, bias_correction=True):
            """Backs up the weights and writes the averages into them."""
            if not self.built:
                raise ValueError("apply_ema_weights(): the optimizer has made no update "
                                 "yet.")
            weights = self._model_weights.value
            self._old_weights = [ops.convert_to_numpy(w) for w in weights]
            averages = [ops.convert_to_numpy(ema) for ema in self._ema_weights]
            if bias_correction:
                steps = int(ops.convert_to_numpy(self.iterations))
                scale = 1.0 - np.power(self.ema_momentum, steps)
                averages = [average / scale for average in averages]
            for weight, average in zip(weights, averages):
                weight.assign(average)

        def reset_old_weights(self):
            """Writes back the weights backed up by `apply_ema_weights`."""
            if self._old_weights is None:
                raise ValueError("reset_old_weights(): apply_ema_weights() was not called.")
            for weight, value in zip(self._model_weights.value, self._old_weights):
                weight.assign(value)

        def get_config(self):
            return {**super().get_config(), "ema_momentum": self.ema_momentum}
    return ExponentialMovingAverage


extend_with_weight_decay_v2 = extend_with_weight_decay
extend_with_piecewise_linear_lr_v2 = extend_with_piecewise_linear_lr
extend_with_parameter_wise_lr_v2 = extend_with_parameter_wise_lr
extend_with_gradient_accumulation_v2 = extend_with_gradient_accumulation
extend_with_layer_adaptation_v2 = extend_with_layer_adaptation
extend_with_lookahead_v2 = extend_with_lookahead
extend_with_lazy_optimization_v2 = extend_with_lazy_optimization
extend_with_exponential_moving_average_v2 = extend_with_exponential_moving_average
AdaFactorV1 = AdaFactorV2 = AdaFactor
