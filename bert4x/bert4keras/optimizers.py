"""bert4keras's ``optimizers`` module as Keras 3 optimisers.

``Adam`` is bert4x's :class:`bert4x.optimizers.AdamW` (its per-variable rules,
clipping, serialisation) with bert4keras's update ``w -= lr * m_hat /
(sqrt(v_hat) + epsilon)`` (Keras adds epsilon before the bias correction of
``v``, which differs by up to ``epsilon / sqrt(1 - beta_2 ** t)``). The
``extend_with_*`` factories return subclasses that take bert4keras's
hyperparameter names and map them onto bert4x's rules:

* ``extend_with_weight_decay``: ``weight_decay_rate``, ``exclude_from_weight_decay``
  (regular expressions searched in the variable path); decoupled, scaled by the
  (scheduled) learning rate;
* ``extend_with_piecewise_linear_lr``: ``lr_schedule`` ``{step: multiplier}``;
* ``extend_with_parameter_wise_lr``: ``paramwise_lr_schedule`` ``{substring:
  multiplier}``; every substring found in the path multiplies the update;
* ``extend_with_gradient_accumulation``: ``grad_accum_steps``, with
  bert4keras's timing (see its docstring).

The ``_v2`` names are the same factories. Layer adaptation, lookahead, lazy
optimisation, the exponential moving average and AdaFactor raise
``NotImplementedError`` naming bert4x's own route.
"""

import keras
from keras import ops

from bert4x.optimizers import AdamW, PiecewiseLinear, _variable_path

__all__ = ["Adam", "AdaFactor", "extend_with_weight_decay", "extend_with_piecewise_linear_lr",
           "extend_with_parameter_wise_lr", "extend_with_gradient_accumulation",
           "extend_with_layer_adaptation", "extend_with_lookahead",
           "extend_with_lazy_optimization", "extend_with_exponential_moving_average"]


class Adam(AdamW):
    """bert4keras's Adam: ``epsilon=1e-6``, epsilon added after bias correction.

    Args:
        learning_rate, beta_1, beta_2, epsilon: as in bert4keras.
        bias_correction: divide the moments by ``1 - beta ** t``.
        **kwargs: Keras optimizer arguments (``clipnorm``, ``name``, ...).
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-6,
                 bias_correction=True, **kwargs):
        kwargs.setdefault("weight_decay", 0.0)
        kwargs.setdefault("exclude_from_weight_decay", [])
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, **kwargs)
        self.bias_correction = bool(bias_correction)
        self.paramwise_lr_schedule = {}

    def _resolve_rules(self, variables):
        super()._resolve_rules(variables)
        if self.paramwise_lr_schedule:
            multipliers = []
            for variable in variables:
                multiplier = 1.0
                for substring, factor in self.paramwise_lr_schedule.items():
                    if substring in _variable_path(variable):
                        multiplier *= factor
                multipliers.append(multiplier)
            self._rules.multipliers = tuple(multipliers)

    def update_step(self, gradient, variable, learning_rate):
        gradient, learning_rate, decays = self._prepare_update(gradient, variable,
                                                               learning_rate)
        dtype = variable.dtype
        learning_rate = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        index = self._index_of(variable)
        m, v = self._momentums[index], self._velocities[index]
        step = ops.cast(self.iterations + 1, dtype)
        self.assign(m, self.beta_1 * m + (1 - self.beta_1) * gradient)
        self.assign(v, self.beta_2 * v + (1 - self.beta_2) * ops.square(gradient))
        m_hat, v_hat = m, v
        if self.bias_correction:
            m_hat = m / (1 - ops.power(ops.cast(self.beta_1, dtype), step))
            v_hat = v / (1 - ops.power(ops.cast(self.beta_2, dtype), step))
        update = learning_rate * m_hat / (ops.sqrt(v_hat) + self.epsilon)
        if decays:
            update = update + learning_rate * self.weight_decay_rate * variable
        self.assign_sub(variable, update)

    def get_config(self):
        return {**super().get_config(), "bias_correction": self.bias_correction}


def _named(factory):
    """bert4keras's ``extend_with_x(BaseOptimizer, name=None)`` signature."""
    def extend(BaseOptimizer, name=None):  # noqa: N803
        if not (isinstance(BaseOptimizer, type) and issubclass(BaseOptimizer, Adam)):
            raise TypeError(f"{factory.__name__} extends bert4x.bert4keras.optimizers.Adam "
                            f"or a class derived from it, got {BaseOptimizer!r}")
        new = factory(BaseOptimizer)
        new.__name__ = new.__qualname__ = name or new.__name__
        return new
    extend.__name__, extend.__doc__ = factory.__name__, factory.__doc__
    return extend


