"""An exponential moving average of the weights, kept by a ``fit`` callback."""

import keras
import numpy as np
from keras import ops

__all__ = ["ExponentialMovingAverage"]


class ExponentialMovingAverage(keras.callbacks.Callback):
    """Keeps an exponential moving average of the weights during `fit`.

    After each optimiser update (it watches `optimizer.iterations`, so micro-batches
    that update nothing are skipped): ``average = momentum * average + (1 - momentum)
    * weight``, starting from the weights at the start of training (so no bias
    correction is needed). Swapping is explicit: `apply_ema_weights()` backs up the
    current weights and writes the averages into the model, `reset_old_weights()`
    restores the backup; `averaged_weights()` does both around a ``with`` block.

    Keras optimisers also have ``use_ema=True`` with `finalize_variable_values`, but
    that overwrites the weights for good, with no way back to the trained ones; this
    callback keeps both.

    Args:
        momentum: weight of the old average, e.g. 0.999.
        include_non_trainable: also average non-trainable weights (e.g. batch-norm
            statistics); bert4keras averaged all weights.

    Example:
        >>> ema = ExponentialMovingAverage(0.999)
        >>> model.fit(data, epochs=3, callbacks=[ema])
        >>> with ema.averaged_weights():
        ...     model.evaluate(valid_data)
        >>> ema.apply_ema_weights(); model.save("best.keras"); ema.reset_old_weights()
    """

    def __init__(self, momentum=0.999, include_non_trainable=False):
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
        self.momentum = float(momentum)
        self.include_non_trainable = include_non_trainable
        self.averages = None
        self._weights = None
        self._old_values = None
        self._last_iteration = None

    def _tracked_weights(self):
        if self.include_non_trainable:
            return list(self.model.weights)
        return list(self.model.trainable_weights)

    def initialize(self, model=None):
        """Starts the averages at the model's current weights (done at first `fit`)."""
        if model is not None:
            self.set_model(model)
        self._weights = self._tracked_weights()
        self.averages = [
            keras.Variable(
                # A copy: on JAX the training step donates (frees) the weights' buffers.
                ops.copy(ops.convert_to_tensor(weight)),
                trainable=False,
                dtype=weight.dtype,
                name=f"ema_{i}",
            )
            for i, weight in enumerate(self._weights)
        ]

    def _iteration(self):
        optimizer = getattr(self.model, "optimizer", None)
        return None if optimizer is None else int(optimizer.iterations.numpy())

    def on_train_begin(self, logs=None):
        if self.averages is None:
            self.initialize()
        self._last_iteration = self._iteration()

    def on_train_batch_end(self, batch, logs=None):
        iteration = self._iteration()
        if iteration is not None and iteration == self._last_iteration:
            return
        self._last_iteration = iteration
        self.update()

    def update(self):
        """One averaging step: ``average <- m * average + (1 - m) * weight``."""
        if self.averages is None:
            raise ValueError("Call initialize(model) or fit with this callback first.")
        for average, weight in zip(self.averages, self._weights):
            average.assign(
                ops.add(
                    ops.multiply(average, self.momentum),
                    ops.multiply(ops.convert_to_tensor(weight), 1.0 - self.momentum),
                )
            )

    def apply_ema_weights(self):
        """Backs up the current weights and writes the averages into the model."""
        if self.averages is None:
            raise ValueError("No averages yet: train with this callback first.")
        if self._old_values is not None:
            raise ValueError(
                "The averaged weights are already in the model; call "
                "reset_old_weights() first."
            )
        self._old_values = [np.array(ops.convert_to_numpy(w)) for w in self._weights]
        for weight, average in zip(self._weights, self.averages):
            weight.assign(ops.copy(ops.convert_to_tensor(average)))

    def reset_old_weights(self):
        """Restores the weights backed up by `apply_ema_weights`."""
        if self._old_values is None:
            raise ValueError("apply_ema_weights() was not called; nothing to restore.")
        for weight, value in zip(self._weights, self._old_values):
            weight.assign(value)
        self._old_values = None

    def averaged_weights(self):
        """Context manager: averaged weights inside the block, trained ones after."""
        callback = self

        class _Swap:
            def __enter__(self):
                callback.apply_ema_weights()
                return callback.model

            def __exit__(self, *exc):
                callback.reset_old_weights()
                return False

        return _Swap()
