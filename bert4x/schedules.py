"""Learning-rate schedules: warm-up with linear decay, and bert4keras's piecewise-linear.

Both are Keras ``LearningRateSchedule`` subclasses registered for serialisation
under the package name ``"bert4x"``, so a compiled model saves and loads with them.
"""

import keras
from keras import ops

__all__ = ["PiecewiseLinear", "WarmupLinearDecay"]


def _piecewise_linear(step, points):
    """Linear interpolation through sorted ``(step, value)`` points, flat outside."""
    step = ops.cast(step, "float32")
    value = ops.cast(points[0][1], "float32")
    for (s0, v0), (s1, v1) in zip(points[:-1], points[1:]):
        fraction = ops.clip(ops.divide(ops.subtract(step, s0), float(s1 - s0)), 0.0, 1.0)
        value = ops.add(value, ops.multiply(float(v1 - v0), fraction))
    return value


@keras.saving.register_keras_serializable(package="bert4x")
class PiecewiseLinear(keras.optimizers.schedules.LearningRateSchedule):
    """bert4keras's piecewise-linear schedule: ``base_lr * f(step)``.

    `schedule` maps steps to multipliers, e.g. ``{1000: 1, 2000: 0.1}``: the multiplier
    rises linearly from 0 at step 0 (when `from_zero`) to 1 at step 1000, falls
    linearly to 0.1 at step 2000 and stays there. Steps are the optimiser's
    `iterations` (0 for the first update).

    Args:
        schedule: ``{step: multiplier}`` or a list of ``(step, multiplier)`` pairs.
        base_lr: learning rate the multipliers scale.
        from_zero: start from multiplier 0 at step 0 if `schedule` has no step 0
            (bert4keras's default); otherwise the first multiplier holds before its step.

    Example:
        >>> lr = PiecewiseLinear({1000: 1, 2000: 0.1}, base_lr=1e-4)
        >>> round(float(lr(500)), 10)
        5e-05
    """

    def __init__(self, schedule, base_lr=1.0, from_zero=True):
        pairs = schedule.items() if isinstance(schedule, dict) else schedule
        points = sorted((int(step), float(value)) for step, value in pairs)
        if not points:
            raise ValueError("schedule must have at least one (step, multiplier) point.")
        steps = [step for step, _ in points]
        if len(set(steps)) != len(steps) or steps[0] < 0:
            raise ValueError(f"schedule steps must be distinct and >= 0, got {steps}.")
        self.schedule = points
        self.base_lr = float(base_lr)
        self.from_zero = bool(from_zero)
        self._points = (
            [(0, 0.0)] + points if from_zero and points[0][0] != 0 else list(points)
        )

    def __call__(self, step):
        return ops.multiply(self.base_lr, _piecewise_linear(step, self._points))

    def get_config(self):
        # Pairs, not a dict: JSON would turn integer keys into strings.
        return {
            "schedule": [list(pair) for pair in self.schedule],
            "base_lr": self.base_lr,
            "from_zero": self.from_zero,
        }


@keras.saving.register_keras_serializable(package="bert4x")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak_lr`, then linear decay to `end_lr`.

    ``lr(t) = peak_lr * t / warmup_steps`` for ``t < warmup_steps``, then linear from
    `peak_lr` at `warmup_steps` to `end_lr` at `total_steps`, and `end_lr` after.
    ``t`` is the optimiser's `iterations` (0 for the first update), as in Google's BERT.

    Args:
        peak_lr: learning rate at the end of the warm-up.
        warmup_steps: length of the warm-up (0 for none).
        total_steps: step at which `end_lr` is reached.
        end_lr: final learning rate.

    Example:
        >>> lr = WarmupLinearDecay(1e-4, warmup_steps=100, total_steps=1100)
        >>> round(float(lr(600)), 10)
        5e-05
    """

    def __init__(self, peak_lr, warmup_steps, total_steps, end_lr=0.0):
        if not 0 <= warmup_steps <= total_steps or total_steps <= 0:
            raise ValueError(
                "Need 0 <= warmup_steps <= total_steps and total_steps > 0, got "
                f"warmup_steps={warmup_steps}, total_steps={total_steps}."
            )
        self.peak_lr = float(peak_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.end_lr = float(end_lr)
        points = [(self.warmup_steps, self.peak_lr)]
        if self.warmup_steps > 0:
            points.insert(0, (0, 0.0))
        if self.total_steps > self.warmup_steps:
            points.append((self.total_steps, self.end_lr))
        self._points = points

    def __call__(self, step):
        return _piecewise_linear(step, self._points)

    def get_config(self):
        return {
            "peak_lr": self.peak_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "end_lr": self.end_lr,
        }
