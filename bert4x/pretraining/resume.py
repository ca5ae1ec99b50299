"""Numbered training checkpoints that survive damage (both backends).

A run folder's ``checkpoints/`` holds ``ckpt-STEP.*`` files. Resuming never trusts
a pointer file: it lists the numbered checkpoints, verifies the newest (every file
present, readable, every variable of the model there with its shape), restores it,
and falls back to the next older one when that fails, with a warning that names the
file and what is wrong. When checkpoints exist but none is intact, the run stops with
an error naming the folder and the damage; it starts over from step 0 only when asked
(``start_over=True``, ``--start-over``), and then moves the old files aside instead of
deleting them. Pruning keeps the newest ``keep`` *intact* checkpoints, so a damaged
newer checkpoint never costs an intact older one.

The file format is the backend's (:class:`TensorFlowCheckpointFormat`,
``bert4x.pretraining.jax_trainer.JaxCheckpointFormat``); this module only decides
which step to restore and which files to keep.
"""

import os
import re
import shutil
import time
import warnings
import weakref

import numpy as np

from bert4x import storage


# What a save killed midway leaves in the checkpoints folder, by the writer's own
# names: TensorFlow's shard folder ``ckpt-N_temp/`` (files ``part-*`` only, some
# still under a ``.tempstate<random>`` name), the JAX route's
# ``ckpt-N.tmp-<pid>.weights.h5`` and storage.atomic_open's ``<name>.tmp-<random>``.
_TENSORFLOW_STAGING = re.compile(r"^ckpt-\d+_temp$")
_TENSORFLOW_SHARD = re.compile(
    r"^part-\d{5}-of-\d{5}\.(?:index|data-\d{5}-of-\d{5})(?:\.tempstate\d+)?$")
_TEMPORARY_FILE = re.compile(r"^(?:ckpt-\d+\.tmp-\d+\.weights\.h5|"
                             r"(?:ckpt-\d+\.optimizer\.npz|checkpoint|model_signature\.json)"
                             r"\.tmp-[0-9a-f]{12})$")


class DamagedCheckpointError(ValueError):
    """Checkpoints exist in a folder but none of them can be restored."""


def _basename(path):
    return path.rstrip("/").rsplit("/", 1)[-1]


def _size(path):
    with storage.open(path, "rb") as file:
        file.seek(0, 2)
        return file.tell()


def _escape_checkpoint_name(name):
    """TensorFlow's escaping of a name inside a checkpoint key ('.' -> '..', '/' -> '.S')."""
    return name.replace(".", "..").replace("/", ".S")


