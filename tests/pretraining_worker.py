"""Run a tiny pretraining in its own process for tests/test_pretraining.py.

Usage: python tests/pretraining_worker.py MODE CONFIG_JSON RESULT_NPZ [ARGUMENT]

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
  jax_accumulation (KERAS_BACKEND=jax) one update of 2 micro-batches against the
               gradient of the whole batch, computed separately.
  jax_features (KERAS_BACKEND=jax) the JAX route's bfloat16, steps_per_loop and
               exact resume: a bfloat16 run and its export, a run with
               steps_per_loop 3 against steps_per_loop 1, and a run stopped after a
               checkpoint and resumed against an uninterrupted one.
  jax_mesh     (KERAS_BACKEND=jax, 8 CPU devices) the same run on one device, on the
               mesh data=8 and on data=2,model=4: their exported weights; the
               fine-tuning snippet of the README (a model built under ModelParallel
               from the export) against the same model on one device.
  jax_one_device (KERAS_BACKEND=jax) the one-device run of jax_mesh alone.
  jax_resume   (KERAS_BACKEND=jax, 8 CPU devices) a data=2,model=4 run stopped after
               its checkpoint of step 6 and resumed on the same mesh, and one resumed
               on data=8, against the uninterrupted run: exported weights.
  jax_process  (KERAS_BACKEND=jax, one of 2 processes of 4 CPU devices each; the
               KERAS_DISTRIBUTION_* variables set) run_pretraining on data=2,model=4
               over both processes; process 0 saves the exported weights.
  killed       run run_pretraining and SIGKILL this process when it reports step
               KILL_AT (argument 4), before that step's checkpoint is written: a crash
               at a known point.
  pretrain_then_uninterrupted  pretraining/pretrain.py's main on CONFIG_JSON (the
               command; it prints its log), then, in this same process, run the config
               REFERENCE_JSON (argument 4) to its end: the uninterrupted run to compare
               with (one TensorFlow start for both; second, since the variable paths
               of a run's checkpoints depend on the runs before it in the process).
  jax_jobs     (KERAS_BACKEND=jax) several of the JAX modes in this one process:
               CONFIG_JSON is [[name, mode, config, device count], ...] (see jax_jobs).
"""

import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def weights_of(trainer):
    return [np.asarray(w) for w in trainer.builder.model.get_weights()]


