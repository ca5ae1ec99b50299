"""The pretraining run: model, custom distributed training loop, checkpoints, export.

Why a custom loop: with Keras 3.15 and TF 2.21, ``model.fit`` fails under
``MultiWorkerMirroredStrategy``, the optimizers' ``gradient_accumulation_steps`` fails
under every ``tf.distribute`` strategy and ``jit_compile=True`` fails under
``MirroredStrategy`` on CPU. Here each optimiser update is one ``strategy.run`` that
runs ``accumulation_steps`` micro-batches, sums their gradients in a
:class:`bert4x.optimizers.GradientAccumulator` and applies the token-weighted mean
once; with ``jit_compile`` that whole update is one XLA program, as a TPU needs.
``steps_per_loop`` updates run in one ``tf.function`` call (a host loop).

The loss of an update is the mean cross-entropy over *all* target tokens of all its
micro-batches and replicas, so a run gives the same weights whatever the number of
replicas (up to float rounding). Each replica divides its summed loss by the
micro-batch's global target count (an all-reduce) and the accumulator weights each
micro-batch by that count.
"""

import json
import os
import re
import time

import numpy as np

from bert4x import storage
from bert4x.pretraining.config import PretrainingConfig
from bert4x.pretraining.distribute import is_chief, select_strategy
from bert4x.pretraining.run import PretrainingRun, build_pretraining_model, prepare_data


_SEED_GENERATOR = re.compile(r"^seed_generator(?:_\d+)?/")


def checkpoint_keys(variables):
    """``{key: variable}`` for a training checkpoint: each variable's path, the same in
    every process.

    Keras names each ``SeedGenerator`` (the random state of a dropout layer) with a
    process-wide counter. A model built after another one in the same process names
    it ``seed_generator_4/...`` where a fresh process says ``seed_generator/...``, so a
    fresh process would refuse the second run's checkpoints. The generators are keyed
    by their order in the model instead, the names a fresh process gives them.

    Raises:
        RuntimeError: two variables share a path.
    """
    keys, generators = {}, {}
    for variable in variables:
        key = variable.path
        found = _SEED_GENERATOR.match(key)
        if found:
            order = generators.setdefault(found.group(), len(generators))
            key = ("seed_generator" + (f"_{order}" if order else "") + "/"
                   + key[found.end():])
        keys[key] = variable
    if len(keys) != len(variables):
        raise RuntimeError("the model has several variables with one path")
    return keys


