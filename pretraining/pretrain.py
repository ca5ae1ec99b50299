"""Pretrain (or continue pretraining) a BERT and export the official checkpoint.

Usage:
    python pretraining/pretrain.py --config pretraining/configs/tiny_chinese.json
    python pretraining/pretrain.py --config CONFIG --train-steps 5000 --batch-size 64
    python pretraining/pretrain.py --config CONFIG --tpu grpc://10.0.0.2:8470
    python pretraining/pretrain.py --config CONFIG --backend jax --mesh data=2,model=4
    python pretraining/pretrain.py --config CONFIG --backend jax --tpu local \
        --num-processes 4   # on every host of a TPU pod slice
    python pretraining/pretrain.py --config CONFIG --export-only
    python pretraining/pretrain.py --config CONFIG --start-over

Any config setting can be given as a flag (``--learning-rate 5e-4``; model fields
too: ``--hidden-size 128``). The data is prepared first when the config lists
``inputs`` (finished files are skipped). A killed run resumes from its latest
checkpoint when started again with the same output folder; a damaged newest
checkpoint is reported and the newest intact one is restored. ``--start-over`` trains
from step 0 although checkpoints exist (they are moved aside, not deleted).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pretraining.cli import PROCESS_FLAGS, parse_config  # noqa: E402


def main(argv=None):
    config, extra = parse_config(argv, description=__doc__, export_only=True)
    for _, variable, _ in PROCESS_FLAGS:
        if hasattr(extra, variable):
            if config.backend != "jax" and os.environ.get("KERAS_BACKEND") != "jax":
                raise ValueError("--job-addresses, --num-processes and --process-id are "
                                 "for --backend jax (keras.distribution.initialize)")
            os.environ[variable] = str(getattr(extra, variable))
    if config.backend == "jax" or os.environ.get("KERAS_BACKEND") == "jax":
        # keras.distribution + model.fit (pretraining/README.md, JAX).
        if "keras" not in sys.modules:
            os.environ.setdefault("KERAS_BACKEND", "jax")
        if os.environ.get("KERAS_BACKEND") != "jax":
            raise RuntimeError("--backend jax needs the environment variable "
                               "KERAS_BACKEND=jax (Keras picks its backend at import)")
    elif os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        raise NotImplementedError(
            f"pretraining runs on the TensorFlow or JAX backend, not "
            f"KERAS_BACKEND={os.environ['KERAS_BACKEND']}")
    else:
        os.environ["KERAS_BACKEND"] = "tensorflow"
    if config.deterministic:
        # Process-wide, so the command (not the library) switches it on.
        import tensorflow as tf
        tf.config.experimental.enable_op_determinism()
    from bert4x.pretraining.trainer import run_pretraining
    result = run_pretraining(config, export_only=extra.export_only,
                             start_over=extra.start_over)
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
