"""Pretraining on the JAX backend: ``model.fit`` under ``keras.distribution.DataParallel``.

The model, vocabulary handling, tf.data masking pipeline and export are those of the
TensorFlow path (both trainers hold a :class:`bert4x.pretraining.run.PretrainingRun`);
tf.data serves only as the input pipeline (iterated as NumPy). Differences from the TensorFlow path:

* distribution is ``keras.distribution.DataParallel`` over ``list_devices()`` (all
  local devices; one device is plain training). Multi-host JAX, TPU addresses and
  ``tf.distribute`` strategies are not used.
* one training step is one optimiser update of ``accumulation_steps`` micro-batches
  (:class:`JaxTrainingModel`); its loss is the mean cross-entropy over all target
  tokens of the update, as on TensorFlow. ``mixed_precision`` builds the model with
  the ``mixed_bfloat16`` policy; ``steps_per_loop`` is ``steps_per_execution``;
  ``tpu`` raises ``NotImplementedError``.
* checkpoints are Keras ``.weights.h5`` files of the training model plus the optimiser
  variables and dropout seed states (``.optimizer.npz``), each written under a
  temporary name and renamed. A restarted run resumes from the newest intact checkpoint
  (as on TensorFlow, see :mod:`bert4x.pretraining.resume`) at its step and data
  position, and ends with the weights of an uninterrupted run bit for bit (tested on
  CPU; see pretraining/README.md for GPUs).
* no TensorBoard logs (progress lines only); ``jit_compile`` is ignored (JAX always
  compiles).
"""

import os
import time

import keras
import numpy as np

from bert4x import storage
from bert4x.pretraining.run import PretrainingRun, prepare_data


def _micro_batches(array, count):
    """``[count * B, ...] -> [count, B, ...]``; micro-batch ``i`` holds rows ``i, i +
    count, ...``, so under data parallelism (rows sharded in contiguous blocks) every
    micro-batch stays spread over all devices."""
    return array.reshape((-1, count) + array.shape[1:]).swapaxes(0, 1)


class JaxTrainingModel(keras.Model):
    """The training model of the JAX route: one optimiser update per ``train_step``.

    Built from the inputs and outputs of
    :func:`bert4x.pretraining.run.build_pretraining_model` (its layers are shared).
    A step's batch is ``accumulation_steps`` micro-batches: a ``jax.lax.scan`` runs them
    one after the other (the activations of one micro-batch at a time), summing the
    cross-entropy over their target tokens (labels ``< 0`` are padding) and its
    gradients, and the optimizer applies ``sum of gradients / number of targets``: the
    gradient of the mean cross-entropy over all targets of the update, the same as one
    batch ``accumulation_steps`` times larger and as the TensorFlow route's
    token-weighted accumulation. ``loss`` and ``masked_accuracy`` are logged per update.

    Example:
        >>> base = build_pretraining_model(builder, 128, 20)  # doctest: +SKIP
        >>> model = JaxTrainingModel(base.inputs, base.outputs,  # doctest: +SKIP
        ...                          accumulation_steps=4)
        >>> model.compile(optimizer=AdamW(1e-4))  # doctest: +SKIP
    """

    def __init__(self, *args, accumulation_steps=1, **kwargs):
        super().__init__(*args, **kwargs)
        self.accumulation_steps = int(accumulation_steps)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="masked_accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def _summed_loss(self, trainable, non_trainable, inputs, labels):
        """Summed cross-entropy over the targets of one micro-batch, with the new
        non-trainable values (dropout seeds), the target count and the correct ones."""
        import jax
        import jax.numpy as jnp
        logits, non_trainable = self.stateless_call(trainable, non_trainable, inputs,
                                                    training=True)
        logits = logits.astype("float32")
        weights = (labels >= 0).astype("float32")
        targets = jnp.maximum(labels, 0)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        correct = (jnp.argmax(logits, axis=-1) == targets).astype("float32")
        return -jnp.sum(picked * weights), (non_trainable, jnp.sum(weights),
                                           jnp.sum(correct * weights))

    def train_step(self, state, data):
        import jax
        import jax.numpy as jnp
        trainable, non_trainable, optimizer_variables, metrics_variables = state
        inputs, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        count = self.accumulation_steps
        batches = ([_micro_batches(x, count) for x in inputs], _micro_batches(labels, count))
        gradient_fn = jax.value_and_grad(self._summed_loss, has_aux=True)

        def micro_step(carry, batch):
            gradient_sums, non_trainable, totals = carry
            (loss_sum, (non_trainable, target_count, correct)), gradients = gradient_fn(
                trainable, non_trainable, *batch)
            gradient_sums = [total + g.astype("float32")
                             for total, g in zip(gradient_sums, gradients)]
            return (gradient_sums, non_trainable,
                    totals + jnp.stack([loss_sum, target_count, correct])), None

        zeros = [jnp.zeros(v.shape, "float32") for v in trainable]
        (gradient_sums, non_trainable, totals), _ = jax.lax.scan(
            micro_step, (zeros, non_trainable, jnp.zeros(3, "float32")), batches)
        targets = jnp.maximum(totals[1], 1.0)
        gradients = [(g / targets).astype(v.dtype) for g, v in zip(gradient_sums, trainable)]
        trainable, optimizer_variables = self.optimizer.stateless_apply(
            optimizer_variables, gradients, trainable)
        split = len(self.loss_tracker.variables)  # metrics_variables follow self.metrics
        loss_values = self.loss_tracker.stateless_update_state(
            metrics_variables[:split], totals[0] / targets)
        accuracy_values = self.accuracy_tracker.stateless_update_state(
            metrics_variables[split:], totals[2] / targets)
        logs = {"loss": self.loss_tracker.stateless_result(loss_values),
                "masked_accuracy": self.accuracy_tracker.stateless_result(accuracy_values)}
        return logs, (trainable, non_trainable, optimizer_variables,
                      list(loss_values) + list(accuracy_values))


