"""Gradient accumulation under MirroredStrategy with 2 logical CPU devices.

Run in its own process by tests/test_optimizers.py (logical devices must be configured
before TensorFlow runs any op). Prints one JSON line with the largest absolute
differences between accumulated training and one step per concatenated batch.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bert4x.optimizers import AdamW, GradientAccumulationModel, GradientAccumulator  # noqa: E402

VOCAB, LENGTH, HIDDEN, CLASSES = 11, 5, 6, 3
MICRO_STEPS, BATCH, UPDATES = 2, 8, 2


def build_model(initial=None):
    token_ids = keras.Input((LENGTH,), dtype="int32")
    hidden = keras.layers.Embedding(VOCAB, HIDDEN, name="Embedding-Token")(token_ids)
    hidden = keras.layers.Dense(HIDDEN, activation="tanh", name="Transformer-0-FeedForward")(hidden)
    hidden = keras.layers.LayerNormalization(name="Transformer-0-FeedForward-Norm")(hidden)
    pooled = keras.layers.GlobalAveragePooling1D()(hidden)
    logits = keras.layers.Dense(CLASSES, name="Classifier")(pooled)
    model = keras.Model(token_ids, logits)
    if initial is not None:
        model.set_weights(initial)
    return model


def make_optimizer():
    return AdamW(learning_rate=0.05, weight_decay=0.1)


rng = np.random.default_rng(0)
x = rng.integers(0, VOCAB, size=(BATCH * UPDATES, LENGTH)).astype("int32")
y = rng.integers(0, CLASSES, size=(BATCH * UPDATES,)).astype("int32")
initial = build_model().get_weights()
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

# Reference: one plain step per whole batch, no strategy.
reference = build_model(initial)
reference_optimizer = make_optimizer()
for update in range(UPDATES):
    xb, yb = x[update * BATCH:(update + 1) * BATCH], y[update * BATCH:(update + 1) * BATCH]
    with tf.GradientTape() as tape:
        loss = loss_fn(yb, reference(xb, training=True))
    reference_optimizer.apply(tape.gradient(loss, reference.trainable_variables),
                              reference.trainable_variables)
expected = [w.numpy() for w in reference.weights]

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
result = {"replicas": strategy.num_replicas_in_sync}

# 1. Custom loop: GradientAccumulator inside strategy.run.
with strategy.scope():
    model = build_model(initial)
    optimizer = make_optimizer()
    optimizer.build(model.trainable_variables)
    accumulator = GradientAccumulator(model.trainable_variables)
micro_global = BATCH // MICRO_STEPS
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(micro_global)
iterator = iter(strategy.experimental_distribute_dataset(dataset))


def micro_step(xb, yb):
    with tf.GradientTape() as tape:
        per_example = keras.losses.sparse_categorical_crossentropy(
            yb, model(xb, training=True), from_logits=True
        )
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=micro_global)
    accumulator.accumulate(tape.gradient(loss, model.trainable_variables))


@tf.function
def train_step(iterator):
    for _ in range(MICRO_STEPS):
        strategy.run(micro_step, args=next(iterator))
    strategy.run(accumulator.apply, args=(optimizer,))


for _ in range(UPDATES):
    train_step(iterator)
result["custom_loop_max_diff"] = max(
    float(np.max(np.abs(w.numpy() - e))) for w, e in zip(model.weights, expected)
)
result["custom_loop_iterations"] = int(optimizer.iterations.numpy())

# 2. model.fit with GradientAccumulationModel.
with strategy.scope():
    model = build_model(initial)
    trainer = GradientAccumulationModel(model, accumulation_steps=MICRO_STEPS)
    trainer.compile(make_optimizer(), loss_fn, jit_compile=False)
history = trainer.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
result["fit_max_diff"] = max(
    float(np.max(np.abs(w.numpy() - e))) for w, e in zip(model.weights, expected)
)
result["fit_iterations"] = int(trainer.optimizer.iterations.numpy())
result["fit_loss_finite"] = bool(np.isfinite(history.history["loss"][0]))
print(json.dumps(result))