class Pretrainer:
    """Builds and runs one pretraining run (TensorFlow backend).

    Args:
        config: a :class:`PretrainingConfig`.
        strategy: a ``tf.distribute`` strategy; by default chosen by
            :func:`bert4x.pretraining.distribute.select_strategy` (``config.tpu``,
            ``TF_CONFIG``, the GPUs).
        log: a callable taking one progress line (``print`` by default).

    Example:
        >>> trainer = Pretrainer(PretrainingConfig.from_json("tiny.json"))  # doctest: +SKIP
        >>> result = trainer.train()  # doctest: +SKIP
        >>> trainer.export()  # doctest: +SKIP
    """

    def __init__(self, config, strategy=None, log=print, summary=None, start_over=False):
        import tensorflow as tf
        import keras
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                "Pretrainer runs a tf.distribute loop and needs KERAS_BACKEND=tensorflow; "
                "on the JAX backend use bert4x.pretraining.jax_trainer.train_with_jax "
                "(run_pretraining picks it)")
        self.config = config
        self.log = log
        self.start_over = start_over
        if strategy is None:
            self.strategy_kind, strategy = select_strategy(tpu=config.tpu)
        else:
            self.strategy_kind = type(strategy).__name__
        self.strategy = strategy
        self.chief = is_chief(strategy)
        self.run = PretrainingRun(config, summary=summary, log=log)
        self.output_dir, self.checkpoint_dir = self.run.output_dir, self.run.checkpoint_dir
        self.summary = self.run.summary
        self._build()

    def _build(self):
        import tensorflow as tf
        from bert4x.optimizers import GradientAccumulator
        config = self.config
        self.masker = self.run.make_masker()
        self.global_batch = config.batch_size
        replicas = self.strategy.num_replicas_in_sync
        if self.global_batch % replicas:
            raise ValueError(f"batch_size {self.global_batch} is not divisible by the "
                             f"{replicas} replicas")
        with self.strategy.scope():
            self.builder, self.train_model = self.run.make_models(
                self.masker, dtype="mixed_bfloat16" if config.mixed_precision else None)
            self.optimizer = self.run.make_optimizer()
            self.variables = self.train_model.trainable_variables
            self.optimizer.build(self.variables)
            self.accumulator = GradientAccumulator(self.variables)
        # The data position: examples of the global stream consumed so far.
        self.examples_seen = tf.Variable(0, dtype=tf.int64, trainable=False,
                                         name="examples_seen")
        # Variables are tracked by path explicitly: tf.train.Checkpoint(model=...) does
        # not reach the variables of Keras 3 layers held in plain containers, and the
        # dropout seed-generator states must come back too for an exact resume.
        model_variables = checkpoint_keys(self.builder.model.variables)
        self.model_variables = model_variables
        self.checkpoint = tf.train.Checkpoint(model_variables=model_variables,
                                              optimizer=self.optimizer,
                                              examples_seen=self.examples_seen)
        # Created now (restore would create it anyway) so every checkpoint holds it.
        _ = self.checkpoint.save_counter

    # ------------------------------------------------------------- checkpoints
    def _checkpoint_folder(self):
        from bert4x.pretraining.resume import CheckpointFolder, TensorFlowCheckpointFormat
        checkpoint_format = TensorFlowCheckpointFormat(
            self.checkpoint, self.model_variables, self.optimizer.variables,
            extra={"examples_seen": self.examples_seen})
        return CheckpointFolder(self.checkpoint_dir, checkpoint_format,
                                keep=self.config.keep_checkpoints)

    def restore(self):
        """Restore the newest intact training checkpoint (if any); return the step reached.

        A damaged newest checkpoint is reported with a warning and the one before it
        is restored (see :mod:`bert4x.pretraining.resume`). Without checkpoints, load
        ``init_checkpoint`` (official weights) when configured.

        Raises:
            ValueError: the checkpoint directory belongs to a model of another size
                (the message names the differing fields and shapes).
            bert4x.pretraining.resume.DamagedCheckpointError: checkpoints exist but
                none is intact (and ``start_over`` was not given).
        """
        restored = self.run.restore(self.builder, self._checkpoint_folder(),
                                    start_over=self.start_over, chief=self.chief)
        if restored is not None:
            self.log(f"resumed from {storage.join(self.checkpoint_dir, f'ckpt-{restored}')} "
                     f"at step {int(self.optimizer.iterations.numpy())}, "
                     f"example {int(self.examples_seen.numpy())}")
        return int(self.optimizer.iterations.numpy())

    def save(self):
        """Write the training checkpoint of the current step, then prune old ones.

        TensorFlow writes the data and index under temporary names and renames them;
        the ``checkpoint`` pointer file is rewritten last. Only intact checkpoints
        count towards ``keep_checkpoints``.
        """
        step = int(self.optimizer.iterations.numpy())
        if not self.chief:
            # Every worker takes part in saving (it is collective); only the chief's
            # files are kept.
            task_id = getattr(self.strategy.cluster_resolver, "task_id", 0)
            scratch = storage.join(self.output_dir, f"worker_{task_id}_tmp_checkpoints")
            self.checkpoint.write(storage.join(scratch, f"ckpt-{step}"))
            storage.rmtree(scratch)
            return None
        path = self.checkpoint.write(storage.join(self.checkpoint_dir, f"ckpt-{step}"))
        folder = self._checkpoint_folder()
        folder.write_pointer(step)
        folder.prune(step)
        return path

    # ------------------------------------------------------------------- data
    def _distributed_dataset(self):
        from bert4x.pretraining.pipeline import masked_dataset
        config = self.config
        files = self.run.data_files()
        examples = self.summary["train_examples"]
        if not files or examples <= 0:
            raise ValueError(f"no training example in {config.resolved_data_dir()}")
        start = int(self.examples_seen.numpy())

        def dataset_fn(context):
            return masked_dataset(
                files, config.seq_length, self.masker,
                context.get_per_replica_batch_size(self.global_batch), examples,
                start_example=start, shuffle_buffer=config.shuffle_buffer, seed=config.seed,
                num_shards=context.num_input_pipelines, shard_index=context.input_pipeline_id)

        import tensorflow as tf
        options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
        return self.strategy.distribute_datasets_from_function(dataset_fn, options)

    # ------------------------------------------------------------------ steps
    def _micro_step(self, features):
        import tensorflow as tf
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            logits = self.train_model(
                [features["token_ids"], features["segment_ids"], features["positions"]],
                training=True)
            logits = tf.cast(logits, tf.float32)
            labels, weights = features["labels"], features["weights"]
            per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            local_sum = tf.reduce_sum(per_token * weights)
            local_count = tf.reduce_sum(weights)
            global_count = context.all_reduce(tf.distribute.ReduceOp.SUM, local_count)
            loss = local_sum / tf.maximum(global_count, 1.0)
        gradients = tape.gradient(loss, self.variables)
        self.accumulator.accumulate(gradients, weight=tf.maximum(global_count, 1.0))
        correct = tf.reduce_sum(weights * tf.cast(
            tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))
        real_tokens = tf.reduce_sum(tf.cast(features["token_ids"] != 0, tf.float32))
        return tf.stack([local_sum, local_count, correct, real_tokens])

    def _replica_update(self, batches):
        """One optimiser update on this replica: the micro-batches, then the apply.

        Everything here runs on the device; with ``jit_compile`` it is one XLA program
        (static shapes: fixed ``max_predictions``, batches with ``drop_remainder``).
        """
        import tensorflow as tf
        totals = tf.zeros([4])
        for features in batches:
            totals += self._micro_step(features)
        self.accumulator.apply(self.optimizer)
        return totals

    def _make_train_loop(self):
        """``train_loop(iterator, updates)``: ``updates`` optimiser updates in one call.

        The loop over updates runs inside one ``tf.function`` (a host loop, as on TPU:
        one dispatch for ``steps_per_loop`` updates, so small steps are not bound by
        the Python round trip); each update is one ``strategy.run`` of
        :meth:`_replica_update` over ``accumulation_steps`` micro-batches.
        """
        import tensorflow as tf
        replica_update = self._replica_update
        if self.config.jit_compile:
            replica_update = tf.function(replica_update, jit_compile=True)
        strategy, micro_batches = self.strategy, self.config.accumulation_steps

        @tf.function
        def train_loop(iterator, updates):
            totals = tf.zeros([4])
            for _ in tf.range(updates):
                batches = tuple(next(iterator) for _ in range(micro_batches))
                per_replica = strategy.run(replica_update, args=(batches,))
                totals += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
            return totals

        return train_loop

    # ------------------------------------------------------------------- train
    def train(self):
        """Train to ``train_steps`` (resuming from the latest checkpoint), then export.

        Returns:
            A dict: ``step``, ``loss``, ``mlm_accuracy`` (of the last log window),
            ``tokens_per_second``, ``seconds``, ``eval`` (held-out figures, if any),
            ``export_dir``.
        """
        import tensorflow as tf
        config = self.config
        step = self.restore()
        writer = None
        if self.chief:
            writer = tf.summary.create_file_writer(storage.join(self.output_dir, "logs"))
        per_update = self.global_batch * config.accumulation_steps
        result = {"step": step, "loss": None, "mlm_accuracy": None, "tokens_per_second": None}
        start_time = time.time()
        if step < config.train_steps:
            iterator = iter(self._distributed_dataset())
            train_loop = self._make_train_loop()
            window = np.zeros(4)
            window_start = time.time()
            self.log(f"training {self.strategy_kind} x{self.strategy.num_replicas_in_sync} "
                     f"from step {step} to {config.train_steps}: {per_update} sequences of "
                     f"{config.seq_length} per update")
            while step < config.train_steps:
                # Run up to the next log or checkpoint step, steps_per_loop at most.
                updates = min(config.steps_per_loop, config.train_steps - step,
                              config.log_every - step % config.log_every,
                              config.checkpoint_every - step % config.checkpoint_every)
                try:
                    window += train_loop(iterator, tf.constant(updates)).numpy()
                except tf.errors.DataLossError as error:
                    from bert4x.pretraining.pipeline import damaged_data_error
                    raise damaged_data_error(self.run.data_files(), error) from error
                step += updates
                self.examples_seen.assign_add(per_update * updates)
                if step % config.log_every == 0 or step == config.train_steps:
                    elapsed = max(time.time() - window_start, 1e-9)
                    loss = window[0] / max(window[1], 1.0)
                    accuracy = window[2] / max(window[1], 1.0)
                    speed = window[3] / elapsed
                    learning_rate = float(self.optimizer.learning_rate.numpy()
                                          if hasattr(self.optimizer.learning_rate, "numpy")
                                          else self.optimizer.learning_rate)
                    result.update(step=step, loss=float(loss), mlm_accuracy=float(accuracy),
                                  tokens_per_second=float(speed))
                    if self.chief:
                        self.log(f"step {step}/{config.train_steps} loss {loss:.4f} "
                                 f"{config.objective}_acc {accuracy:.4f} lr {learning_rate:.2e} "
                                 f"tokens/s {speed:,.0f}")
                        with writer.as_default(step=step):
                            _scalar("loss", loss)
                            _scalar(f"{config.objective}_accuracy", accuracy)
                            _scalar("learning_rate", learning_rate)
                            _scalar("tokens_per_second", speed)
                    window[:] = 0
                    window_start = time.time()
                if step % config.checkpoint_every == 0 or step == config.train_steps:
                    self.save()
        result["seconds"] = time.time() - start_time
        result["eval"] = self.evaluate() if self.summary.get("valid_shards") else None
        if result["eval"] and self.chief:
            self.log(f"held-out: loss {result['eval']['loss']:.4f} "
                     f"{config.objective}_acc {result['eval']['accuracy']:.4f} "
                     f"on {result['eval']['targets']:,} targets")
        if writer is not None:
            writer.flush()
        result["export_dir"] = self.export() if self.chief else None
        return result

    def evaluate(self, max_batches=None):
        """Loss and accuracy on the held-out shards (mask of epoch 0, no dropout).

        Returns:
            ``{"loss", "accuracy", "targets"}`` or None without held-out data.
        """
        import tensorflow as tf
        from bert4x.pretraining.pipeline import evaluation_dataset
        shards = self.summary.get("valid_shards") or []
        if not shards:
            return None
        files = self.run.data_files("valid")
        dataset = evaluation_dataset(files, self.config.seq_length, self.masker,
                                     self.global_batch)
        max_batches = max_batches if max_batches is not None else self.config.eval_batches
        if max_batches:
            dataset = dataset.take(max_batches)

        @tf.function
        def evaluate_batch(features):
            logits = tf.cast(self.train_model(
                [features["token_ids"], features["segment_ids"], features["positions"]],
                training=False), tf.float32)
            per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(features["labels"],
                                                                       logits)
            correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                       features["labels"]), tf.float32)
            weights = features["weights"]
            return tf.stack([tf.reduce_sum(per_token * weights), tf.reduce_sum(weights),
                             tf.reduce_sum(correct * weights)])

        totals = np.zeros(3)
        try:
            for features in dataset:
                totals += evaluate_batch(features).numpy()
        except tf.errors.DataLossError as error:
            from bert4x.pretraining.pipeline import damaged_data_error
            raise damaged_data_error(files, error) from error
        count = max(totals[1], 1.0)
        return {"loss": float(totals[0] / count), "accuracy": float(totals[2] / count),
                "targets": int(totals[1])}

    # ------------------------------------------------------------------ export
    def export(self, directory=None):
        """Write the official Google checkpoint, ``bert_config.json`` and ``vocab.txt``.

        The weights are those of the model now (after :meth:`restore` or training).
        ``vocab.txt`` is the vocabulary the model was trained with (trimmed when
        ``vocab_trim_min_count`` is set), so the folder is self-contained.

        Returns:
            The export folder.
        """
        return self.run.export(self.builder, directory)