def _to_model_inputs(features):
    """Masker features -> ``((token_ids, segment_ids, positions), labels)``; padding
    targets (weight 0) get label -1."""
    import tensorflow as tf
    labels = tf.where(features["weights"] > 0, features["labels"], -1)
    return ((features["token_ids"], features["segment_ids"], features["positions"]), labels)


class _LossRecorder(keras.callbacks.Callback):
    """Appends to ``losses`` the mean loss of every compiled call of a fit: one entry
    per update with ``steps_per_execution`` 1 (Keras logs the running mean over the
    fit call; the loss of the last call is recovered from it)."""

    def __init__(self, losses):
        super().__init__()
        self.losses = losses

    def on_train_begin(self, logs=None):
        self.total, self.steps = 0.0, 0

    def on_train_batch_end(self, batch, logs=None):
        steps = batch + 1
        total = float(logs["loss"]) * steps
        self.losses.append((total - self.total) / (steps - self.steps))
        self.total, self.steps = total, steps


def seed_states(model):
    """The model's variables that ``save_weights`` leaves out: the states of the
    dropout seed generators, which an exact resume needs back."""
    weights = {id(variable) for variable in model.weights}
    return [variable for variable in model.variables if id(variable) not in weights]


class JaxCheckpointFormat:
    """``ckpt-N.weights.h5`` (Keras weights of the training model) plus
    ``ckpt-N.optimizer.npz`` (the optimiser variables in order, ``v0, v1, ...``, and the
    dropout seed states, ``seed0, seed1, ...``)."""

    pattern = r"^ckpt-(\d+)\.(?:weights\.h5|optimizer\.npz)$"

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer

    def save_state(self, file):
        """Write the optimiser variables and the seed states to ``file`` (npz)."""
        arrays = {f"v{i}": np.asarray(v.value) for i, v in enumerate(self.optimizer.variables)}
        arrays.update({f"seed{i}": np.asarray(v.value)
                       for i, v in enumerate(seed_states(self.model))})
        np.savez(file, **arrays)

    def problem(self, prefix):
        import h5py
        name = prefix.rstrip("/").rsplit("/", 1)[-1]
        for suffix in (".weights.h5", ".optimizer.npz"):
            if not storage.exists(prefix + suffix):
                return f"{name}{suffix} is missing"
        try:
            with h5py.File(prefix + ".weights.h5", "r") as file:
                shapes = []
                # The model's arrays (Keras also stores the compiled optimizer's).
                file.visititems(lambda key, item: shapes.append(tuple(item.shape))
                                if isinstance(item, h5py.Dataset) and not key.startswith(
                                    ("optimizer", "metrics", "compile_metrics")) else None)
        except Exception as error:  # noqa: BLE001 - h5py raises several kinds
            return f"{name}.weights.h5 is unreadable ({error})"
        expected = sorted(tuple(w.shape) for w in self.model.weights)
        if sorted(shapes) != expected:
            return (f"{name}.weights.h5 holds {len(shapes)} arrays, the model has "
                    f"{len(expected)} weights (or their shapes differ)")
        try:
            with np.load(prefix + ".optimizer.npz") as saved:
                count = sum(name.startswith("v") for name in saved.files)
                values = [saved[f"v{i}"].shape for i in range(count)]
        except Exception as error:  # noqa: BLE001 - zipfile and NumPy raise several kinds
            return f"{name}.optimizer.npz is unreadable ({error})"
        wanted = [tuple(v.shape) for v in self.optimizer.variables]
        if values != wanted:
            return (f"{name}.optimizer.npz holds {len(values)} arrays, the optimizer has "
                    f"{len(wanted)} variables (or their shapes differ)")
        return None

    def restore(self, prefix):
        self.model.load_weights(prefix + ".weights.h5")
        with np.load(prefix + ".optimizer.npz") as saved:
            for index, variable in enumerate(self.optimizer.variables):
                variable.assign(saved[f"v{index}"])
            # Checkpoints of earlier releases have no seed states: the resume is
            # then exact up to the dropout masks.
            for index, variable in enumerate(seed_states(self.model)):
                if f"seed{index}" in saved.files:
                    variable.assign(saved[f"seed{index}"])