def _learning_rate(args, kwargs):
    """Pop the learning rate given positionally or by name (bert4keras's default 1e-3)."""
    if args:
        return args[0], args[1:]
    return kwargs.pop("learning_rate", 0.001), args


@_named
def extend_with_weight_decay(BaseOptimizer):  # noqa: N803
    """Add ``weight_decay_rate`` (default 0.01) and ``exclude_from_weight_decay``."""
    class WeightDecay(BaseOptimizer):
        def __init__(self, *args, weight_decay_rate=0.01, exclude_from_weight_decay=(),
                     **kwargs):
            super().__init__(*args, **kwargs)
            self._init_rules(weight_decay_rate, list(exclude_from_weight_decay),
                             self.lr_multipliers, self.gradient_transform)
    return WeightDecay


@_named
def extend_with_piecewise_linear_lr(BaseOptimizer):  # noqa: N803
    """Add ``lr_schedule`` ``{step: multiplier}`` (default ``{0: 1}``)."""
    class PiecewiseLinearLR(BaseOptimizer):
        def __init__(self, *args, lr_schedule=None, **kwargs):
            learning_rate, args = _learning_rate(args, kwargs)
            schedule = {int(k): v for k, v in (lr_schedule or {0: 1}).items()}
            super().__init__(PiecewiseLinear(schedule, base_lr=learning_rate), *args,
                             **kwargs)
            self.lr_schedule = schedule
    return PiecewiseLinearLR


@_named
def extend_with_parameter_wise_lr(BaseOptimizer):  # noqa: N803
    """Add ``paramwise_lr_schedule`` ``{substring: multiplier}``."""
    class ParameterWiseLR(BaseOptimizer):
        def __init__(self, *args, paramwise_lr_schedule=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.paramwise_lr_schedule = dict(paramwise_lr_schedule or {})
    return ParameterWiseLR


@_named
def extend_with_gradient_accumulation(BaseOptimizer):  # noqa: N803
    """Add ``grad_accum_steps``: update every that many steps with the mean gradient.

    bert4keras's rule, kept as it is: at step ``t`` (from 0) with ``t %
    grad_accum_steps == 0`` the update uses the gradients accumulated *before*
    step ``t`` (so the first update, at step 0, uses a zero gradient and each
    batch's gradient is applied one update later), and Adam's step count is
    ``t + 1``, not the number of updates. Keras's own
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
            index = self._index_of(variable)
            accumulated = self._accumulated[index]
            slots = (variable, self._momentums[index], self._velocities[index])
            before = [ops.add(ops.convert_to_tensor(slot), 0) for slot in slots]
            apply = ops.equal(ops.mod(self.iterations, self.grad_accum_steps), 0)
            super().update_step(accumulated / self.grad_accum_steps, variable, learning_rate)
            for slot, old in zip(slots, before):
                self.assign(slot, ops.where(apply, slot, old))
            self.assign(accumulated, ops.where(apply, ops.zeros_like(accumulated),
                                               accumulated) + ops.cast(gradient,
                                                                       accumulated.dtype))

        def get_config(self):
            return {**super().get_config(), "grad_accum_steps": self.grad_accum_steps}
    return GradientAccumulation


def _not_offered(name, route):
    def extend(BaseOptimizer, name_=None):  # noqa: N803
        raise NotImplementedError(f"{name} is not offered by bert4x.bert4keras; {route}")
    extend.__name__ = name
    return extend


extend_with_layer_adaptation = _not_offered(
    "extend_with_layer_adaptation", "use bert4x.optimizers.Lamb")
extend_with_lookahead = _not_offered("extend_with_lookahead", "no bert4x equivalent yet")
extend_with_lazy_optimization = _not_offered(
    "extend_with_lazy_optimization", "bert4x's Adam makes sparse gradients dense")
extend_with_exponential_moving_average = _not_offered(
    "extend_with_exponential_moving_average",
    "use the bert4x.optimizers.ExponentialMovingAverage callback")

extend_with_weight_decay_v2 = extend_with_weight_decay
extend_with_piecewise_linear_lr_v2 = extend_with_piecewise_linear_lr
extend_with_parameter_wise_lr_v2 = extend_with_parameter_wise_lr
extend_with_gradient_accumulation_v2 = extend_with_gradient_accumulation
extend_with_layer_adaptation_v2 = extend_with_layer_adaptation
extend_with_lookahead_v2 = extend_with_lookahead
extend_with_lazy_optimization_v2 = extend_with_lazy_optimization
extend_with_exponential_moving_average_v2 = extend_with_exponential_moving_average


class AdaFactor:
    """Not offered: raises ``NotImplementedError`` (use ``keras.optimizers.Adafactor``)."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("AdaFactor is not offered by bert4x.bert4keras; "
                                  "keras.optimizers.Adafactor is Keras 3's")
