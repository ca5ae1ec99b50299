"""Optimisers, learning-rate schedules and training helpers on the public Keras 3 API.

Everything here subclasses or wraps public Keras classes (`keras.optimizers.Adam`,
`keras.optimizers.Optimizer`, `keras.optimizers.schedules.LearningRateSchedule`,
`keras.callbacks.Callback`, `keras.Model`) through their documented extension points
(`build`, `update_step`, `get_config`, `train_step`), and is registered for
serialisation under the package name ``"bert4x"``, so a model compiled with these
optimisers saves and loads with `model.save` / `keras.models.load_model`.

Contents:

- `AdamW`: Adam with decoupled weight decay that skips variables by name pattern
  (LayerNorm and bias by default), per-variable learning-rate multipliers and a
  per-variable gradient transform.
- `Lamb`: LAMB (layer-wise trust ratio) with the same per-variable features.
- `WarmupLinearDecay`, `PiecewiseLinear`: learning-rate schedules (`bert4x.schedules`).
- `layerwise_lr_multipliers`: multipliers for layer-wise learning-rate decay.
- `ClipByNorm`: a serialisable gradient transform clipping each gradient by its own norm.
- `GradientAccumulator`, `GradientAccumulationModel`: gradient accumulation over
  micro-batches that works under `tf.distribute` strategies (Keras's own
  `gradient_accumulation_steps` does not: see `GradientAccumulator`; `bert4x.accumulation`).
- `ExponentialMovingAverage`: a callback keeping an average of the weights, with an
  explicit swap in (`apply_ema_weights`) and out (`reset_old_weights`)
  (`bert4x.moving_average`).

How a variable is matched by a pattern: patterns are regular expressions searched
(`re.search`) in the variable's `path` (for example
``"Transformer-3-FeedForward/kernel"``), which names the layer as well as the variable;
Keras's own `exclude_from_weight_decay(var_names=...)` matches only `variable.name`
(``"kernel"``, ``"gamma"``), which cannot tell a LayerNorm's ``gamma`` from anything else
by layer name.
"""

import re

import keras
from keras import ops

# Schedules, accumulation and averaging live in their own modules; importable from here.
from bert4x.accumulation import GradientAccumulationModel, GradientAccumulator, densify
from bert4x.moving_average import ExponentialMovingAverage
from bert4x.schedules import PiecewiseLinear, WarmupLinearDecay

__all__ = [
    "AdamW",
    "Lamb",
    "WarmupLinearDecay",
    "PiecewiseLinear",
    "layerwise_lr_multipliers",
    "ClipByNorm",
    "GradientAccumulator",
    "GradientAccumulationModel",
    "ExponentialMovingAverage",
]

#: Default patterns of variables that get no weight decay: every normalisation layer
#: (bert4x names them ``...-Norm``, Hugging Face ``LayerNorm``, Keras
#: ``layer_normalization``) and every bias.
DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY = ("Norm", "layer_norm", "bias")


#: Where `AdamW` runs TensorFlow's fused ``ResourceApplyAdam`` kernel: the device types
#: whose TensorFlow builds register it (CPU, GPU; TPU through XLA) and the dtypes it was
#: checked on against the plain update. Elsewhere (a PluggableDevice from a vendor
#: plug-in, float16/bfloat16 variables, whose ``beta_2 ** t`` rounds to 1 in bfloat16)
#: the update is Keras's element-wise Adam.
FUSED_ADAM_DEVICE_TYPES = ("CPU", "GPU", "TPU")
FUSED_ADAM_DTYPES = ("float32", "float64")


def variable_path(variable):
    """The name used for pattern matching: Keras's `path`, else the plain `name`."""
    return getattr(variable, "path", None) or variable.name


