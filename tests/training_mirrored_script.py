"""The regularisers of bert4x.training under MirroredStrategy with 2 logical CPU devices.

Run in its own process by tests/test_training.py (logical devices must be configured
before TensorFlow runs any op). Each regulariser's step on a batch split over two
replicas is compared with its step on one device (which test_training.py checks against
the step written out); prints one JSON line with the largest absolute differences.
No XLA here: Keras's own plain step fails under MirroredStrategy on logical CPU devices
with ``jit_compile=True`` (TensorFlow's "tf.Variable on a different device" XLA issue).
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

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from _tiny_classifier import CLASSES, X, Y, compiled  # noqa: E402

from bert4x import training  # noqa: E402

CASES = {
    "fgm": ("sparse_categorical_crossentropy",
            lambda m: training.adversarial_training(m, epsilon=1.0)),
    "vat": ("kld", lambda m: training.virtual_adversarial_training(m, seed=5)),
    "gradient_penalty": ("sparse_categorical_crossentropy",
                         lambda m: training.gradient_penalty(m, epsilon=0.5)),
    "flooding": ("sparse_categorical_crossentropy", lambda m: training.flooding(m, 5.0)),
}


def step(loss, regularise, strategy=None):
    with strategy.scope() if strategy else tf.distribute.get_strategy().scope():
        model = compiled(loss=loss)
    regularise(model)
    y = np.eye(CLASSES, dtype="float32")[Y] if loss == "kld" else Y
    # A dataset, so that the strategy splits the batch (2 examples per replica).
    batches = tf.data.Dataset.from_tensor_slices((X, y)).batch(len(X))
    history = model.fit(batches, epochs=1, verbose=0).history
    return model.get_weights(), history["loss"][-1]


def main():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    result = {"replicas": strategy.num_replicas_in_sync, "max_diff": {}, "loss_diff": {}}
    for name, (loss, regularise) in CASES.items():
        one, one_loss = step(loss, regularise)
        two, two_loss = step(loss, regularise, strategy)
        result["max_diff"][name] = max(float(np.max(np.abs(a - b))) for a, b in zip(one, two))
        result["loss_diff"][name] = abs(one_loss - two_loss)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
