"""Pretraining on the JAX backend: ``model.fit`` under ``keras.distribution.DataParallel``.

The model, vocabulary handling, tf.data masking pipeline and export are those of the
TensorFlow path (both trainers hold a :class:`bert4x.pretraining.run.PretrainingRun`);
tf.data serves only as the input pipeline (iterated as NumPy). Differences from the TensorFlow path:

* distribution is ``keras.distribution.DataParallel`` over ``list_devices()`` (all
  local devices; one device is plain training). Multi-host JAX, TPU addresses and
  ``tf.distribute`` strategies are not used.
* the loss of a step is the mean cross-entropy over the target tokens of the global
  batch, as on TensorFlow; ``accumulation_steps > 1``, ``tpu`` and
  ``mixed_precision`` raise ``NotImplementedError``.
* checkpoints are Keras ``.weights.h5`` files of the training model plus the optimiser
  variables (``.optimizer.npz``), each written under a temporary name and renamed. A
  restarted run resumes from the newest intact checkpoint (as on TensorFlow, see
  :mod:`bert4x.pretraining.resume`) at its step and data position; bit-identical final weights against an uninterrupted run are not
  guaranteed (nor tested) on JAX.
* no TensorBoard logs (progress lines only); ``jit_compile`` is ignored (JAX always
  compiles).
"""

import os
import time

import numpy as np

from bert4x import storage
from bert4x.pretraining.run import PretrainingRun, prepare_data


def masked_cross_entropy(y_true, y_pred):
    """Mean sparse cross-entropy over the targets; ``y_true < 0`` marks padding.

    Matches the TensorFlow loop: ``sum(ce * weights) / max(sum(weights), 1)`` over the
    whole (global) batch.
    """
    import keras
    ops = keras.ops
    labels = ops.cast(y_true, "int32")
    weights = ops.cast(labels >= 0, "float32")
    logits = ops.cast(y_pred, "float32")
    per_token = keras.losses.sparse_categorical_crossentropy(
        ops.maximum(labels, 0), logits, from_logits=True)
    return ops.sum(per_token * weights) / ops.maximum(ops.sum(weights), 1.0)


def masked_accuracy(y_true, y_pred):
    """Accuracy over the targets (``y_true < 0`` is padding) of one batch."""
    import keras
    ops = keras.ops
    labels = ops.cast(y_true, "int32")
    weights = ops.cast(labels >= 0, "float32")
    correct = ops.cast(ops.argmax(y_pred, axis=-1) == labels, "float32")
    return ops.sum(correct * weights) / ops.maximum(ops.sum(weights), 1.0)


def _to_model_inputs(features):
    """Masker features -> ``((token_ids, segment_ids, positions), labels)``; padding
    targets (weight 0) get label -1."""
    import tensorflow as tf
    labels = tf.where(features["weights"] > 0, features["labels"], -1)
    return ((features["token_ids"], features["segment_ids"], features["positions"]), labels)


class JaxCheckpointFormat:
    """``ckpt-N.weights.h5`` (Keras weights of the training model) plus
    ``ckpt-N.optimizer.npz`` (the optimiser variables in order)."""

    pattern = r"^ckpt-(\d+)\.(?:weights\.h5|optimizer\.npz)$"

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer

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
                values = [saved[f"v{i}"].shape for i in range(len(saved.files))]
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
        unsupported = [(config.accumulation_steps > 1,
                        f"accumulation_steps={config.accumulation_steps}"),
                       (bool(config.tpu), f"tpu={config.tpu!r}"),
                       (config.mixed_precision, "mixed_precision=true"),
                       (config.steps_per_loop > 1, f"steps_per_loop={config.steps_per_loop}")]
        for bad, setting in unsupported:
            if bad:
                raise NotImplementedError(
                    f"{setting} is not supported by pretraining on the JAX backend "
                    "(see pretraining/README.md); use KERAS_BACKEND=tensorflow")
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
        self.builder, self.train_model = self.run.make_models(self.masker)
        self.optimizer = self.run.make_optimizer()
        self.train_model.compile(optimizer=self.optimizer, loss=masked_cross_entropy,
                                 metrics=[masked_accuracy])
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
            np.savez(file, **{f"v{i}": np.asarray(v.value)
                              for i, v in enumerate(self.optimizer.variables)})
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
        return masked_dataset(files, config.seq_length, self.masker, self.global_batch,
                              examples, start_example=start_example,
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
        import keras
        from bert4x.pretraining.pipeline import numpy_batches
        config = self.config
        step = self.restore()
        result = {"step": step, "loss": None, "mlm_accuracy": None, "tokens_per_second": None,
                  "devices": len(self.devices), "losses": []}
        start_time = time.time()
        if step < config.train_steps:
            self.log(f"training {self.strategy_kind} from step {step} to {config.train_steps}: "
                     f"{self.global_batch} sequences of {config.seq_length} per update")
            tokens_per_step = self.global_batch * config.seq_length
            trainer = self

            class Progress(keras.callbacks.Callback):
                def __init__(self):
                    super().__init__()
                    self.window_start = time.time()
                    self.window_steps = 0
                    self.window = np.zeros(2)
                    self.previous = np.zeros(2)

                def on_train_batch_end(self, batch, logs=None):
                    # Keras logs the running means over this fit call; recover the
                    # loss and accuracy of this step and of the log window from them.
                    current, count = step + batch + 1, batch + 1
                    sums = np.array([float(logs["loss"]), float(logs["masked_accuracy"])])
                    sums *= count
                    this_step = sums - self.previous
                    self.previous = sums
                    result["losses"].append(float(this_step[0]))
                    self.window += this_step
                    self.window_steps += 1
                    if current % config.log_every == 0 or current == config.train_steps:
                        loss, accuracy = self.window / self.window_steps
                        speed = self.window_steps * tokens_per_step / max(
                            time.time() - self.window_start, 1e-9)
                        result.update(step=current, loss=float(loss),
                                      mlm_accuracy=float(accuracy), tokens_per_second=speed)
                        trainer.log(f"step {current}/{config.train_steps} loss {loss:.4f} "
                                    f"{config.objective}_acc {accuracy:.4f} "
                                    f"tokens/s {speed:,.0f}")
                        self.window_start, self.window_steps = time.time(), 0
                        self.window = np.zeros(2)
                    if current % config.checkpoint_every == 0 or current == config.train_steps:
                        _ = self.model  # the property syncs the JAX state into the variables
                        trainer.save(current)

            dataset = self._dataset(step * self.global_batch)
            batches = numpy_batches(dataset, self.run.data_files())  # a generator
            self.train_model.fit(batches,
                                 steps_per_epoch=config.train_steps - step, epochs=1,
                                 shuffle=False, verbose=0, callbacks=[Progress()])
            result["step"] = config.train_steps
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


__all__ = ["JaxPretrainer", "masked_accuracy", "masked_cross_entropy", "train_with_jax"]