# A serialized SummaryMetadata naming the "scalars" plugin (field 1 plugin_data {
# field 1 plugin_name: "scalars"}), what tf.summary.scalar attaches. tf.summary.scalar
# itself needs the tensorboard package, which tensorflow-cpu does not install.
_SCALAR_METADATA = b"\x0a\x09\x0a\x07scalars"


def _scalar(tag, value):
    """A TensorBoard scalar through the public ``tf.summary.write``."""
    import tensorflow as tf
    tf.summary.write(tag, tf.constant(float(value), tf.float32), metadata=_SCALAR_METADATA)


def run_pretraining(config, export_only=False, prepare=True, strategy=None, log=print,
                    start_over=False, devices=None):
    """Prepare the data (if needed), train (resuming), export. The CLI's work.

    Args:
        config: a :class:`PretrainingConfig`.
        export_only: restore the latest checkpoint and export it, without training.
        prepare: run :func:`prepare_data` first when ``inputs`` are configured.
        strategy: an explicit ``tf.distribute`` strategy (default: chosen).
        log: progress-line callable.
        start_over: train from step 0 although checkpoints exist (they are moved
            aside, not deleted). Without it a folder whose checkpoints are all
            damaged is an error.
        devices: JAX backend: the devices of the mesh (default: all of every
            process); e.g. ``keras.distribution.list_devices()[:2]`` for part of a host.

    With ``config.backend == "jax"`` or the JAX Keras backend, the run goes to
    :func:`bert4x.pretraining.jax_trainer.train_with_jax` (needs ``KERAS_BACKEND=jax``).

    Returns:
        The result dict of :meth:`Pretrainer.train`, or ``{"export_dir": ...}``.
    """
    import keras
    if config.backend == "jax" or keras.backend.backend() == "jax":
        if strategy is not None:
            raise NotImplementedError("a tf.distribute strategy cannot be used on the JAX "
                                      "backend (it uses keras.distribution)")
        from bert4x.pretraining.jax_trainer import train_with_jax
        return train_with_jax(config, export_only=export_only, prepare=prepare, log=log,
                              start_over=start_over, devices=devices)
    if devices is not None:
        raise ValueError("devices= picks the mesh of the JAX backend; on TensorFlow, pass "
                         "a tf.distribute strategy over them (strategy=)")
    summary = None
    if prepare and config.inputs and not export_only and _prepares_data(strategy):
        summary = prepare_data(config)
    trainer = Pretrainer(config, strategy=strategy, log=log, summary=summary,
                         start_over=start_over and not export_only)
    if export_only:
        step = trainer.restore()
        if step == 0 and not config.init_checkpoint:
            raise FileNotFoundError(f"--export-only: no training checkpoint in "
                                    f"{trainer.checkpoint_dir}")
        return {"step": step, "export_dir": trainer.export()}
    return trainer.train()


def _prepares_data(strategy):
    """Only one worker of a cluster writes the data (the others need it made first)."""
    if strategy is not None:
        return is_chief(strategy)
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task", {})
    if not task or task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and \
        "chief" not in tf_config.get("cluster", {})


__all__ = ["Pretrainer", "PretrainingConfig", "build_pretraining_model", "prepare_data",
           "run_pretraining"]