def trust_ratio(weight, update):
    """LAMB's layer-wise trust ratio ``||weight|| / ||update||``, 1 if either norm is 0.

    Norms are over the whole variable (Frobenius). `Lamb` scales each variable's step
    by it; bert4keras's layer adaptation uses the same ratio.
    """
    weight_norm = ops.sqrt(ops.sum(ops.square(weight)))
    update_norm = ops.sqrt(ops.sum(ops.square(update)))
    return ops.where(
        ops.logical_and(ops.greater(weight_norm, 0), ops.greater(update_norm, 0)),
        ops.divide(weight_norm, ops.maximum(update_norm, 1e-30)),
        ops.ones_like(weight_norm),
    )


def _compile_patterns(patterns, what):
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as error:
            raise ValueError(
                f"{what}: {pattern!r} is not a valid regular expression ({error})."
            ) from None
    return compiled


class _ResolvedRules:
    """Per-variable settings, in the optimizer's variable order."""

    def __init__(self, variables, multipliers, decays):
        self.variables = tuple(variables)
        self.multipliers = tuple(multipliers)
        self.decays = tuple(decays)
        self.adapts = None


class _PerVariableRules:
    """Per-variable learning-rate multipliers, weight-decay exclusion and gradient hook.

    Mixed into a Keras optimizer. The rules are resolved once in `build`, from the
    Keras variables' paths, and looked up by variable index in `update_step`, which is
    where the TensorFlow backend calls us with the raw (possibly mirrored) variable.
    """

    def _init_rules(
        self, weight_decay, exclude_from_weight_decay, lr_multipliers, gradient_transform
    ):
        if weight_decay is not None and weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
        self.weight_decay_rate = float(weight_decay or 0.0)
        self.exclude_patterns = list(exclude_from_weight_decay or [])
        self._exclude_regexes = _compile_patterns(
            self.exclude_patterns, "exclude_from_weight_decay"
        )
        self._excluded_variable_ids = set()
        self.lr_multipliers = dict(lr_multipliers or {})
        for pattern, multiplier in self.lr_multipliers.items():
            if not isinstance(multiplier, (int, float)) or multiplier < 0:
                raise ValueError(
                    f"lr_multipliers[{pattern!r}] must be a number >= 0, got "
                    f"{multiplier!r}."
                )
        self._multiplier_regexes = [
            (regex, float(self.lr_multipliers[pattern]))
            for pattern, regex in zip(
                self.lr_multipliers,
                _compile_patterns(list(self.lr_multipliers), "lr_multipliers"),
            )
        ]
        if gradient_transform is not None and not callable(gradient_transform):
            raise ValueError(
                "gradient_transform must be a callable (gradient, variable) -> "
                f"gradient, got {gradient_transform!r}."
            )
        self.gradient_transform = gradient_transform

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Excludes variables from weight decay (must be called before `build`).

        Overrides Keras's method of the same name so that both routes configure the
        one rule set of this optimiser: `var_names` are regular expressions searched in
        each variable's `path` and replace the current patterns; `var_list` adds
        explicit variables.

        Args:
            var_list: variables to exclude.
            var_names: patterns to exclude, e.g. ``["Norm", "bias"]``.
        """
        if self.built:
            raise ValueError(
                "exclude_from_weight_decay() must be called before the optimizer is "
                "built (before its first update or `optimizer.build(variables)`)."
            )
        if var_names is not None:
            self.exclude_patterns = list(var_names)
            self._exclude_regexes = _compile_patterns(var_names, "var_names")
        self._excluded_variable_ids = {id(v) for v in (var_list or [])}

    def _resolve_rules(self, variables):
        multipliers, decays = [], []
        for variable in variables:
            path = variable_path(variable)
            multiplier = 1.0
            for regex, value in self._multiplier_regexes:
                if regex.search(path):
                    multiplier = value
                    break
            decays.append(
                self.weight_decay_rate > 0
                and not (
                    id(variable) in self._excluded_variable_ids
                    or any(regex.search(path) for regex in self._exclude_regexes)
                )
            )
            multipliers.append(multiplier)
        # A plain holder, not lists on the optimizer: Keras tracks lists of variables
        # assigned to an optimizer as its own state (they would be saved twice and,
        # on JAX, donated twice).
        self._rules = _ResolvedRules(variables, multipliers, decays)

    def learning_rate_multiplier(self, variable):
        """The learning-rate multiplier this optimiser uses for `variable` (after build)."""
        return self._rules.multipliers[self._index_of(variable)]

    def uses_weight_decay(self, variable):
        """Whether this optimiser decays `variable` (after build)."""
        return self._rules.decays[self._index_of(variable)]

    def _index_of(self, variable):
        # `_get_variable_index` is the lookup the Keras base-class documentation uses
        # in its custom-optimizer example; it maps mirrored and raw TF variables too.
        return self._get_variable_index(variable)

    def _prepare_update(self, gradient, variable, learning_rate):
        """Applies the gradient hook and multiplier; returns (gradient, lr, decays)."""
        index = self._index_of(variable)
        # Densify IndexedSlices (embedding lookups): Keras's sparse arithmetic applies
        # Adam's non-linear update per repeated row instead of to the summed gradient.
        gradient = densify(gradient)
        if self.gradient_transform is not None:
            gradient = self.gradient_transform(gradient, self._rules.variables[index])
        multiplier = self._rules.multipliers[index]
        if multiplier != 1.0:
            learning_rate = ops.multiply(
                ops.cast(learning_rate, variable.dtype),
                ops.cast(multiplier, variable.dtype),
            )
        return gradient, learning_rate, self._rules.decays[index]

    def _rules_config(self):
        return {
            "weight_decay": self.weight_decay_rate,
            "exclude_from_weight_decay": list(self.exclude_patterns),
            "lr_multipliers": dict(self.lr_multipliers),
            "gradient_transform": (
                None
                if self.gradient_transform is None
                else keras.saving.serialize_keras_object(self.gradient_transform)
            ),
        }


def _deserialize_transform(config):
    transform = config.get("gradient_transform")
    if isinstance(transform, dict):
        config["gradient_transform"] = keras.saving.deserialize_keras_object(transform)
    return config


@keras.saving.register_keras_serializable(package="bert4x")
class AdamW(_PerVariableRules, keras.optimizers.Adam):
    """Adam with decoupled weight decay, per-variable learning rates and gradient hook.

    Wraps `keras.optimizers.Adam`: the moment estimates, bias correction, `amsgrad`,
    clipping (`clipnorm`, `global_clipnorm`, `clipvalue`), `loss_scale_factor` and
    Keras's own `use_ema` all come from Keras unchanged. What this class adds in
    `update_step`, per variable:

    1. ``gradient = gradient_transform(gradient, variable)`` if a transform is given
       (after Keras's clipping and, under `tf.distribute`, after the all-reduce);
    2. ``lr = learning_rate * multiplier`` with the multiplier of the first pattern in
       `lr_multipliers` found in the variable's path (1 if none);
    3. decoupled weight decay ``w <- w - lr * weight_decay * w`` unless the variable's
       path matches a pattern of `exclude_from_weight_decay`;
    4. Keras's Adam step with ``lr`` (on TensorFlow, for float32/float64 variables on
       CPU, GPU or TPU, as the fused ``ResourceApplyAdam`` kernel: the same formula in
       one pass; see `uses_fused_adam`).

    Sparse gradients (`tf.IndexedSlices` from embedding lookups) are made dense first,
    so the update is textbook (dense) Adam even when a token repeats in the batch.

    The weight decay is done here rather than by Keras's `AdamW` because Keras's
    exclusion matches only `variable.name` (``"gamma"``, ``"kernel"``), not the layer,
    and because its decay ignores per-variable learning rates (layer-wise decay must
    slow the decay of lower layers too). With no multiplier and no exclusion, one step
    equals `keras.optimizers.AdamW` with the same arguments.

    Args:
        learning_rate: float, `LearningRateSchedule` or callable.
        weight_decay: decoupled weight-decay rate (0 or None for none).
        beta_1, beta_2, epsilon, amsgrad: as in `keras.optimizers.Adam`.
        exclude_from_weight_decay: regular expressions; variables whose path matches
            one get no decay. Defaults to ``("Norm", "layer_norm", "bias")``.
        lr_multipliers: ``{pattern: multiplier}``; the first matching pattern (in dict
            order) sets the variable's learning-rate multiplier.
        gradient_transform: callable ``(gradient, variable) -> gradient``; `variable`
            is the Keras variable (with `path`). Register it with
            `keras.saving.register_keras_serializable` (or use `ClipByNorm`) for the
            optimiser to be saved with the model.
        **kwargs: other `keras.optimizers.Optimizer` arguments.

    Example:
        >>> optimizer = AdamW(
        ...     learning_rate=WarmupLinearDecay(2e-5, warmup_steps=100, total_steps=1000),
        ...     weight_decay=0.01,
        ...     lr_multipliers={"^Classifier": 10.0},
        ...     gradient_transform=ClipByNorm(1.0),
        ... )
    """

    def __init__(
        self,
        learning_rate=0.001,
        weight_decay=0.01,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-6,
        amsgrad=False,
        exclude_from_weight_decay=DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY,
        lr_multipliers=None,
        gradient_transform=None,
        **kwargs,
    ):
        # Keras's own decay stays off (None): we apply it per variable in update_step.
        kwargs.pop("weight_decay", None)
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=amsgrad,
            weight_decay=None,
            **kwargs,
        )
        self._init_rules(
            weight_decay, exclude_from_weight_decay, lr_multipliers, gradient_transform
        )

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._resolve_rules(var_list)

    def update_step(self, gradient, variable, learning_rate):
        gradient, learning_rate, decays = self._prepare_update(
            gradient, variable, learning_rate
        )
        if decays:
            rate = ops.multiply(
                ops.cast(learning_rate, variable.dtype),
                ops.cast(self.weight_decay_rate, variable.dtype),
            )
            self.assign_sub(variable, ops.multiply(variable, rate))
        if self.uses_fused_adam(variable):
            self._fused_adam_step(gradient, variable, learning_rate)
        else:
            super().update_step(gradient, variable, learning_rate)

    def uses_fused_adam(self, variable):
        """Whether `variable` is updated by TensorFlow's fused Adam kernel.

        True on the TensorFlow backend without `amsgrad` for a float32/float64
        variable on a device type of `FUSED_ADAM_DEVICE_TYPES` (an unplaced variable
        counts as the default device); otherwise the update is Keras's plain Adam
        step (the same formula, element-wise).
        """
        if keras.backend.backend() != "tensorflow" or self.amsgrad:
            return False
        import tensorflow as tf

        value = variable.value if isinstance(variable, keras.Variable) else variable
        if tf.as_dtype(value.dtype).name not in FUSED_ADAM_DTYPES:
            return False
        device_type = tf.DeviceSpec.from_string(value.device or "").device_type
        return device_type is None or device_type in FUSED_ADAM_DEVICE_TYPES

    def _fused_adam_step(self, gradient, variable, learning_rate):
        """Keras's Adam step as TensorFlow's fused ``ResourceApplyAdam`` kernel.

        The same formula (bias-corrected step size, epsilon added to the square
        root) in one pass over the variable and its two moments instead of about
        ten element-wise kernels; the update is memory-bound, so this cuts the
        optimiser's share of a pretraining step several-fold on CPU.
        """
        import tensorflow as tf

        index = self._index_of(variable)
        if isinstance(variable, keras.Variable):
            variable = variable.value
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].value.handle,
            v=self._velocities[index].value.handle,
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step),
            beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
            lr=tf.cast(learning_rate, dtype),
            beta1=tf.cast(self.beta_1, dtype),
            beta2=tf.cast(self.beta_2, dtype),
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )

    def get_config(self):
        config = super().get_config()
        config.update(self._rules_config())
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return super().from_config(_deserialize_transform(dict(config)), custom_objects)


@keras.saving.register_keras_serializable(package="bert4x")
class Lamb(_PerVariableRules, keras.optimizers.Optimizer):
    """LAMB: Adam-style update rescaled per variable by a trust ratio.

    For each variable ``w`` at step ``t`` (counting from 1), with gradient ``g``::

        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        r = (m / (1 - beta_1**t)) / (sqrt(v / (1 - beta_2**t)) + epsilon)
        r = r + weight_decay * w            # unless w is excluded from decay
        ratio = ||w|| / ||r||  if both > 0 else 1   # 1 if excluded from adaptation
        w = w - lr * multiplier * ratio * r

    This is the update of You et al. (2019) and of Google's BERT LAMB, where the weight
    decay sits inside the trust ratio and LayerNorm/bias variables are excluded from
    both decay and adaptation. `keras.optimizers.Lamb` is not wrapped because it applies
    decay outside the ratio and cannot exclude variables from adaptation; the base
    `keras.optimizers.Optimizer` (slots, clipping, schedules, EMA, loss scaling) is used
    as is.

    Args:
        learning_rate: float, `LearningRateSchedule` or callable.
        weight_decay: weight-decay rate inside the trust ratio.
        beta_1, beta_2, epsilon: moment decay rates and the denominator's epsilon.
        exclude_from_weight_decay: patterns of variables without decay (see `AdamW`).
        exclude_from_layer_adaptation: patterns of variables updated with ratio 1;
            defaults to `exclude_from_weight_decay`, as in Google's implementation.
        lr_multipliers: ``{pattern: multiplier}`` (see `AdamW`).
        gradient_transform: callable ``(gradient, variable) -> gradient``.
        **kwargs: other `keras.optimizers.Optimizer` arguments.

    Example:
        >>> optimizer = Lamb(learning_rate=1e-3, weight_decay=0.01)
    """

    def __init__(
        self,
        learning_rate=0.001,
        weight_decay=0.01,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-6,
        exclude_from_weight_decay=DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY,
        exclude_from_layer_adaptation=None,
        lr_multipliers=None,
        gradient_transform=None,
        **kwargs,
    ):
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, weight_decay=None, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self._init_rules(
            weight_decay, exclude_from_weight_decay, lr_multipliers, gradient_transform
        )
        self.exclude_from_layer_adaptation = (
            None
            if exclude_from_layer_adaptation is None
            else list(exclude_from_layer_adaptation)
        )

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"]
        )
        self._resolve_rules(var_list)
        adaptation_patterns = (
            self.exclude_patterns
            if self.exclude_from_layer_adaptation is None
            else self.exclude_from_layer_adaptation
        )
        regexes = _compile_patterns(adaptation_patterns, "exclude_from_layer_adaptation")
        self._rules.adapts = [
            not any(regex.search(variable_path(v)) for regex in regexes)
            for v in var_list
        ]

    def update_step(self, gradient, variable, learning_rate):
        gradient, learning_rate, decays = self._prepare_update(
            gradient, variable, learning_rate
        )
        index = self._index_of(variable)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1 = ops.cast(self.beta_1, dtype)
        beta_2 = ops.cast(self.beta_2, dtype)
        m = self._momentums[index]
        v = self._velocities[index]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - beta_1))
        self.assign_add(
            v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - beta_2)
        )
        m_hat = ops.divide(m, 1 - ops.power(beta_1, step))
        v_hat = ops.divide(v, 1 - ops.power(beta_2, step))
        update = ops.divide(m_hat, ops.add(ops.sqrt(v_hat), self.epsilon))
        if decays:
            update = ops.add(
                update, ops.multiply(ops.cast(self.weight_decay_rate, dtype), variable)
            )
        if self._rules.adapts[index]:
            lr = ops.multiply(lr, trust_ratio(variable, update))
        self.assign_sub(variable, ops.multiply(lr, update))

    def get_config(self):
        config = super().get_config()
        config.update(self._rules_config())
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "exclude_from_layer_adaptation": self.exclude_from_layer_adaptation,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return super().from_config(_deserialize_transform(dict(config)), custom_objects)


@keras.saving.register_keras_serializable(package="bert4x")
class ClipByNorm:
    """Gradient transform clipping each variable's gradient by its own L2 norm.

    ``g <- g * min(1, max_norm / ||g||)``. Unlike Keras's `clipnorm` (which clips each
    gradient *before* the cross-replica sum under `tf.distribute`), used as
    `gradient_transform` it sees the summed gradient.

    Args:
        max_norm: the largest norm a gradient may keep.

    Example:
        >>> optimizer = AdamW(1e-3, gradient_transform=ClipByNorm(1.0))
    """

    def __init__(self, max_norm):
        if max_norm <= 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}.")
        self.max_norm = float(max_norm)

    def __call__(self, gradient, variable):
        gradient = ops.convert_to_tensor(gradient)
        norm = ops.sqrt(ops.sum(ops.square(gradient)))
        scale = ops.minimum(
            ops.cast(1.0, gradient.dtype),
            ops.divide(ops.cast(self.max_norm, gradient.dtype), ops.maximum(norm, 1e-30)),
        )
        return ops.multiply(gradient, scale)

    def get_config(self):
        return {"max_norm": self.max_norm}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def layerwise_lr_multipliers(
    model,
    decay=0.9,
    num_layers=None,
    layer_pattern=r"Transformer-(\d+)-",
    embedding_pattern=r"(?:^|/)Embedding-",
):
    """Learning-rate multipliers for layer-wise decay (lower layers learn slower).

    With ``N`` Transformer layers, variables of layer ``i`` (0 = lowest) get
    ``decay ** (N - i)``, embeddings ``decay ** (N + 1)`` (one step below layer 0, as
    in ELECTRA/BEiT), and everything else (pooler, task heads) keeps 1.

    Args:
        model: a built Keras model (or any object with `trainable_variables`).
        decay: multiplier per layer, e.g. 0.9.
        num_layers: ``N``; defaults to the largest layer index found plus one.
        layer_pattern: regular expression with one group capturing the layer index,
            searched in each variable's path. bert4x names layers
            ``Transformer-{i}-...``.
        embedding_pattern: regular expression marking embedding variables.

    Returns:
        ``{pattern: multiplier}`` for `AdamW(lr_multipliers=...)` / `Lamb`; the
        embedding pattern comes first, then one anchored pattern per layer.

    Example:
        >>> multipliers = layerwise_lr_multipliers(model, decay=0.8)
        >>> optimizer = AdamW(2e-5, lr_multipliers=multipliers)
    """
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}.")
    layer_regex = re.compile(layer_pattern)
    if layer_regex.groups != 1:
        raise ValueError(
            f"layer_pattern {layer_pattern!r} must have exactly one group capturing "
            "the layer index."
        )
    layers = {}
    for variable in model.trainable_variables:
        match = layer_regex.search(variable_path(variable))
        if match:
            # The matched text (e.g. "Transformer-3-") is the layer's prefix; anchor it
            # at the path start or after a "/" and forbid a following digit so that
            # layer 1 never captures layer 10.
            prefix = re.escape(match.group(0))
            layers[int(match.group(1))] = rf"(?:^|/){prefix}(?!\d)"
    if not layers:
        raise ValueError(
            f"No trainable variable path matches layer_pattern {layer_pattern!r}; "
            f"first paths: {[variable_path(v) for v in model.trainable_variables[:5]]}."
        )
    if num_layers is None:
        num_layers = max(layers) + 1
    elif max(layers) >= num_layers:
        raise ValueError(
            f"num_layers={num_layers} but the model has a layer {max(layers)}."
        )
    multipliers = {embedding_pattern: float(decay ** (num_layers + 1))}
    for index in sorted(layers):
        multipliers[layers[index]] = float(decay ** (num_layers - index))
    return multipliers
