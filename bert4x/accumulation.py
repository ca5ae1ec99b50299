"""Gradient accumulation that works under ``tf.distribute`` strategies.

`GradientAccumulator` sums gradients over micro-batches and applies their mean in
one update; `GradientAccumulationModel` wraps a model so that ``fit`` does it.
"""

import keras
from keras import ops

__all__ = ["GradientAccumulator", "GradientAccumulationModel"]


def densify(gradient):
    """Turns a TensorFlow `IndexedSlices` gradient into a dense tensor (else unchanged)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return tf.convert_to_tensor(gradient)
    return gradient


class GradientAccumulator:
    """Sums gradients over micro-batches and applies their weighted mean in one update.

    Why not Keras's `gradient_accumulation_steps`: it decides inside the replica
    function, with a `cond`, whether to run the optimiser's update, and the update's
    cross-replica all-reduce cannot run inside a `cond` under `tf.distribute`
    (``RuntimeError: merge_call called while defining a new graph``, Keras 3.15 /
    TF 2.21). Here no update is conditional: the caller decides *outside* the replica
    function how many micro-batches make one update.

    The sums are Keras variables with ``synchronization="on_read"`` and
    ``aggregation="sum"``: under a `tf.distribute` strategy each replica keeps its
    own local sum (no communication per micro-batch), and `apply` hands the local mean
    to `optimizer.apply`, whose all-reduce combines the replicas once per update. The
    optimiser's `iterations` (and so its schedule) advance once per `apply`.

    Create it under the strategy's scope; call `accumulate` and `apply` inside
    `strategy.run`. Scale the loss as usual for `tf.distribute` (Keras's
    `model.compute_loss` does; in a custom loop use e.g.
    `tf.nn.compute_average_loss(per_example, global_batch_size=micro_batch_global)`).

    Args:
        variables: the trainable variables the gradients belong to.
        name: name scope of the accumulator variables.

    Example (custom loop, TensorFlow backend, k micro-batches per update)::

        with strategy.scope():
            model = ...; optimizer = AdamW(1e-4)
            optimizer.build(model.trainable_variables)
            accumulator = GradientAccumulator(model.trainable_variables)

        def micro_step(x, y):                     # runs on each replica
            with tf.GradientTape() as tape:
                per_example = loss_fn(y, model(x, training=True))
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=B)
            accumulator.accumulate(tape.gradient(loss, model.trainable_variables))

        @tf.function
        def train_step(iterator):                 # one optimiser update
            for _ in range(k):
                strategy.run(micro_step, args=next(iterator))
            strategy.run(accumulator.apply, args=(optimizer,))
    """

    def __init__(self, variables, name="gradient_accumulator"):
        self.variables = list(variables)
        if not self.variables:
            raise ValueError("GradientAccumulator needs at least one variable.")
        self._missing = set()
        with keras.name_scope(name):
            self.sums = [
                keras.Variable(
                    "zeros",
                    shape=tuple(v.shape),
                    dtype=v.dtype,
                    trainable=False,
                    aggregation="sum",
                    synchronization="on_read",
                    name=f"sum_{i}",
                )
                for i, v in enumerate(self.variables)
            ]
            self.total_weight = keras.Variable(
                0.0,
                dtype="float32",
                trainable=False,
                aggregation="sum",
                synchronization="on_read",
                name="total_weight",
            )

    def accumulate(self, gradients, weight=1.0):
        """Adds ``weight * gradient`` to each sum and `weight` to the total weight.

        Args:
            gradients: one gradient (or None) per variable, in order.
            weight: weight of this micro-batch, e.g. its number of examples when
                micro-batches differ in size; 1 for a plain mean.
        """
        gradients = list(gradients)
        if len(gradients) != len(self.sums):
            raise ValueError(
                f"Got {len(gradients)} gradients for {len(self.sums)} variables."
            )
        weight = ops.cast(weight, "float32")
        for index, (total, gradient) in enumerate(zip(self.sums, gradients)):
            if gradient is None:
                # Decided when tracing: a variable without gradient stays untouched.
                self._missing.add(index)
                continue
            gradient = densify(gradient)
            total.assign_add(ops.multiply(gradient, ops.cast(weight, total.dtype)))
        self.total_weight.assign_add(weight)

    def gradients(self):
        """The weighted mean gradients accumulated so far (this replica's, in a replica)."""
        total_weight = ops.maximum(ops.convert_to_tensor(self.total_weight), 1e-30)
        return [
            None
            if index in self._missing
            else ops.divide(ops.convert_to_tensor(total), ops.cast(total_weight, total.dtype))
            for index, total in enumerate(self.sums)
        ]

    def apply(self, optimizer):
        """Applies the mean gradient with `optimizer.apply`, then resets the sums."""
        optimizer.apply(self.gradients(), self.variables)
        self.reset()

    def reset(self):
        """Sets the sums and the total weight back to zero."""
        for total in self.sums:
            total.assign(ops.zeros(total.shape, dtype=total.dtype))
        self.total_weight.assign(0.0)


@keras.saving.register_keras_serializable(package="bert4x")
class GradientAccumulationModel(keras.Model):
    """Wraps a model so that `fit` splits each batch into micro-batches.

    Each training step cuts the batch it receives into `accumulation_steps`
    micro-batches, runs forward and backward on one at a time (in a `tf.while_loop`,
    so only one micro-batch's activations are alive), accumulates the gradients with a
    `GradientAccumulator` weighted by micro-batch size, and makes one optimiser
    update. Feed it batches of ``accumulation_steps * micro_batch_size``: it computes
    the update of the whole batch with the memory of a micro-batch. It works under
    `tf.distribute.MirroredStrategy` (each replica splits its shard).

    The update equals one step on the whole batch when the loss is a mean over
    examples (Keras's default reduction); with losses normalised differently (e.g. by
    the number of masked tokens) it is the example-weighted mean of micro-batch losses.

    TensorFlow backend only. On JAX and PyTorch, where no `tf.distribute` is involved,
    the optimisers' own ``gradient_accumulation_steps=k`` works (one update every k
    `fit` batches). Save and export the wrapped `model`, not the wrapper.

    Args:
        model: the Keras model to train (its weights are shared, not copied).
        accumulation_steps: number of micro-batches per batch.

    Example:
        >>> trainer = GradientAccumulationModel(model, accumulation_steps=4)
        >>> trainer.compile(AdamW(2e-5), "sparse_categorical_crossentropy")
        >>> trainer.fit(dataset_with_batches_of_128)  # 4 micro-batches of 32
        >>> model.save("classifier.keras")
    """

    def __init__(self, model, accumulation_steps, **kwargs):
        if keras.backend.backend() != "tensorflow":
            raise NotImplementedError(
                "GradientAccumulationModel needs the TensorFlow backend (it exists for "
                "tf.distribute); on JAX/PyTorch use the optimizer's "
                "gradient_accumulation_steps argument."
            )
        if int(accumulation_steps) < 1:
            raise ValueError(
                f"accumulation_steps must be >= 1, got {accumulation_steps}."
            )
        kwargs.setdefault("name", f"{model.name}_accumulated")
        super().__init__(**kwargs)
        self.model = model
        self.accumulation_steps = int(accumulation_steps)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self._accumulator = None

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def make_train_function(self, force=False):
        # The accumulator's variables must exist before tracing and live under the
        # model's strategy, so that each replica gets its own local sums.
        variables = self.trainable_variables
        if self._accumulator is None or [id(v) for v in self._accumulator.variables] != [
            id(v) for v in variables
        ]:
            with self.distribute_strategy.scope():
                self._accumulator = GradientAccumulator(
                    variables, name=f"{self.name}_gradients"
                )
            force = True
        return super().make_train_function(force=force)

    def _replicas(self):
        import tensorflow as tf

        return tf.distribute.get_strategy().num_replicas_in_sync

    def train_step(self, data):
        import tensorflow as tf

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        accumulator = self._accumulator
        variables = accumulator.variables
        batch_size = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
        micro_size = (batch_size + self.accumulation_steps - 1) // self.accumulation_steps
        micro_size = tf.maximum(micro_size, 1)
        micro_count = (batch_size + micro_size - 1) // micro_size

        def cut(tensor, start, stop):
            return None if tensor is None else tensor[start:stop]

        def body(index):
            start = index * micro_size
            stop = tf.minimum(start + micro_size, batch_size)
            part = tf.nest.map_structure(
                lambda t: cut(t, start, stop), (x, y, sample_weight)
            )
            x_part, y_part, weight_part = part
            with tf.GradientTape() as tape:
                y_pred = self(x_part, training=True)
                loss = self.compute_loss(
                    x=x_part, y=y_part, y_pred=y_pred, sample_weight=weight_part
                )
                scaled_loss = self.optimizer.scale_loss(loss)
            gradients = tape.gradient(scaled_loss, variables)
            examples = tf.cast(stop - start, "float32")
            accumulator.accumulate(gradients, weight=examples)
            # compute_loss scales by 1 / replicas for the all-reduce; undo for the log.
            self.loss_tracker.update_state(
                loss * self._replicas(), sample_weight=examples
            )
            self.compute_metrics(x_part, y_part, y_pred, sample_weight=weight_part)
            return index + 1

        tf.while_loop(lambda index: index < micro_count, body, [tf.constant(0)])
        accumulator.apply(self.optimizer)
        return self.get_metrics_result()

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=False)
        loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
        first = next(t for t in keras.tree.flatten(x) if t is not None)
        self.loss_tracker.update_state(
            loss * self._replicas(), sample_weight=ops.shape(first)[0]
        )
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def get_config(self):
        return {
            "model": keras.saving.serialize_keras_object(self.model),
            "accumulation_steps": self.accumulation_steps,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(
            config["model"], custom_objects=custom_objects
        )
        return cls(**config)
