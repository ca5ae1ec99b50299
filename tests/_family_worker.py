"""Runs the model-family jobs of ``test_families.py`` under one Keras backend.

Each job builds a model with ``build_transformer_model(**kwargs)`` and runs it on
the job's inputs; every output goes into an ``.npz`` that the test compares with
Hugging Face ``transformers``. ``test_families.py`` calls :func:`run` in-process
for its own backend and runs this file with ``KERAS_BACKEND=jax`` / ``torch``.

Usage: ``python tests/_family_worker.py WORKDIR OUT.npz``; WORKDIR holds
``jobs.json`` and ``inputs.npz``.
"""

import json
import os
import sys


def run(workdir, out_path):
    import keras
    import numpy as np

    from bert4x.models import build_transformer_model

    with open(os.path.join(workdir, "jobs.json")) as file:
        jobs = json.load(file)
    inputs = np.load(os.path.join(workdir, "inputs.npz"))
    results = {"backend": np.array(keras.backend.backend())}
    for job in jobs:
        model = build_transformer_model(**job["kwargs"])
        arrays = [keras.ops.convert_to_tensor(inputs[name]) for name in job["inputs"]]
        outputs = model(arrays, training=False)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        for index, output in enumerate(outputs):
            results[f"{job['key']}/{index}"] = keras.ops.convert_to_numpy(output)
    np.savez(out_path, **results)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run(sys.argv[1], sys.argv[2])
