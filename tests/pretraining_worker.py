"""Run a tiny pretraining in its own process for tests/test_pretraining.py.

Usage: python tests/pretraining_worker.py MODE CONFIG_JSON RESULT_NPZ

MODE:
  mirrored     configure 2 logical CPU devices (before TensorFlow starts), train once on
               the default strategy and once under MirroredStrategy over both devices,
               save both weight sets (``single_*``, ``mirrored_*``).
  multiworker  train under the strategy chosen from TF_CONFIG (MultiWorkerMirrored with
               several workers) and save this worker's weights.
  jax          (KERAS_BACKEND=jax) train through run_pretraining's JAX route, truncate
               the newest checkpoint, resume (from the one before) for a few more steps,
               load the export with build_transformer_model and save the per-step
               losses, device count and MLM outputs of both models.
  killed       run run_pretraining and SIGKILL this process when it reports step
               KILL_AT (argument 4), before that step's checkpoint is written: a crash
               at a known point.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def weights_of(trainer):
    return [np.asarray(w) for w in trainer.builder.model.get_weights()]


def main():
    mode, config_path, result_path = sys.argv[1:4]
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from bert4x.pretraining import PretrainingConfig
    from bert4x.pretraining.trainer import Pretrainer
    with open(config_path, encoding="utf-8") as file:
        values = json.load(file)
    config = PretrainingConfig.from_dict(values)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    arrays = {}
    if mode == "mirrored":
        single = Pretrainer(config.replace(output_dir=config.output_dir + "_single"),
                            strategy=tf.distribute.get_strategy(), log=lambda line: None)
        for index, value in enumerate(weights_of(single)):
            arrays[f"initial_{index}"] = value
        single.train()
        mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        mirrored = Pretrainer(config.replace(output_dir=config.output_dir + "_mirrored"),
                              strategy=mirrored_strategy, log=lambda line: None)
        assert mirrored.strategy.num_replicas_in_sync == 2
        mirrored.train()
        for name, trainer in (("single", single), ("mirrored", mirrored)):
            for index, value in enumerate(weights_of(trainer)):
                arrays[f"{name}_{index}"] = value
    elif mode == "multiworker":
        trainer = Pretrainer(config, log=lambda line: None)
        assert trainer.strategy_kind == "multi_worker", trainer.strategy_kind
        assert trainer.strategy.num_replicas_in_sync == 2
        trainer.train()
        for index, value in enumerate(weights_of(trainer)):
            arrays[f"w_{index}"] = value
        arrays["steps"] = np.array(int(trainer.optimizer.iterations.numpy()))
    elif mode == "jax":
        import keras
        from bert4x.models import build_transformer_model
        from bert4x.pretraining.trainer import run_pretraining
        assert keras.backend.backend() == "jax", keras.backend.backend()
        import warnings
        first = run_pretraining(config, log=lambda line: None)
        newest = os.path.join(config.output_dir, "checkpoints",
                              f"ckpt-{config.train_steps}.optimizer.npz")
        with open(newest, "r+b") as file:
            file.truncate(os.path.getsize(newest) // 2)
        lines = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            resumed = run_pretraining(config.replace(train_steps=config.train_steps + 6),
                                      log=lines.append)
        previous = config.train_steps - config.checkpoint_every
        assert any(f"at step {previous}" in line for line in lines), lines
        assert any(f"ckpt-{config.train_steps}.optimizer.npz is unreadable" in str(w.message)
                   for w in caught), [str(w.message) for w in caught]
        export = resumed["export_dir"]
        model = build_transformer_model(export, export, with_mlm=True)
        token_ids = np.zeros((2, config.seq_length), "int32")
        token_ids[:, :6] = [2, 10, 11, 4, 12, 3]
        outputs = model.predict([token_ids, np.zeros_like(token_ids)], verbose=0)[-1]
        from bert4x.pretraining.jax_trainer import JaxPretrainer
        trainer = JaxPretrainer(config.replace(train_steps=config.train_steps + 6),
                                log=lambda line: None)
        trainer.restore()
        trained = trainer.builder.model.predict([token_ids, np.zeros_like(token_ids)],
                                                verbose=0)[-1]
        arrays.update(losses=np.array(first["losses"]), resumed=np.array(resumed["losses"]),
                      devices=np.array(first["devices"]),
                      mesh=np.array(len(trainer.distribution.device_mesh.devices.ravel())),
                      distribution_left=np.array(keras.distribution.distribution() is not None),
                      exported=np.asarray(outputs), trained=np.asarray(trained),
                      eval_targets=np.array(resumed["eval"]["targets"]))
    elif mode == "killed":
        import signal
        from bert4x.pretraining.trainer import run_pretraining
        kill_at = f"step {int(sys.argv[4])}/"

        def log(line):
            print(line, flush=True)
            if line.startswith(kill_at):
                os.kill(os.getpid(), signal.SIGKILL)

        run_pretraining(config, log=log)
        raise SystemExit(f"the run finished without reporting {kill_at}")
    else:
        raise SystemExit(f"unknown mode {mode}")
    np.savez(result_path, **arrays)


if __name__ == "__main__":
    main()