class JaxPretrainer:
    """One pretraining run on the JAX backend (see the module docstring).

    The backend-neutral part (folders, data, vocabulary, model, optimizer, run
    signature, export) is a :class:`bert4x.pretraining.run.PretrainingRun`, as in the
    TensorFlow :class:`bert4x.pretraining.trainer.Pretrainer`; this class adds the
    ``keras.distribution`` training, its checkpoints and its evaluation.

    Args:
        config: a :class:`bert4x.pretraining.PretrainingConfig`.
        log: a callable taking one progress line.
        devices: the devices of the data-parallel mesh (default: all,
            ``keras.distribution.list_devices()``).
    """

    def __init__(self, config, log=print, summary=None, devices=None, start_over=False):
        import keras
        if keras.backend.backend() != "jax":
            raise RuntimeError(
                "the JAX pretraining path needs the JAX backend: set the environment "
                f"variable KERAS_BACKEND=jax before Keras is imported (it is "
                f"{keras.backend.backend()!r})")
        if config.tpu:
            raise NotImplementedError(
                f"tpu={config.tpu!r} is not supported by pretraining on the JAX backend "
                "(it trains on the local devices of keras.distribution; see "
                "pretraining/README.md); use KERAS_BACKEND=tensorflow")
        self.config = config
        self.log = log
        self.start_over = start_over
        self.devices = list(devices or keras.distribution.list_devices())
        if config.batch_size % len(self.devices):
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                             f"{len(self.devices)} devices")
        # Used as a scope around building, restoring and training, so that the
        # caller's keras.distribution setting is left as it was.
        self.distribution = keras.distribution.DataParallel(devices=self.devices)
        self.strategy_kind = f"DataParallel x{len(self.devices)}"
        self.chief = True
        self.run = PretrainingRun(config, summary=summary, log=log)
        self.output_dir, self.checkpoint_dir = self.run.output_dir, self.run.checkpoint_dir
        self.summary = self.run.summary
        with self.distribution.scope():
            self._build()

    def _build(self):
        self.masker = self.run.make_masker()
        self.global_batch = self.config.batch_size
        self.builder, graph = self.run.make_models(
            self.masker, dtype="mixed_bfloat16" if self.config.mixed_precision else None)
        self.train_model = JaxTrainingModel(graph.inputs, graph.outputs, name=graph.name,
                                            accumulation_steps=self.config.accumulation_steps)
        self.optimizer = self.run.make_optimizer()
        # steps_per_loop updates per compiled call, as the TensorFlow route's host loop.
        self.train_model.compile(optimizer=self.optimizer,
                                 steps_per_execution=self.config.steps_per_loop)
        self.optimizer.build(self.train_model.trainable_variables)

    # ------------------------------------------------------------- checkpoints
    def _checkpoint_folder(self):
        from bert4x.pretraining.resume import CheckpointFolder
        return CheckpointFolder(self.checkpoint_dir,
                                JaxCheckpointFormat(self.train_model, self.optimizer),
                                keep=self.config.keep_checkpoints)

    def restore(self):
        """Restore the newest intact checkpoint (or ``init_checkpoint``); return the
        step reached. A damaged newest checkpoint is reported and the one before it
        restored, as on TensorFlow."""
        with self.distribution.scope():
            return self._restore()

    def _restore(self):
        step = self.run.restore(self.builder, self._checkpoint_folder(),
                                start_over=self.start_over)
        if step is not None:
            self.log(f"resumed from {storage.join(self.checkpoint_dir, f'ckpt-{step}')} "
                     f"at step {step}")
        return step or 0

    def save(self, step):
        """Write ``ckpt-STEP.weights.h5`` + ``ckpt-STEP.optimizer.npz`` (each under a
        temporary name, then renamed), then drop checkpoints beyond the newest
        ``keep_checkpoints`` intact ones."""
        prefix = storage.join(self.checkpoint_dir, f"ckpt-{step}")
        temporary = f"{prefix}.tmp-{os.getpid()}.weights.h5"
        self.train_model.save_weights(temporary)
        storage.rename(temporary, prefix + ".weights.h5", overwrite=True)
        with storage.atomic_open(prefix + ".optimizer.npz", "wb") as file:
            JaxCheckpointFormat(self.train_model, self.optimizer).save_state(file)
        self._checkpoint_folder().prune(step)
        return prefix + ".weights.h5"

    # ------------------------------------------------------------------- train
    def _dataset(self, start_example):
        from bert4x.pretraining.pipeline import masked_dataset
        config = self.config
        files = self.run.data_files()
        examples = self.summary["train_examples"]
        if not files or examples <= 0:
            raise ValueError(f"no training example in {config.resolved_data_dir()}")
        # One batch per update: accumulation_steps micro-batches of batch_size.
        return masked_dataset(files, config.seq_length, self.masker,
                              self.global_batch * config.accumulation_steps, examples,
                              start_example=start_example,
                              shuffle_buffer=config.shuffle_buffer,
                              seed=config.seed).map(_to_model_inputs)

    def train(self):
        """Train to ``train_steps`` (resuming), evaluate on held-out data, export.

        Returns:
            A dict like :meth:`Pretrainer.train`'s, plus ``devices`` and ``losses``
            (the loss of every step run in this call).
        """
        with self.distribution.scope():
            return self._train()

    def _train(self):
        import itertools
        from bert4x.pretraining.pipeline import numpy_batches
        config = self.config
        step = self.restore()
        result = {"step": step, "loss": None, "mlm_accuracy": None, "tokens_per_second": None,
                  "devices": len(self.devices), "losses": []}
        start_time = time.time()
        if step < config.train_steps:
            per_update = self.global_batch * config.accumulation_steps
            self.log(f"training {self.strategy_kind} from step {step} to {config.train_steps}: "
                     f"{per_update} sequences of {config.seq_length} per update")
            batches = numpy_batches(self._dataset(step * per_update), self.run.data_files())
            recorder = _LossRecorder(result["losses"])
            window, window_steps, window_start = np.zeros(2), 0, time.time()
            while step < config.train_steps:
                # One fit call up to the next log or checkpoint step, so that a
                # checkpoint always falls between two compiled calls of steps_per_loop.
                updates = min(config.train_steps - step,
                              config.log_every - step % config.log_every,
                              config.checkpoint_every - step % config.checkpoint_every)
                segment = (batch for batch in itertools.islice(batches, updates))
                history = self.train_model.fit(segment, steps_per_epoch=updates, epochs=1,
                                               shuffle=False, verbose=0, callbacks=[recorder])
                step += updates
                window += updates * np.array([history.history["loss"][-1],
                                              history.history["masked_accuracy"][-1]])
                window_steps += updates
                if step % config.log_every == 0 or step == config.train_steps:
                    loss, accuracy = window / window_steps
                    speed = window_steps * per_update * config.seq_length / max(
                        time.time() - window_start, 1e-9)
                    result.update(step=step, loss=float(loss), mlm_accuracy=float(accuracy),
                                  tokens_per_second=speed)
                    self.log(f"step {step}/{config.train_steps} loss {loss:.4f} "
                             f"{config.objective}_acc {accuracy:.4f} tokens/s {speed:,.0f}")
                    window, window_steps, window_start = np.zeros(2), 0, time.time()
                if step % config.checkpoint_every == 0 or step == config.train_steps:
                    self.save(step)
        result["seconds"] = time.time() - start_time
        result["eval"] = self.evaluate() if self.summary.get("valid_shards") else None
        if result["eval"]:
            self.log(f"held-out: loss {result['eval']['loss']:.4f} "
                     f"{config.objective}_acc {result['eval']['accuracy']:.4f} "
                     f"on {result['eval']['targets']:,} targets")
        result["export_dir"] = self.export()
        return result

    def export(self, directory=None):
        """Write the official checkpoint of the model now (see
        :meth:`bert4x.pretraining.run.PretrainingRun.export`); return the folder."""
        return self.run.export(self.builder, directory)

    def evaluate(self, max_batches=None):
        """Loss and accuracy on the held-out shards (mask of epoch 0, no dropout)."""
        from bert4x.pretraining.pipeline import evaluation_dataset, numpy_batches
        shards = self.summary.get("valid_shards") or []
        if not shards:
            return None
        files = self.run.data_files("valid")
        dataset = evaluation_dataset(files, self.config.seq_length, self.masker,
                                     self.global_batch)
        max_batches = max_batches if max_batches is not None else self.config.eval_batches
        if max_batches:
            dataset = dataset.take(max_batches)
        totals = np.zeros(3)
        for features in numpy_batches(dataset, files):
            logits = np.asarray(self.train_model.predict_on_batch(
                [features["token_ids"], features["segment_ids"], features["positions"]]),
                np.float64)
            logits -= logits.max(-1, keepdims=True)
            log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            labels, weights = features["labels"], features["weights"]
            picked = np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
            totals += [-(picked * weights).sum(), weights.sum(),
                       ((logits.argmax(-1) == labels) * weights).sum()]
        count = max(totals[1], 1.0)
        return {"loss": float(totals[0] / count), "accuracy": float(totals[2] / count),
                "targets": int(totals[1])}


def train_with_jax(config, export_only=False, prepare=True, log=print, start_over=False):
    """Prepare the data (if needed), train with JAX data parallelism (resuming), export.

    Needs ``KERAS_BACKEND=jax``. See the module docstring for what differs from the
    TensorFlow path.
    """
    summary = None
    if prepare and config.inputs and not export_only:
        summary = prepare_data(config)
    trainer = JaxPretrainer(config, log=log, summary=summary,
                            start_over=start_over and not export_only)
    if export_only:
        step = trainer.restore()
        if step == 0 and not config.init_checkpoint:
            raise FileNotFoundError(f"--export-only: no training checkpoint in "
                                    f"{trainer.checkpoint_dir}")
        return {"step": step, "export_dir": trainer.export()}
    return trainer.train()


__all__ = ["JaxPretrainer", "JaxTrainingModel", "train_with_jax"]