def jax_accumulation(config, devices=None):
    """One update of 2 micro-batches (SGD, lr 1) and the gradient of the mean
    cross-entropy over every target of the whole batch, computed here directly."""
    import jax
    import jax.numpy as jnp
    import keras
    from bert4x.pretraining.jax_trainer import JaxPretrainer
    # No dropout: the reference below runs the model without it.
    model_fields = dict(config.model, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    trainer = JaxPretrainer(config.replace(accumulation_steps=2, model=model_fields,
                                           output_dir=config.output_dir + "_accumulation"),
                            log=lambda line: None, devices=devices)
    model = trainer.train_model
    inputs, labels = next(trainer._dataset(0).as_numpy_iterator())
    labels = labels.copy()
    labels[0] = -1  # row 0 is in micro-batch 0: the micro-batches' target counts differ
    # Copies: the training step donates (deletes) the variables' buffers.
    trainable = [np.array(v.value) for v in model.trainable_variables]
    non_trainable = [np.array(v.value) for v in model.non_trainable_variables]

    def mean_loss(values, rows):
        rows = np.asarray(rows)
        logits, _ = model.stateless_call(values, non_trainable, [x[rows] for x in inputs])
        log_probs = jax.nn.log_softmax(logits.astype("float32"), -1)
        y = labels[rows]
        picked = jnp.take_along_axis(log_probs, np.maximum(y, 0)[..., None], -1)[..., 0]
        weights = (y >= 0).astype("float32")
        return -jnp.sum(picked * weights) / jnp.sum(weights)

    # Compiled, one program per set of rows (a tuple: static), rather than run op by op
    # (each operation compiled on its own): the same gradient for much less work.
    gradient = jax.jit(jax.grad(mean_loss), static_argnums=1)
    rows = tuple(range(len(labels)))
    expected = gradient(trainable, rows)
    # What averaging the two micro-batches' mean losses (Keras's own
    # gradient_accumulation_steps) would give instead.
    halves = [gradient(trainable, rows[i::2]) for i in range(2)]
    naive = [(a + b) / 2 for a, b in zip(*halves)]
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
    with trainer.distribution.scope():
        model.train_on_batch(inputs, labels)
    moved = [before - np.asarray(v.value)
             for before, v in zip(trainable, model.trainable_variables)]
    flat = lambda arrays: np.concatenate([np.ravel(np.asarray(a)) for a in arrays])  # noqa: E731
    return {"accumulated": flat(moved), "expected": flat(expected), "naive": flat(naive),
            "micro_targets": np.array([(labels[i::2] >= 0).sum() for i in range(2)])}


def jax_features(config):
    import keras
    from bert4x.models import build_transformer_model
    from bert4x.pretraining.jax_trainer import JaxPretrainer
    arrays = {}
    quiet = lambda line: None  # noqa: E731

    def run(name, **overrides):
        trainer = JaxPretrainer(config.replace(output_dir=config.output_dir + "_" + name,
                                               **overrides), log=quiet)
        return trainer, trainer.train()

    bf16, result = run("bfloat16", mixed_precision=True, train_steps=16, learning_rate=5e-3)
    arrays["bf16_losses"] = np.array(result["losses"])
    arrays["bf16_compute"] = np.array(sorted({str(layer.compute_dtype)
                                              for layer in bf16.builder.model.layers}))
    exported = build_transformer_model(result["export_dir"], result["export_dir"],
                                       with_mlm=True)
    arrays["export_outputs_finite"] = np.array(np.isfinite(exported.predict(
        [np.full((1, config.seq_length), 2, "int32"), np.zeros((1, config.seq_length), "int32")],
        verbose=0)[-1]).all())
    checkpoint = (tf.train.latest_checkpoint(result["export_dir"])
                  or os.path.join(result["export_dir"], "bert_model.ckpt"))
    dtypes = tf.train.load_checkpoint(checkpoint).get_variable_to_dtype_map()
    arrays["export_dtypes"] = np.array(sorted({dtype.name for dtype in dtypes.values()}))
    weights = {}
    for name, overrides in (("one", {"steps_per_loop": 1}), ("loop", {"steps_per_loop": 3})):
        trainer, result = run(name, **overrides)
        weights[name] = trainer.builder.model.get_weights()
        arrays[f"{name}_calls"] = np.array(len(result["losses"]))

    class Stop(Exception):
        pass

    def stop_at_step_4(line):
        if line.startswith("step 4/"):  # logged before any checkpoint of step 4
            raise Stop(line)

    stopped = JaxPretrainer(config.replace(output_dir=config.output_dir + "_stopped"),
                            log=stop_at_step_4)
    try:
        stopped.train()
        raise SystemExit("the stopped run was not stopped")
    except Stop:
        pass
    lines = []
    resumed = JaxPretrainer(config.replace(output_dir=config.output_dir + "_stopped"),
                            log=lines.append)
    resumed.train()
    arrays["resumed_from_3"] = np.array(any("at step 3" in line for line in lines))
    weights["resumed"] = resumed.builder.model.get_weights()
    for name in ("one", "loop", "resumed"):
        arrays[f"{name}_weights"] = np.concatenate([np.ravel(w) for w in weights[name]])
    arrays["distribution_left"] = np.array(keras.distribution.distribution() is not None)
    return arrays


def jax_route(config, devices=None):
    """run_pretraining's JAX route on ``devices`` (None: all): train, truncate the newest
    checkpoint, resume (from the one before) for 6 more steps; the export's MLM outputs
    against the model's."""
    import warnings
    import keras
    from bert4x.models import build_transformer_model
    from bert4x.pretraining.jax_trainer import JaxPretrainer
    from bert4x.pretraining.trainer import run_pretraining
    assert keras.backend.backend() == "jax", keras.backend.backend()
    first = run_pretraining(config, log=lambda line: None, devices=devices)
    newest = os.path.join(config.output_dir, "checkpoints",
                          f"ckpt-{config.train_steps}.optimizer.npz")
    with open(newest, "r+b") as file:
        file.truncate(os.path.getsize(newest) // 2)
    lines = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = run_pretraining(config.replace(train_steps=config.train_steps + 6),
                                  log=lines.append, devices=devices)
    previous = config.train_steps - config.checkpoint_every
    assert any(f"at step {previous}" in line for line in lines), lines
    assert any(f"ckpt-{config.train_steps}.optimizer.npz is unreadable" in str(w.message)
               for w in caught), [str(w.message) for w in caught]
    export = resumed["export_dir"]
    model = build_transformer_model(export, export, with_mlm=True)
    token_ids = np.zeros((2, config.seq_length), "int32")
    token_ids[:, :6] = [2, 10, 11, 4, 12, 3]
    outputs = model.predict([token_ids, np.zeros_like(token_ids)], verbose=0)[-1]
    trainer = JaxPretrainer(config.replace(train_steps=config.train_steps + 6),
                            log=lambda line: None, devices=devices)
    trainer.restore()
    trained = trainer.builder.model.predict([token_ids, np.zeros_like(token_ids)],
                                            verbose=0)[-1]
    return dict(losses=np.array(first["losses"]), resumed=np.array(resumed["losses"]),
                devices=np.array(first["devices"]),
                mesh=np.array(len(trainer.distribution.device_mesh.devices.ravel())),
                distribution_left=np.array(keras.distribution.distribution() is not None),
                exported=np.asarray(outputs), trained=np.asarray(trained),
                eval_targets=np.array(resumed["eval"]["targets"]))


def jax_refuses_tpu(config):
    """``tpu='local'`` on the JAX backend where JAX sees no TPU: the error, as
    ``Type: message``."""
    from bert4x.pretraining import PretrainingConfig
    from bert4x.pretraining.jax_trainer import JaxPretrainer
    try:
        JaxPretrainer(PretrainingConfig.from_dict({"tpu": "local", "backend": "jax"}))
    except Exception as error:  # noqa: BLE001 - the test reads which error it was
        return {"refusal": np.array(f"{type(error).__name__}: {error}")}
    return {"refusal": np.array("")}


def jax_jobs(jobs):
    """Several JAX checks in this one process (one JAX and TensorFlow start instead of
    one per check): ``jobs`` is ``[[name, mode, config dict, device count], ...]`` (a
    device count of None: every device of the process); each job's arrays come back
    as ``name:key``, a failed job's traceback as ``name:error``."""
    import traceback
    from bert4x.pretraining import PretrainingConfig
    modes = {"jax": jax_route, "jax_accumulation": jax_accumulation,
             "jax_refuses_tpu": jax_refuses_tpu, "jax_mesh": jax_mesh}
    arrays = {}
    for name, mode, values, device_count in jobs:
        config = PretrainingConfig.from_dict(values) if values else None
        started = time.process_time()
        try:
            if device_count:  # a host with that many devices, of the process's 8
                import keras
                devices = keras.distribution.list_devices()[:device_count]
                result = modes[mode](config, devices=devices)
            else:
                result = modes[mode](config)
        except Exception:  # noqa: BLE001 - reported to the test of that job
            result = {"error": np.array(traceback.format_exc())}
            print(f"{name}: {result['error']}", file=sys.stderr)
        arrays.update({f"{name}:{key}": value for key, value in result.items()})
        print(f"{name}: {time.process_time() - started:.1f} s of CPU", file=sys.stderr)
    return arrays


def exported_weights(export_dir):
    """``{official name: array}`` of an exported checkpoint."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(export_dir)
                                      or os.path.join(export_dir, "bert_model.ckpt"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def _prefixed(prefix, weights):
    return {f"{prefix}/{name}": value for name, value in weights.items()}


def jax_mesh(config, meshes=("one", "data8", "data2_model4"), snippet=True):
    import keras
    from bert4x.pretraining.jax_trainer import JaxPretrainer
    arrays = {}
    quiet = lambda line: None  # noqa: E731
    runs = {"one": (None, keras.distribution.list_devices()[:1]), "data8": ("data=8", None),
            "data2_model4": ("data=2,model=4", None)}
    for name in meshes:
        mesh, devices = runs[name]
        trainer = JaxPretrainer(config.replace(mesh=mesh, output_dir=config.output_dir + name),
                                log=quiet, devices=devices)
        started = time.time()
        result = trainer.train()
        print(f"{name}: {time.time() - started:.1f} s", file=sys.stderr)
        arrays.update(_prefixed(name, exported_weights(result["export_dir"])))
        arrays[f"{name}_devices"] = np.array(result["mesh"])
        arrays[f"{name}_eval"] = np.array([result["eval"]["loss"], result["eval"]["targets"]])
        if name == "data2_model4":
            model = trainer.builder.model
            for key, value in (
                    ("kernel", model.get_layer("Transformer-0-FeedForward")
                     .intermediate_dense.kernel.value),
                    ("embeddings", model.get_layer("Embedding-Token").embeddings.value)):
                arrays[f"{key}_shape"] = np.array(value.shape)
                arrays[f"{key}_shards"] = np.array(
                    sorted({tuple(shard.data.shape) for shard in value.addressable_shards}))
    if snippet:
        arrays.update(fine_tuning_snippet(result["export_dir"], config.seq_length))
    arrays["distribution_left"] = np.array(keras.distribution.distribution() is not None)
    return arrays


def fine_tuning_snippet(export_dir, seq_length):
    """The README's fine-tuning example on the export, against one device."""
    import keras
    import bert4x.distribution
    from bert4x.models import build_transformer_model
    token_ids = np.zeros((8, seq_length), "int32")
    token_ids[:, :6] = [2, 10, 11, 4, 12, 3]
    segment_ids = np.zeros_like(token_ids)
    reference = build_transformer_model(export_dir, export_dir, with_mlm=True)
    expected = reference.predict([token_ids, segment_ids], verbose=0)[-1]
    mesh = keras.distribution.DeviceMesh((2, 4), ["data", "model"])
    layouts = bert4x.distribution.layout_map(
        lambda: build_transformer_model(export_dir, with_mlm=True), mesh)
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="data"))
    try:
        model = build_transformer_model(export_dir, export_dir, with_mlm=True)
        embeddings = model.get_layer("Embedding-Token").embeddings.value
        shards = len({str(shard.index) for shard in embeddings.addressable_shards})
        outputs = model.predict([token_ids, segment_ids], verbose=0)[-1]
    finally:
        keras.distribution.set_distribution(None)
    return {"snippet_expected": np.asarray(expected), "snippet_outputs": np.asarray(outputs),
            "snippet_embedding_shards": np.array(shards)}


