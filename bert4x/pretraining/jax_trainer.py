"""Pretraining on the JAX backend: ``model.fit`` under ``keras.distribution``.

The model, vocabulary handling, tf.data masking pipeline and export are those of the
TensorFlow path (both trainers hold a :class:`bert4x.pretraining.run.PretrainingRun`);
tf.data serves only as the input pipeline (iterated as NumPy). Differences from the TensorFlow path:

* distribution is ``keras.distribution`` over a ``DeviceMesh`` of the devices of all
  processes (``config.mesh``, ``"data=D,model=M"``; by default data parallelism over
  every device): ``DataParallel`` when ``model`` is 1, else ``ModelParallel`` with
  :func:`bert4x.distribution.layout_map` (Megatron-style splits). Several processes
  (hosts) join through ``keras.distribution.initialize`` when
  ``KERAS_DISTRIBUTION_NUM_PROCESSES`` or ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` is set;
  each process reads, parses and masks only its own rows of every global batch, and
  only process 0 logs, writes checkpoints, prunes and exports. ``tpu`` (any value)
  trains on the TPU chips JAX sees, by the same code path; ``tf.distribute``
  strategies are not used.
* one training step is one optimiser update of ``accumulation_steps`` micro-batches
  (:class:`JaxTrainingModel`); its loss is the mean cross-entropy over all target
  tokens of the update, as on TensorFlow. ``mixed_precision`` builds the model with
  the ``mixed_bfloat16`` policy; ``steps_per_loop`` is ``steps_per_execution``.
* checkpoints are ``ckpt-N.weights.npz`` (the training model's weights, gathered
  whole from every device and process) plus ``ckpt-N.optimizer.npz`` (the optimiser
  variables and dropout seed states), each written under a temporary name and
  renamed. Being whole arrays, they restore on any mesh. A restarted run resumes
  from the newest intact checkpoint (as on TensorFlow, see
  :mod:`bert4x.pretraining.resume`) at its step and data position, and ends with the
  weights of an uninterrupted run (bit for bit on the same mesh on CPU; see
  pretraining/README.md for GPUs and other meshes). Checkpoints of earlier releases
  (``ckpt-N.weights.h5``) are still restored.
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


# ------------------------------------------------------------------ processes
NUM_PROCESSES_VARIABLE = "KERAS_DISTRIBUTION_NUM_PROCESSES"
JOB_ADDRESSES_VARIABLE = "KERAS_DISTRIBUTION_JOB_ADDRESSES"


def initialize_processes(environ=None):
    """Join the other processes of a several-host run, once, before JAX starts.

    Calls ``keras.distribution.initialize()`` (which reads
    ``KERAS_DISTRIBUTION_JOB_ADDRESSES``, ``KERAS_DISTRIBUTION_NUM_PROCESSES`` and
    ``KERAS_DISTRIBUTION_PROCESS_ID``) when the number of processes or the job
    addresses are set; on a Cloud TPU pod slice JAX finds the coordinator and the
    process id itself. Returns whether this process is one of several.
    """
    import jax
    environ = os.environ if environ is None else environ
    wanted = environ.get(NUM_PROCESSES_VARIABLE) or environ.get(JOB_ADDRESSES_VARIABLE)
    if wanted and not jax.distributed.is_initialized():
        keras.distribution.initialize()
    return jax.process_count() > 1


def host_array(value):
    """The whole array of ``value`` as NumPy on this host. An array split over the
    devices of several processes is gathered: every process must call this, in the
    same order (it is a collective)."""
    import jax
    if isinstance(value, jax.Array) and not (value.is_fully_addressable
                                             or value.is_fully_replicated):
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(value)


def barrier(name):
    """Wait for every process (nothing to wait for in a single process)."""
    import jax
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def process_rows(mesh, rows, batch_axis="data"):
    """``(first, stop)``: the rows of a global batch of ``rows`` that this process's
    devices hold along ``batch_axis`` of ``mesh`` (a ``keras.distribution.DeviceMesh``).
    They must be one contiguous block (they are when the mesh lists the devices of
    each process together, as ``list_devices()`` does)."""
    import jax
    by_name = {f"{device.platform}:{device.id}": device for device in jax.devices()}
    axis = list(mesh.axis_names).index(batch_axis)
    shards = mesh.shape[axis]
    if rows % shards:
        raise ValueError(f"a batch of {rows} rows cannot be split over the {shards} "
                         f"devices of the {batch_axis!r} axis")
    devices = np.asarray(mesh.devices)
    mine = sorted({index[axis] for index in np.ndindex(devices.shape)
                   if _device(by_name, devices[index]).process_index == jax.process_index()})
    if mine != list(range(mine[0], mine[-1] + 1)):
        raise ValueError(f"the devices of process {jax.process_index()} hold rows "
                         f"{mine} of the {batch_axis!r} axis, not one block")
    per_shard = rows // shards
    return mine[0] * per_shard, (mine[-1] + 1) * per_shard


def _device(by_name, device):
    return device if not isinstance(device, str) else by_name[device]


# ---------------------------------------------------------------- checkpoints
class JaxCheckpointFormat:
    """``ckpt-N.weights.npz`` (the training model's weights in order, ``w0, w1, ...``,
    and their ``paths``) plus ``ckpt-N.optimizer.npz`` (the optimiser variables in
    order, ``v0, v1, ...``, and the dropout seed states, ``seed0, seed1, ...``).
    Arrays are whole (gathered from every device), so a checkpoint restores on any
    mesh. Checkpoints of earlier releases hold ``ckpt-N.weights.h5`` (Keras weights)
    instead of ``ckpt-N.weights.npz``; they are checked and restored too."""

    pattern = r"^ckpt-(\d+)\.(?:weights\.npz|weights\.h5|optimizer\.npz)$"

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer

    def arrays(self):
        """``(weights, state)``: the arrays of both files (collective: every process
        calls it; only process 0 writes them)."""
        weights = {f"w{i}": host_array(v.value) for i, v in enumerate(self.model.weights)}
        weights["paths"] = np.array([v.path for v in self.model.weights])
        state = {f"v{i}": host_array(v.value) for i, v in enumerate(self.optimizer.variables)}
        state.update({f"seed{i}": host_array(v.value)
                      for i, v in enumerate(seed_states(self.model))})
        return weights, state

    def problem(self, prefix):
        name = prefix.rstrip("/").rsplit("/", 1)[-1]
        if storage.exists(prefix + ".weights.npz"):
            problem = self._weights_problem(prefix + ".weights.npz", name)
        elif storage.exists(prefix + ".weights.h5"):
            problem = self._legacy_weights_problem(prefix + ".weights.h5", name)
        else:
            problem = f"{name}.weights.npz is missing"
        if problem:
            return problem
        if not storage.exists(prefix + ".optimizer.npz"):
            return f"{name}.optimizer.npz is missing"
        try:
            with storage.open(prefix + ".optimizer.npz", "rb") as file, np.load(file) as saved:
                count = sum(name.startswith("v") for name in saved.files)
                values = [saved[f"v{i}"].shape for i in range(count)]
        except Exception as error:  # noqa: BLE001 - zipfile and NumPy raise several kinds
            return f"{name}.optimizer.npz is unreadable ({error})"
        wanted = [tuple(v.shape) for v in self.optimizer.variables]
        if values != wanted:
            return (f"{name}.optimizer.npz holds {len(values)} arrays, the optimizer has "
                    f"{len(wanted)} variables (or their shapes differ)")
        return None

    def _weights_problem(self, path, name):
        try:
            with storage.open(path, "rb") as file, np.load(file) as saved:
                paths = [str(p) for p in saved["paths"]]
                shapes = [saved[f"w{i}"].shape for i in range(len(paths))]
        except Exception as error:  # noqa: BLE001 - zipfile and NumPy raise several kinds
            return f"{name}.weights.npz is unreadable ({error})"
        expected = [(v.path, tuple(v.shape)) for v in self.model.weights]
        if list(zip(paths, shapes)) != expected:
            return (f"{name}.weights.npz holds {len(paths)} weights, the model has "
                    f"{len(expected)} (or their names or shapes differ)")
        return None

    def _legacy_weights_problem(self, path, name):
        import h5py
        try:
            with h5py.File(path, "r") as file:
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
        return None

    def restore(self, prefix):
        # Assigning whole arrays lays them out as each variable's layout says.
        if storage.exists(prefix + ".weights.npz"):
            with storage.open(prefix + ".weights.npz", "rb") as file, np.load(file) as saved:
                for index, variable in enumerate(self.model.weights):
                    variable.assign(saved[f"w{index}"])
        else:
            self.model.load_weights(prefix + ".weights.h5")
        with storage.open(prefix + ".optimizer.npz", "rb") as file, np.load(file) as saved:
            for index, variable in enumerate(self.optimizer.variables):
                variable.assign(saved[f"v{index}"])
            # Checkpoints of earlier releases have no seed states: the resume is
            # then exact up to the dropout masks.
            for index, variable in enumerate(seed_states(self.model)):
                if f"seed{index}" in saved.files:
                    variable.assign(saved[f"seed{index}"])


def _quiet(line):
    """The log of the processes other than process 0."""


class JaxPretrainer:
    """One pretraining run on the JAX backend (see the module docstring).

    The backend-neutral part (folders, data, vocabulary, model, optimizer, run
    signature, export) is a :class:`bert4x.pretraining.run.PretrainingRun`, as in the
    TensorFlow :class:`bert4x.pretraining.trainer.Pretrainer`; this class adds the
    ``keras.distribution`` training, its checkpoints and its evaluation.

    Args:
        config: a :class:`bert4x.pretraining.PretrainingConfig`; ``config.mesh``
            (``"data=D,model=M"``) shapes the device mesh, ``config.tpu`` picks the
            TPU chips.
        log: a callable taking one progress line (process 0 only).
        devices: the devices of the mesh (default: all of every process,
            ``keras.distribution.list_devices()``).

    Example:
        >>> trainer = JaxPretrainer(config.replace(mesh="data=2,model=4"))  # doctest: +SKIP
        >>> result = trainer.train()  # doctest: +SKIP
    """

    def __init__(self, config, log=print, summary=None, devices=None, start_over=False):
        import jax
        if keras.backend.backend() != "jax":
            raise RuntimeError(
                "the JAX pretraining path needs the JAX backend: set the environment "
                f"variable KERAS_BACKEND=jax before Keras is imported (it is "
                f"{keras.backend.backend()!r})")
        initialize_processes()
        self.config = config
        self.chief = jax.process_index() == 0
        self.log = log if self.chief else _quiet
        self.start_over = start_over
        self.devices = list(devices or _mesh_devices(config.tpu))
        from bert4x.distribution import parse_mesh
        self.mesh_shape = parse_mesh(config.mesh, len(self.devices))
        data, model = self.mesh_shape
        if config.batch_size % data:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                             f"{data} devices of the mesh's data axis")
        self.run = PretrainingRun(config, summary=summary, log=self.log)
        self.output_dir, self.checkpoint_dir = self.run.output_dir, self.run.checkpoint_dir
        self.summary = self.run.summary
        self.masker = self.run.make_masker()
        self.dtype = "mixed_bfloat16" if config.mixed_precision else None
        # Used as a scope around building, restoring and training, so that the
        # caller's keras.distribution setting is left as it was.
        self.distribution = self._make_distribution()
        processes = jax.process_count()
        self.strategy_kind = (f"DataParallel x{data}" if model == 1 else
                              f"ModelParallel data={data} model={model}") + (
            f" over {processes} processes" if processes > 1 else "")
        with self.distribution.scope():
            self._build()

    def _make_distribution(self):
        data, model = self.mesh_shape
        # Each process feeds its own rows (_dataset), so Keras must not shard the input.
        if model == 1:
            return keras.distribution.DataParallel(devices=self.devices,
                                                   auto_shard_dataset=False)
        from bert4x.distribution import layout_map
        mesh = keras.distribution.DeviceMesh((data, model), ["data", "model"], self.devices)
        # The layout map is read from a build without weights (keras.StatelessScope).
        layouts = layout_map(lambda: self.run.make_models(self.masker, dtype=self.dtype)[0],
                             mesh)
        return keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="data",
                                                auto_shard_dataset=False)

    def _build(self):
        self.global_batch = self.config.batch_size
        self.builder, graph = self.run.make_models(self.masker, dtype=self.dtype)
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
                                start_over=self.start_over, chief=self.chief)
        if step is not None:
            self.log(f"resumed from {storage.join(self.checkpoint_dir, f'ckpt-{step}')} "
                     f"at step {step}")
        return step or 0

    def save(self, step):
        """Write ``ckpt-STEP.weights.npz`` + ``ckpt-STEP.optimizer.npz`` (each under a
        temporary name, then renamed), then drop checkpoints beyond the newest
        ``keep_checkpoints`` intact ones. Every process takes part (the arrays are
        gathered); process 0 writes."""
        prefix = storage.join(self.checkpoint_dir, f"ckpt-{step}")
        checkpoint_format = JaxCheckpointFormat(self.train_model, self.optimizer)
        weights, state = checkpoint_format.arrays()
        if self.chief:
            storage.makedirs(self.checkpoint_dir)
            with storage.atomic_open(prefix + ".weights.npz", "wb") as file:
                np.savez(file, **weights)
            with storage.atomic_open(prefix + ".optimizer.npz", "wb") as file:
                np.savez(file, **state)
            self._checkpoint_folder().prune(step)
        barrier(f"bert4x checkpoint {step}")
        return prefix + ".weights.npz"

    # ------------------------------------------------------------------- train
    def _rows(self, rows):
        """This process's block of a global batch of ``rows``."""
        return process_rows(self.distribution.device_mesh, rows, self.distribution.batch_dim_name)

    def _dataset(self, start_example):
        from bert4x.pretraining.pipeline import masked_dataset
        config = self.config
        files = self.run.data_files()
        examples = self.summary["train_examples"]
        if not files or examples <= 0:
            raise ValueError(f"no training example in {config.resolved_data_dir()}")
        # One batch per update: accumulation_steps micro-batches of batch_size, of
        # which this process reads its own block of rows.
        per_update = self.global_batch * config.accumulation_steps
        first, stop = self._rows(per_update)
        return masked_dataset(files, config.seq_length, self.masker, stop - first, examples,
                              start_example=start_example,
                              shuffle_buffer=config.shuffle_buffer, seed=config.seed,
                              rows=(first, stop, per_update)).map(_to_model_inputs)

    def train(self):
        """Train to ``train_steps`` (resuming), evaluate on held-out data, export.

        Returns:
            A dict like :meth:`Pretrainer.train`'s, plus ``devices``, ``mesh``
            (``(data, model)``) and ``losses`` (the loss of every step run in this call).
        """
        with self.distribution.scope():
            return self._train()

    def _train(self):
        import itertools
        from bert4x.pretraining.pipeline import numpy_batches
        config = self.config
        step = self.restore()
        result = {"step": step, "loss": None, "mlm_accuracy": None, "tokens_per_second": None,
                  "devices": len(self.devices), "mesh": list(self.mesh_shape), "losses": []}
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
        :meth:`bert4x.pretraining.run.PretrainingRun.export`) from process 0; return
        the folder. Every process takes part (the weights are gathered)."""
        import jax
        if jax.process_count() == 1:
            return self.run.export(self.builder, directory)
        values = [host_array(v.value) for v in self.builder.model.weights]
        exported = directory or self.config.export_dir()
        if self.chief:
            # A copy of the model on this host's first device, given the whole arrays.
            local = keras.distribution.DataParallel(devices=[_local_device_name()])
            with local.scope():
                builder, _ = self.run.make_models(self.masker, dtype=self.dtype)
            builder.model.set_weights(values)
            exported = self.run.export(builder, directory)
        barrier("bert4x export")
        return exported

    def evaluate(self, max_batches=None):
        """Loss and accuracy on the held-out shards (mask of epoch 0, no dropout)."""
        with self.distribution.scope():
            return self._evaluate(max_batches)

    def _evaluate(self, max_batches):
        import jax
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
        first, stop = self._rows(self.global_batch)
        sharding = self.distribution.get_data_layout((self.global_batch, 1)).backend_layout
        totals_fn = jax.jit(self._evaluation_totals)
        trainable = [v.value for v in self.train_model.trainable_variables]
        non_trainable = [v.value for v in self.train_model.non_trainable_variables]
        totals = np.zeros(3)
        for features in numpy_batches(dataset, files):
            # The last batch is padded to the global batch with rows of weight 0.
            padding = self.global_batch - len(features["labels"])
            arrays = [np.pad(features[key], [(0, padding)] + [(0, 0)] * (
                features[key].ndim - 1))[first:stop]
                for key in ("token_ids", "segment_ids", "positions", "labels", "weights")]
            arrays = [jax.make_array_from_process_local_data(sharding, array)
                      for array in arrays]
            totals += np.asarray(totals_fn(trainable, non_trainable, *arrays), np.float64)
        count = max(totals[1], 1.0)
        return {"loss": float(totals[0] / count), "accuracy": float(totals[2] / count),
                "targets": int(totals[1])}

    def _evaluation_totals(self, trainable, non_trainable, token_ids, segment_ids, positions,
                           labels, weights):
        """Summed cross-entropy, target count and correct targets of one batch."""
        import jax
        import jax.numpy as jnp
        logits, _ = self.train_model.stateless_call(
            trainable, non_trainable, [token_ids, segment_ids, positions], training=False)
        log_probs = jax.nn.log_softmax(logits.astype("float32"), axis=-1)
        picked = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
        correct = (jnp.argmax(log_probs, axis=-1) == labels).astype("float32")
        return jnp.stack([-jnp.sum(picked * weights), jnp.sum(weights),
                          jnp.sum(correct * weights)])


def _mesh_devices(tpu):
    """All devices of every process; with ``tpu`` set, the TPU chips JAX sees."""
    if not tpu:
        return keras.distribution.list_devices()
    try:
        devices = keras.distribution.list_devices("tpu")
    except RuntimeError as error:
        raise RuntimeError(
            f"tpu={tpu!r} on the JAX backend trains on the TPU chips JAX sees, and JAX "
            f"sees none ({error}). Run on a TPU VM with jax[tpu] (libtpu) installed, "
            "or leave tpu unset") from None
    if not devices:
        raise RuntimeError(f"tpu={tpu!r}: JAX sees no TPU chip")
    return devices


def _local_device_name():
    import jax
    device = jax.local_devices()[0]
    return f"{device.platform}:{device.id}"


def train_with_jax(config, export_only=False, prepare=True, log=print, start_over=False,
                   devices=None):
    """Prepare the data (if needed), train under ``keras.distribution`` (resuming),
    export.

    Needs ``KERAS_BACKEND=jax``. See the module docstring for what differs from the
    TensorFlow path. With several processes, process 0 prepares the data while the
    others wait for it. ``devices``: those of the mesh (default: all of every process).
    """
    import jax
    summary = None
    several = initialize_processes()
    if prepare and config.inputs and not export_only:
        if jax.process_index() == 0:
            summary = prepare_data(config)
        if several:
            barrier("bert4x data prepared")
            summary = None  # each process reads dataset.json
    trainer = JaxPretrainer(config, log=log, summary=summary, devices=devices,
                            start_over=start_over and not export_only)
    if export_only:
        step = trainer.restore()
        if step == 0 and not config.init_checkpoint:
            raise FileNotFoundError(f"--export-only: no training checkpoint in "
                                    f"{trainer.checkpoint_dir}")
        return {"step": step, "export_dir": trainer.export()}
    return trainer.train()


__all__ = ["JaxCheckpointFormat", "JaxPretrainer", "JaxTrainingModel", "initialize_processes",
           "process_rows", "train_with_jax"]
