"""Runs the model-family jobs of ``test_families.py`` under one Keras backend.

Each job builds a model with ``build_transformer_model(**kwargs)`` and runs it on
the job's inputs; every output goes into an ``.npz`` that the test compares with
Hugging Face ``transformers``. ``test_families.py`` calls :func:`run` in-process
for its own backend (and reuses the builders it returns) and runs this file with
``KERAS_BACKEND=jax`` / ``torch``.

Usage: ``python tests/_family_worker.py WORKDIR OUT.npz``; WORKDIR holds
``jobs.json`` and ``inputs.npz``.
"""

import json
import os
import sys


def skip_random_initialisation_under_jax():
    """Start the weights that the checkpoints overwrite at zero instead of random.

    Under JAX each new shape of a truncated-normal draw compiles an XLA program:
    about 15 s of this worker's 38 s of CPU went to drawing weights that every job
    then replaces with the checkpoint's. A weight a loader missed still shows in
    the parity (the checkpoints hold no zero tensors). The other backends draw as
    usual (cheaply).
    """
    import keras
    import numpy as np

    if keras.backend.backend() != "jax":
        return

    def zeros(self, shape, dtype=None):
        return np.zeros(shape, keras.backend.standardize_dtype(dtype))

    keras.initializers.TruncatedNormal.__call__ = zeros


def run(workdir, out_path):
    """Run every job, write the outputs to ``out_path``; returns ``{job key: builder}``."""
    import keras
    import numpy as np

    from bert4x.models import build_transformer_model

    with open(os.path.join(workdir, "jobs.json")) as file:
        jobs = json.load(file)
    inputs = np.load(os.path.join(workdir, "inputs.npz"))
    results = {"backend": np.array(keras.backend.backend())}
    builders = {}
    for job in jobs:
        builders[job["key"]] = build_transformer_model(**job["kwargs"],
                                                       return_keras_model=False)
        arrays = [keras.ops.convert_to_tensor(inputs[name]) for name in job["inputs"]]
        outputs = builders[job["key"]].model(arrays, training=False)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        for index, output in enumerate(outputs):
            results[f"{job['key']}/{index}"] = keras.ops.convert_to_numpy(output)
    np.savez(out_path, **results)
    return builders


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    skip_random_initialisation_under_jax()
    run(sys.argv[1], sys.argv[2])