def jax_resume(config):
    from bert4x.pretraining.jax_trainer import JaxPretrainer
    arrays = {}

    class Stop(Exception):
        pass

    def stop_after_step_6(line):
        if line.startswith("step 7/"):  # the checkpoint of step 6 is written
            raise Stop(line)

    config = config.replace(checkpoint_every=6, log_every=1, mesh="data=2,model=4")
    whole = JaxPretrainer(config.replace(output_dir=config.output_dir + "_whole"),
                          log=lambda line: None).train()
    arrays.update(_prefixed("whole", exported_weights(whole["export_dir"])))
    for name, mesh in (("same", "data=2,model=4"), ("other", "data=8")):
        stopped = config.replace(output_dir=config.output_dir + "_" + name)
        try:
            JaxPretrainer(stopped, log=stop_after_step_6).train()
            raise SystemExit("the stopped run was not stopped")
        except Stop:
            pass
        lines = []
        resumed = JaxPretrainer(stopped.replace(mesh=mesh), log=lines.append).train()
        arrays[f"{name}_resumed_at_6"] = np.array(any("at step 6" in line for line in lines))
        arrays[f"{name}_steps_run"] = np.array(len(resumed["losses"]))
        arrays.update(_prefixed(name, exported_weights(resumed["export_dir"])))
    return arrays