class CheckpointFolder:
    """The numbered checkpoints of one run (``directory``) in a backend's ``file_format``.

    Args:
        directory: the ``checkpoints`` folder (local, ``gs://`` or ``ram://``).
        file_format: an object with ``pattern`` (a regular expression whose group 1
            is the step, matched against file names), ``problem(prefix)`` (None when
            the checkpoint at ``prefix`` looks intact, else what is wrong) and
            ``restore(prefix)``.
        keep: how many intact checkpoints :meth:`prune` keeps.

    Example:
        >>> folder = CheckpointFolder("runs/x/checkpoints", format, keep=3)  # doctest: +SKIP
        >>> step = folder.restore_newest_intact()  # doctest: +SKIP
    """

    def __init__(self, directory, file_format, keep=3):
        self.directory = directory
        self.format = file_format
        self.keep = max(int(keep), 1)

    def prefix(self, step):
        return storage.join(self.directory, f"ckpt-{int(step)}")

    def files(self):
        """``{step: [file names]}`` of the numbered checkpoints present."""
        if not storage.isdir(self.directory):
            return {}
        found = {}
        for name in storage.listdir(self.directory):
            match = re.match(self.format.pattern, name.rstrip("/"))
            if match:
                found.setdefault(int(match.group(1)), []).append(name.rstrip("/"))
        return found

    def steps(self):
        """The steps that have checkpoint files, newest first."""
        return sorted(self.files(), reverse=True)

    def restore_newest_intact(self, start_over=False, log=None):
        """Restore the newest intact checkpoint; return its step (None: no checkpoint).

        Args:
            start_over: move every checkpoint aside (kept, not deleted) and return
                None, so that training starts at step 0.
            log: progress-line callable.

        Raises:
            DamagedCheckpointError: checkpoints exist but none is intact; the
                message names the folder and what is wrong with each.
        """
        if start_over:
            self._set_aside(log)
            return None
        problems = []
        for step in self.steps():
            prefix = self.prefix(step)
            problem = self.format.problem(prefix)
            if problem is None:
                try:
                    self.format.restore(prefix)
                except Exception as error:  # noqa: BLE001 - any reader error means damage
                    problem = f"cannot be restored ({type(error).__name__}: {error})"
            if problem is None:
                return step
            problems.append(f"ckpt-{step}: {problem}")
            warnings.warn(f"checkpoint {prefix} is damaged: {problem}; trying the one "
                          "before it", RuntimeWarning, stacklevel=2)
        if problems:
            raise DamagedCheckpointError(
                f"no intact checkpoint in {self.directory}: " + "; ".join(problems) +
                ". Repair or restore the files, or pass --start-over (start_over=True) to "
                "train from step 0 (the damaged files are then moved aside, not deleted).")
        return None

    def prune(self, current_step):
        """Delete the checkpoints older than the newest ``keep`` intact ones.

        Damaged checkpoints never count as kept, so an intact older checkpoint is
        never deleted because a newer one failed; damaged ones older than the
        oldest kept checkpoint go too (they can never be restored). Checkpoints
        newer than ``current_step`` (left by an earlier, longer run) are kept.
        What killed saves left goes too (:meth:`remove_stale_staging`).
        """
        self.remove_stale_staging()
        files = self.files()
        intact = [step for step in sorted(files, reverse=True)
                  if step <= current_step and self.format.problem(self.prefix(step)) is None]
        if len(intact) <= self.keep:
            return
        oldest_kept = intact[self.keep - 1]
        for step, names in files.items():
            if step < oldest_kept:
                for name in names:
                    storage.remove(storage.join(self.directory, name))

    def remove_stale_staging(self, log=None):
        """Remove what saves killed midway left in the folder, and nothing else.

        Only names the checkpoint writers use are removed: a ``ckpt-N_temp``
        folder holding TensorFlow's shard files (``part-*``) and nothing else, and
        the temporary files of the JAX route and of atomic writes. A folder of
        that name holding anything else is kept (it is not proven to be a writer's).
        Call it only while no save into the folder runs (at start, after a save).
        """
        if not storage.isdir(self.directory):
            return
        removed = []
        for name in storage.listdir(self.directory):
            path = storage.join(self.directory, name)
            if _TENSORFLOW_STAGING.match(name) and storage.isdir(path):
                contents = storage.listdir(path)
                if all(_TENSORFLOW_SHARD.match(item) and storage.isfile(storage.join(path, item))
                       for item in contents):
                    storage.rmtree(path)
                    removed.append(name)
            elif _TEMPORARY_FILE.match(name) and storage.isfile(path):
                storage.remove(path)
                removed.append(name)
        if removed and log:
            log(f"removed what killed saves left in {self.directory}: {removed}")

    def write_pointer(self, step):
        """TensorFlow's ``checkpoint`` pointer file (read by TensorBoard and
        ``tf.train.latest_checkpoint``; resuming does not rely on it)."""
        steps = sorted(step_ for step_ in self.files() if step_ <= step)
        lines = [f'model_checkpoint_path: "ckpt-{step}"'] + [
            f'all_model_checkpoint_paths: "ckpt-{s}"' for s in steps]
        storage.atomic_write(storage.join(self.directory, "checkpoint"), "\n".join(lines) + "\n")

    def _set_aside(self, log):
        files = self.files()
        if not files:
            return
        aside = f"{self.directory.rstrip('/')}-set-aside-{time.strftime('%Y%m%d-%H%M%S')}"
        storage.makedirs(aside)
        names = [name for names in files.values() for name in names]
        if storage.exists(storage.join(self.directory, "checkpoint")):
            names.append("checkpoint")
        for name in names:
            storage.rename(storage.join(self.directory, name), storage.join(aside, name))
        if log:
            log(f"start over: moved {len(names)} checkpoint files to {aside}")


