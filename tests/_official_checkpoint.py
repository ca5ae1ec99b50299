"""Official-layout checkpoints for the family tests, written with TensorFlow's own
``SaveV2`` rather than bert4x's writer, so that loading them tests the loader alone."""

import json
import os

import tensorflow as tf


def write_official(folder, weights, config, config_name="bert_config.json",
                   checkpoint_name="bert_model.ckpt"):
    """``weights`` (``{name: array}``) as ``folder/checkpoint_name``, ``config`` as
    ``folder/config_name``; returns the checkpoint prefix."""
    os.makedirs(folder, exist_ok=True)
    names = sorted(weights)
    prefix = os.path.join(folder, checkpoint_name)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(weights[name]) for name in names])
    with open(os.path.join(folder, config_name), "w") as file:
        json.dump(config, file)
    return prefix