def jax_process(config):
    import jax
    from bert4x.pretraining.trainer import run_pretraining
    result = run_pretraining(config.replace(mesh="data=2,model=4"), log=print)
    arrays = {"processes": np.array(jax.process_count()),
              "mesh": np.array(result["mesh"]), "devices": np.array(result["devices"])}
    if jax.process_index() == 0:
        arrays.update(_prefixed("multi", exported_weights(result["export_dir"])))
    return arrays


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
    if mode == "jax_jobs":
        np.savez(result_path, **jax_jobs(values))
        return
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
        arrays.update(jax_route(config))
    elif mode == "jax_accumulation":
        arrays.update(jax_accumulation(config))
    elif mode == "jax_features":
        arrays.update(jax_features(config))
    elif mode in ("jax_mesh", "jax_resume", "jax_process"):
        arrays.update({"jax_mesh": jax_mesh, "jax_resume": jax_resume,
                       "jax_process": jax_process}[mode](config))
        if mode == "jax_process":
            import jax
            result_path = result_path.replace(".npz", f"-{jax.process_index()}.npz")
    elif mode == "jax_one_device":
        arrays.update(jax_mesh(config, meshes=("one",), snippet=False))
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
    elif mode == "pretrain_then_uninterrupted":
        from pretraining.pretrain import main as pretrain
        from bert4x.pretraining.trainer import run_pretraining
        pretrain(["--config", config_path])
        with open(sys.argv[4], encoding="utf-8") as file:
            run_pretraining(PretrainingConfig.from_dict(json.load(file)), log=lambda line: None)
    else:
        raise SystemExit(f"unknown mode {mode}")
    np.savez(result_path, **arrays)


if __name__ == "__main__":
    main()