class TensorFlowCheckpointFormat:
    """``tf.train.Checkpoint`` files (``ckpt-N.index`` + ``ckpt-N.data-*``).

    Args:
        checkpoint: the ``tf.train.Checkpoint`` that is restored.
        model_variables: ``{path: variable}`` tracked as ``model_variables`` in it.
        optimizer_variables: the optimiser's variables (checked by count and shapes,
            since their keys are the optimiser's own).
        extra: ``{key: variable}`` of other top-level tracked variables.
    """

    pattern = r"^ckpt-(\d+)\.(?:index|data-\d{5}-of-\d{5})$"

    def __init__(self, checkpoint, model_variables, optimizer_variables, extra=None):
        self.checkpoint = checkpoint
        self.expected = {
            f"model_variables/{_escape_checkpoint_name(path)}/.ATTRIBUTES/VARIABLE_VALUE":
            list(variable.shape) for path, variable in model_variables.items()}
        for key, variable in (extra or {}).items():
            self.expected[f"{key}/.ATTRIBUTES/VARIABLE_VALUE"] = list(variable.shape)
        self.optimizer_shapes = sorted(tuple(v.shape) for v in optimizer_variables)

    def problem(self, prefix):
        import tensorflow as tf
        name = _basename(prefix)
        if not storage.exists(prefix + ".index"):
            return f"{name}.index is missing"
        data = [path for path in storage.prefix_files(prefix)
                if re.fullmatch(r"\.data-\d{5}-of-\d{5}", path[len(prefix):])]
        if not data:
            return f"{name}.data-00000-of-00001 is missing"
        shards = int(data[0].rsplit("-of-", 1)[1])
        for index in range(shards):
            path = f"{prefix}.data-{index:05d}-of-{shards:05d}"
            if path not in data:
                return f"{_basename(path)} is missing"
        try:
            # Not tf.train.load_checkpoint: it takes a ram:// prefix for a folder.
            readable = storage.tensorflow_prefix(prefix)
            try:
                reader = tf.compat.v1.train.NewCheckpointReader(readable)
            finally:
                if readable != prefix:
                    shutil.rmtree(os.path.dirname(readable), ignore_errors=True)
            shapes = reader.get_variable_to_shape_map()
            dtypes = reader.get_variable_to_dtype_map()
        except Exception as error:  # noqa: BLE001 - TF raises several kinds here
            return f"{name}.index is unreadable ({error})"
        missing = [key for key in self.expected if key not in shapes]
        if missing:
            return (f"{name}.index lacks {len(missing)} variable(s) of the model, e.g. "
                    f"{missing[:3]}")
        wrong = [f"{key}: {shapes[key]} there, {shape} in the model"
                 for key, shape in self.expected.items() if list(shapes[key]) != shape]
        if wrong:
            return f"{name}.index has other shapes: {'; '.join(wrong[:3])}"
        optimizer = sorted(tuple(shape) for key, shape in shapes.items()
                           if key.startswith("optimizer/") and key.endswith("VARIABLE_VALUE"))
        if optimizer != self.optimizer_shapes:
            return (f"{name}.index holds {len(optimizer)} optimizer variables, the optimizer "
                    f"has {len(self.optimizer_shapes)} (or their shapes differ)")
        # Tensors are stored raw: data files smaller than the tensors are truncated.
        needed = sum(int(np.prod(shape)) * dtypes[key].size for key, shape in shapes.items()
                     if dtypes[key] != tf.string)
        size = sum(_size(path) for path in data)
        if size < needed:
            return (f"{_basename(data[-1])} is truncated ({size} bytes, the index "
                    f"needs at least {needed})")
        return None

    def restore(self, prefix):
        readable = storage.tensorflow_prefix(prefix)
        self.checkpoint.restore(readable).assert_existing_objects_matched()
        if readable != prefix:  # restorations deferred to later variables read it too
            weakref.finalize(self.checkpoint, shutil.rmtree, os.path.dirname(readable), True)
