"""Read and write weights by name: Google TF checkpoints and Hugging Face safetensors.

Every Keras variable is paired with its official (Google TF) name, which the model
family declares (``Transformer.variable_map``; BERT's table is in ``docs/model.md``);
Hugging Face names are derived from it by the family's rules
(``Transformer.hugging_face_names``). Nothing is matched by position, and nothing
here knows a family: the builder says which weights are heads, which names a file
may hold without them being weights, and what to suggest when one is missing.
"""

import contextlib
import json
import os
import re
import shutil
import tempfile
import warnings
import weakref

import numpy as np

from bert4x import checkpoint_files, storage
from bert4x.vocabularies import load_vocab, tokens_by_id, vocabulary_text

GOOGLE_CONFIG = "bert_config.json"
GOOGLE_CHECKPOINT = "bert_model.ckpt"
_OPTIMIZER_SUFFIXES = ("adam_m", "adam_v", "global_step", "Momentum", "lamb_m", "lamb_v")


def variable_map(builder):
    """List ``(official_name, keras_variable, kind)`` for every weight of a builder.

    The family declares its names (``builder.variable_map()``); ``kind`` is
    "plain" (same shape), "vocab" (rows follow keep_tokens), "vocab_columns"
    (columns follow keep_tokens: an output kernel ``[hidden, vocab]``) or
    "transposed" ([out, in] in the official file, as BERT's NSP output_weights).
    """
    return builder.variable_map()


def hugging_face_names(official_name, renames=(), special=None, base_prefix=None,
                       transposed_kernels=True):
    """Candidate Hugging Face names of an official name, and whether to transpose.

    Args:
        official_name: a Google TF name such as ``bert/encoder/layer_0/output/dense/kernel``.
        renames: ``(regex, replacement)`` pairs a family applies first (its
            ``hf_renames``).
        special: official name -> complete Hugging Face names, for names the
            rules do not give (a family's ``hf_special``: output biases, NSP weights).
        base_prefix: the first part of the names of the base model (a family's
            ``hf_prefix``); files saved from the base model lack it.
        transposed_kernels: whether the files store kernels ``[out, in]`` (PyTorch
            ``Linear``; False for GPT's ``Conv1D``, which keeps ``[in, out]``).

    Then ``layer_i`` becomes ``layer.i``, ``/`` becomes ``.``, kernels become
    ``weight`` (transposed: PyTorch stores ``[out, in]``), LayerNorm ``gamma``/``beta``
    become ``weight``/``bias`` (old files keep ``gamma``/``beta``), and names under
    ``base_prefix`` are matched without it too.

    Example:
        >>> names, transpose = hugging_face_names(
        ...     "bert/encoder/layer_0/output/dense/kernel", base_prefix="bert")
        >>> names[0], names[1], transpose
        ('bert.encoder.layer.0.output.dense.weight', 'encoder.layer.0.output.dense.weight', True)
    """
    special = special or {}
    if official_name in special:
        return list(special[official_name]), False
    name = official_name
    for pattern, replacement in renames:
        name = re.sub(pattern, replacement, name)
    name = re.sub(r"/layer_(\d+)/", r"/layer.\1/", name).replace("/", ".")
    transpose = False
    if name.endswith(".kernel"):
        name, transpose = name[: -len(".kernel")] + ".weight", transposed_kernels
    elif name.endswith("_embeddings") or name.endswith("_embeddings_2"):
        name += ".weight"
    candidates = [name]
    if name.endswith(".gamma") or name.endswith(".beta"):
        modern = name.replace(".gamma", ".weight").replace(".beta", ".bias")
        candidates = [modern, name]
    if base_prefix is not None and name.split(".")[0] == base_prefix:
        candidates += [candidate[len(base_prefix) + 1:] for candidate in candidates]
    return candidates, transpose


class _Reader:
    """Uniform access to the arrays of a checkpoint: ``names``, ``shape``, ``get``.

    ``dtype_fn(name)`` gives the stored dtype as a string and whether it is a
    floating-point type.
    """

    def __init__(self, path, fmt, names, shape_fn, get_fn, dtype_fn):
        self.path, self.format = path, fmt
        self.names = set(names)
        self._shape, self._get, self._dtype = shape_fn, get_fn, dtype_fn

    def shape(self, name):
        return tuple(self._shape(name))

    def check_float(self, name):
        """Refuse a variable stored as a string, integer, bool or complex number."""
        dtype, is_float = self._dtype(name)
        if not is_float:
            raise ValueError(f"checkpoint {self.path}: variable {name!r} is stored as "
                             f"{dtype}, not a floating-point type; it cannot be a weight")

    def get(self, name):
        try:
            return np.asarray(self._get(name))
        except PermissionError:
            raise
        except Exception as error:  # corrupt data shows up only when read
            if type(error).__name__ == "PermissionDeniedError":  # TensorFlow's
                raise PermissionError(f"checkpoint {self.path}: reading {name!r} was "
                                      f"refused: permission denied ({error})") from error
            raise ValueError(f"checkpoint {self.path} is corrupt: reading {name!r} failed: "
                             f"{error}") from error


def _find_weights(path):
    """Resolve a folder or prefix to ``(path, format)``."""
    if path.endswith(".safetensors"):  # a file by its name, even if a folder is there
        storage.check_readable(path, "checkpoint file")
        return path, "safetensors"
    if storage.isdir(path):
        if storage.isfile(storage.join(path, "model.safetensors")):
            return storage.join(path, "model.safetensors"), "safetensors"
        latest = _pointed_checkpoint(path)
        if latest and storage.isfile(latest + ".index"):
            return latest, "tensorflow"
        prefix = storage.join(path, GOOGLE_CHECKPOINT)
        if storage.isfile(prefix + ".index"):
            return prefix, "tensorflow"
        if latest:
            raise FileNotFoundError(
                f"the checkpoint pointer {storage.join(path, 'checkpoint')} names {latest}, "
                f"but {latest}.index is not there (were the files moved or deleted?)")
        if storage.isfile(storage.join(path, "pytorch_model.bin")):
            raise NotImplementedError(
                f"{path}: pytorch_model.bin is not read by bert4x; convert it to "
                "model.safetensors (safetensors.torch.save_file) or a TF checkpoint")
        raise FileNotFoundError(
            f"no checkpoint in folder {path!r}: expected model.safetensors, a 'checkpoint' "
            f"file, or {GOOGLE_CHECKPOINT}.index")
    if path.endswith(".index"):
        path = path[: -len(".index")]
    if not storage.exists(path + ".index"):
        raise FileNotFoundError(
            f"checkpoint not found: {path} (expected {path}.index and its data files)")
    return path, "tensorflow"


def _check_checkpoint_files(prefix):
    """Say which file of a TF checkpoint cannot be read, and why, before TF reads it."""
    data = [path for path in storage.prefix_files(prefix) if ".data-" in path[len(prefix):]]
    for path in [prefix + ".index"] + data:
        storage.check_readable(path, "checkpoint file")


def _pointed_checkpoint(folder):
    """The prefix the folder's ``checkpoint`` pointer names (None: no pointer).

    Not ``tf.train.latest_checkpoint``: it globs the prefix, so a folder named with
    ``[`` ``]`` or ``*`` never matched its own files.
    """
    pointer = storage.join(folder, "checkpoint")
    if not storage.isfile(pointer):
        return None
    import tensorflow as tf
    try:
        state = tf.train.get_checkpoint_state(folder)
    except Exception as error:  # a text-proto parse error, whatever TF calls it
        raise ValueError(f"the checkpoint pointer {pointer} cannot be read: {error}") from error
    if state is None or not state.model_checkpoint_path:
        return None
    prefix = state.model_checkpoint_path
    if storage.is_local(prefix) and not os.path.isabs(prefix):
        prefix = storage.join(folder, prefix)
    return prefix


def open_checkpoint(path):
    """Open a Google TF checkpoint or safetensors file for reading by name."""
    path, fmt = _find_weights(str(path))
    if fmt == "safetensors":
        from safetensors import safe_open
        storage.check_readable(path, "checkpoint file")
        # safetensors maps local files only: a remote one is read from a local copy.
        local = path if storage.is_local(path) else _local_copy(path)
        try:
            handle = safe_open(local, framework="numpy")
            names = list(handle.keys())
        except Exception as error:
            raise ValueError(f"cannot read safetensors file {path}: {error}") from error

        def get(name):
            # NumPy has no bfloat16: widen those tensors to float32 from their bits.
            if handle.get_slice(name).get_dtype() == "BF16":
                return _read_bfloat16(local, name)
            return handle.get_tensor(name)

        def dtype(name):
            code = handle.get_slice(name).get_dtype()  # "F32", "BF16", "I64", "C64", ...
            return code, code.startswith(("F", "BF"))

        reader = _Reader(path, fmt, names, lambda n: handle.get_slice(n).get_shape(), get,
                         dtype)
        if local != path:
            weakref.finalize(reader, os.remove, local)
        return reader
    import tensorflow as tf
    _check_checkpoint_files(path)
    readable = storage.tensorflow_prefix(path)
    try:
        # The path is a resolved prefix: open it as such (tf.train.load_checkpoint
        # would take a prefix for a folder on file systems like ram://).
        reader = tf.compat.v1.train.NewCheckpointReader(readable)
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except tf.errors.PermissionDeniedError as error:
        raise PermissionError(f"TF checkpoint {path} exists but cannot be read: permission "
                              f"denied ({error.message})") from error
    except Exception as error:
        raise ValueError(f"cannot read TF checkpoint {path}: {error}") from error
    names = [n for n in shapes if not n.split("/")[-1].startswith(_OPTIMIZER_SUFFIXES)]
    checkpoint = _Reader(path, fmt, names, lambda n: shapes[n], reader.get_tensor,
                         lambda n: (dtypes[n].name, dtypes[n].is_floating))
    if readable != path:
        weakref.finalize(checkpoint, shutil.rmtree, os.path.dirname(readable), True)
    return checkpoint


def _local_copy(path):
    """Download a remote file to a new local temporary file."""
    handle, local = tempfile.mkstemp(prefix="bert4x-", suffix=".safetensors")
    os.close(handle)
    storage.copy(path, local, overwrite=True)
    return local


def _read_bfloat16(path, name):
    """A bfloat16 tensor of a safetensors file as float32 (exact: bf16 is f32's top half)."""
    with open(path, "rb") as file:
        header_size = int.from_bytes(file.read(8), "little")
        info = json.loads(file.read(header_size))[name]
        start, end = info["data_offsets"]
        file.seek(8 + header_size + start)
        raw = file.read(end - start)
    if len(raw) != end - start:
        raise ValueError(f"the file ends {end - start - len(raw)} bytes early")
    bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
    return bits.view(np.float32).reshape(info["shape"])


def split_fused(reader, fused):
    """The reader with every fused tensor read as its parts.

    ``fused`` is a family's ``hf_fused``, ``{whole: parts}``: a tensor named
    ``<a>.<whole>.<b>`` holds, side by side on its last axis, equal parts named
    ``<a>.<whole>.<part>.<b>``; the returned reader lists the parts instead of the
    whole (GPT-2's ``h.0.attn.c_attn.weight`` ``[H, 3H]`` becomes
    ``h.0.attn.c_attn.query.weight`` ``[H, H]``, ``...key...`` and ``...value...``).
    :func:`fuse_parts` is the inverse.

    Raises:
        ValueError: a fused tensor whose last axis does not split into equal parts.
    """
    if not fused:
        return reader
    sources = {}  # part name -> (whole name, index, count)
    for name in reader.names:
        for whole, parts in fused.items():
            marker = f".{whole}."
            if marker not in f".{name}." or any(f".{whole}.{part}." in f".{name}."
                                                for part in parts):
                continue  # not fused, or a part already stored on its own
            width = reader.shape(name)[-1]
            if width % len(parts):
                raise ValueError(f"checkpoint {reader.path}: {name!r} holds {len(parts)} "
                                 f"weights side by side, but its last axis ({width}) does "
                                 f"not split into {len(parts)} equal parts")
            for index, part in enumerate(parts):
                part_name = f".{name}.".replace(marker, f".{whole}.{part}.", 1)[1:-1]
                sources[part_name] = (name, index, len(parts))
            break
    if not sources:
        return reader
    wholes = {whole for whole, _, _ in sources.values()}

    def shape(name):
        if name not in sources:
            return reader.shape(name)
        whole, _, count = sources[name]
        full = reader.shape(whole)
        return full[:-1] + (full[-1] // count,)

    def get(name):
        if name not in sources:
            return reader.get(name)
        whole, index, count = sources[name]
        return np.split(reader.get(whole), count, axis=-1)[index]

    def dtype(name):
        return reader._dtype(sources[name][0] if name in sources else name)

    names = (reader.names - wholes) | set(sources)
    return _Reader(reader.path, reader.format, names, shape, get, dtype)


def fuse_parts(tensors, fused):
    """``{name: array}`` with the parts of every fused tensor joined into it: the
    inverse of :func:`split_fused` (each whole's parts must all be there).

    Example:
        >>> joined = fuse_parts({"h.0.attn.c_attn.query.bias": np.zeros(2),
        ...                      "h.0.attn.c_attn.key.bias": np.ones(2),
        ...                      "h.0.attn.c_attn.value.bias": np.ones(2)},
        ...                     {"attn.c_attn": ("query", "key", "value")})
        >>> joined["h.0.attn.c_attn.bias"].tolist()
        [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    """
    result, groups = {}, {}
    for name, value in tensors.items():
        for whole, parts in fused.items():
            found = [part for part in parts if f".{whole}.{part}." in f".{name}."]
            if found:
                whole_name = f".{name}.".replace(f".{whole}.{found[0]}.", f".{whole}.",
                                                 1)[1:-1]
                groups.setdefault(whole_name, (parts, {}))[1][found[0]] = value
                break
        else:
            result[name] = value
    for whole_name, (parts, values) in groups.items():
        missing = [part for part in parts if part not in values]
        if missing:
            raise ValueError(f"{whole_name!r} joins {list(parts)}, but {missing} are "
                             "missing")
        result[whole_name] = np.concatenate([values[part] for part in parts], axis=-1)
    return result


def _lookup(reader, builder, google_name):
    """Return ``(name_in_file, transpose)`` or ``(None, False)``."""
    if reader.format == "tensorflow":
        return (google_name, False) if google_name in reader.names else (None, False)
    candidates, transpose = builder.hugging_face_names(google_name)
    for candidate in candidates:
        if candidate in reader.names:
            return candidate, transpose
    return None, False


def load_weights(builder, path, allow_missing_heads=False, ignore_unused_weights=False):
    """Assign every mapped variable of ``builder`` from the checkpoint at ``path``.

    Checkpoint variables in the model's own scope that nothing consumes (say
    ``bert/encoder/layer_2/...`` of a 3-layer checkpoint loaded with
    ``num_hidden_layers: 2``) mean the config does not describe the checkpoint,
    so they are an error. The model's own scope is every group of names it
    reads from (for BERT: ``bert/embeddings/``, ``bert/encoder/``, and the
    ``bert/pooler/``, ``cls/predictions/`` and ``cls/seq_relationship/`` heads
    only when the model has them; the same groups spelled the Hugging Face way in
    safetensors).
    Variables outside it are left alone: heads the model did not ask for (an
    encoder loaded from a pretraining checkpoint), optimizer slots, a fine-tuned
    classifier's own layers.

    Args:
        builder: a family's builder (:class:`bert4x.transformer.Transformer`).
        path: checkpoint prefix, ``.safetensors`` file, or a folder holding one.
        allow_missing_heads: let a head the checkpoint lacks keep its initial values.
        ignore_unused_weights: warn about, instead of refusing, unconsumed
            variables in the model's own scope.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: a missing variable, a shape mismatch (naming both shapes), a
            vocabulary size that differs from the config, a variable stored as a
            non-float dtype, unused variables in the model's own scope, or a
            corrupt file.
    """
    reader = open_checkpoint(path)
    if reader.format == "safetensors":
        reader = split_fused(reader, builder.hf_fused)
    keep_tokens = builder.keep_tokens
    pairs = variable_map(builder)
    heads = builder.head_weight_names()
    missing_heads, assignments = [], []
    for google_name, variable, kind in pairs:
        name, transpose = _lookup(reader, builder, google_name)
        if name is None:
            if allow_missing_heads and google_name in heads:
                missing_heads.append(google_name)
                continue
            raise ValueError(f"checkpoint {reader.path} has no variable {google_name!r} "
                             f"(format {reader.format})"
                             f"{builder.missing_weight_hint(google_name)}")
        reader.check_float(name)
        shape = reader.shape(name)
        if transpose or kind == "transposed":
            shape = shape[::-1]
        axis = vocabulary_axis(kind)
        if axis is not None and keep_tokens is not None:
            if max(keep_tokens) >= shape[axis]:
                raise ValueError(
                    f"keep_tokens refers to row {max(keep_tokens)} but {name!r} in "
                    f"{reader.path} has only {shape[axis]} rows")
            shape = _resized(shape, axis, len(keep_tokens))
        expected = tuple(variable.shape)
        if axis is not None and shape[axis] != expected[axis]:
            raise ValueError(
                f"vocabulary size mismatch: {name!r} in {reader.path} has "
                f"{shape[axis]} rows but the config's vocab_size gives {expected[axis]}")
        if shape != expected:
            raise ValueError(f"shape mismatch for {name!r} in {reader.path}: checkpoint "
                             f"{shape}, model variable {variable.path} expects {expected}")
        assignments.append((name, variable, kind, transpose))
    _check_unused(reader, builder, pairs, {name for name, *_ in assignments},
                  ignore_unused_weights)
    for name, variable, kind, transpose in assignments:
        value = reader.get(name)
        if transpose or kind == "transposed":
            value = value.T
        if vocabulary_axis(kind) is not None and keep_tokens is not None:
            value = np.take(value, np.asarray(keep_tokens), axis=vocabulary_axis(kind))
        variable.assign(_finite(value, name, reader.path, variable.dtype))
    if missing_heads:
        warnings.warn(f"checkpoint {reader.path} lacks these head variables, which keep "
                      f"their initial values: {missing_heads}", stacklevel=3)


def vocabulary_axis(kind):
    """The axis of a variable of ``kind`` that runs over the vocabulary (its rows follow
    ``keep_tokens``): 0 for "vocab", the last for "vocab_columns" (an output kernel
    ``[hidden, vocab]``), None for the others."""
    return {"vocab": 0, "vocab_columns": -1}.get(kind)


def _resized(shape, axis, size):
    shape = list(shape)
    shape[axis] = size
    return tuple(shape)


def _finite(value, name, path, dtype):
    """``value`` cast to ``dtype``; NaN or infinity in a weight is an error naming it."""
    if not np.isfinite(value).all():
        nan, infinite = int(np.isnan(value).sum()), int(np.isinf(value).sum())
        raise ValueError(f"checkpoint {path}: variable {name!r} holds {nan} NaN and "
                         f"{infinite} infinite values (of {value.size}); every output of "
                         "the model would be NaN: the file is damaged or the training "
                         "that wrote it diverged")
    with np.errstate(over="ignore"):  # reported below, with the variable's name
        cast = value.astype(dtype)
    if not np.isfinite(cast).all():
        raise ValueError(f"checkpoint {path}: variable {name!r} holds values up to "
                         f"{np.abs(value).max():g}, beyond the range of the model's "
                         f"{np.dtype(dtype).name} (they would become infinite); build the "
                         "model in a wider dtype")
    return cast


def _check_unused(reader, builder, pairs, consumed, ignore):
    """Refuse (or with ``ignore``, warn about) unconsumed names in the model's scope."""
    groups = builder.checkpoint_groups([google_name for google_name, _, _ in pairs])
    # Weights the model leaves out on purpose (say the segment table of a model
    # built without one) are no sign of a wrong config.
    dropped = builder.dropped_weight_names()
    accounted, ignored = set(consumed) | set(dropped), ()
    if reader.format == "safetensors":
        # The family's Hugging Face names, with aliases such as the two MLM bias
        # spellings and the names without the base model's prefix.
        candidates = {name for google_name, _, _ in pairs
                      for name in builder.hugging_face_names(google_name)[0]}
        groups = builder.checkpoint_groups(candidates, ".")
        accounted.update(candidates)
        accounted.update(name for google_name in dropped
                         for name in builder.hugging_face_names(google_name)[0])
        # Buffers and tied copies of the word embeddings: no weights of their own.
        ignored = tuple(builder.hf_ignored)
    unused = sorted(name for name in reader.names
                    if name.startswith(tuple(groups)) and name not in accounted
                    and not name.endswith(ignored))
    if not unused:
        return
    message = (f"checkpoint {reader.path} holds {len(unused)} variables in the model's "
               f"own scope that the model does not use (does the config match the "
               f"checkpoint, e.g. num_hidden_layers?): {unused[:20]}"
               f"{' ...' if len(unused) > 20 else ''}")
    if not ignore:
        raise ValueError(message + "; pass ignore_unused_weights=True to load anyway")
    warnings.warn(message, stacklevel=4)


def save_checkpoint(builder, directory, vocab=None):
    """Write ``bert_config.json`` + ``bert_model.ckpt`` in Google's official format.

    Heads the model has (pooler, MLM, NSP) are written too. Weights the official
    format has no name for (e.g. the condition Dense layers of Conditional Layer
    Normalization) are not written, and a warning lists them.

    The folder may hold other files, and an earlier save: save_checkpoint never
    deletes or replaces a file it did not write itself, and a crash at any moment
    leaves the folder loading the old checkpoint or the new one, complete. The new
    checkpoint is written into a hidden staging folder inside the folder (so its
    parent may be read-only) and moved in file by file; the
    ``checkpoint`` pointer file, which loaders given the folder follow, switches
    last. The new weights get a prefix no file uses yet (``bert_model.ckpt``, or
    ``bert_model.ckpt-<n>`` while an earlier save's weights are there), so pass
    the folder, or the returned prefix, to loaders. Works on local disk,
    ``gs://`` and ``ram://`` paths (see :mod:`bert4x.checkpoint_files` for the
    exact guarantees, and :mod:`bert4x.storage` for what each file system allows).

    Args:
        builder: a family's builder (``return_keras_model=False``).
        directory: destination folder (created if missing).
        vocab: optional vocabulary to write as ``vocab.txt`` so the folder is
            complete: a ``vocab.txt`` path, a ``{token: id}`` dict, a token list or
            a :class:`bert4x.tokenizers.Tokenizer`. One with as many tokens as the
            model has embedding rows is written as it is; a larger one (the full
            vocabulary of a model built with ``keep_tokens``) is trimmed with the
            builder's ``keep_tokens``, so line ``i`` names row ``i``.

    Returns:
        The checkpoint prefix written, ``directory/bert_model.ckpt`` for a new folder.

    Raises:
        FileExistsError: the folder holds a ``checkpoint`` pointer, or a
            ``bert_config.json``/``vocab.txt`` that differs from what would be
            written, that save_checkpoint did not write.
        ValueError: ``vocab`` does not match the model's embedding rows.

    Example:
        >>> token_dict, keep_tokens = load_vocab("vocab.txt", simplified=True)  # doctest: +SKIP
        >>> builder = build_transformer_model(config, ckpt, keep_tokens=keep_tokens,
        ...                                   return_keras_model=False)  # doctest: +SKIP
        >>> save_checkpoint(builder, "exported/", vocab="vocab.txt")  # doctest: +SKIP
        'exported/bert_model.ckpt'
    """
    directory = checkpoint_files.destination(directory)
    # The family goes with the config, so that the folder reloads without model=.
    config = dict(builder.config.to_dict(), family=builder.family)
    contents = {GOOGLE_CONFIG: json.dumps(config, indent=2)}
    if vocab is not None:
        contents["vocab.txt"] = vocabulary_text(_vocabulary_rows(builder, vocab))
    if storage.exists(directory) and not storage.isdir(directory):
        raise FileExistsError(f"{directory} exists and is not a folder")
    # What killed saves left goes first: a file of theirs is no claim of someone else.
    checkpoint_files.clean(directory)
    names = checkpoint_files.check_claims(directory, contents)
    pairs = variable_map(builder)
    mapped = {id(variable) for _, variable, _ in pairs}
    unwritten = [variable.path for variable in builder.model.weights
                 if id(variable) not in mapped]
    if unwritten:
        warnings.warn(f"the official checkpoint format has no names for these weights, "
                      f"which are not written to {directory}: {unwritten}", stacklevel=2)
    created = not storage.exists(directory)
    try:
        staging = checkpoint_files.new_staging(directory)
        return _write_and_publish(builder, pairs, staging, directory, contents, names)
    except BaseException:
        # Nothing of a failed save stays: its staging folder, what it moved in, and
        # the destination folder when the save made it.
        with contextlib.suppress(OSError):
            checkpoint_files.clean(directory)
            if created and not storage.listdir(directory):
                storage.rmtree(directory)
        raise


def _write_and_publish(builder, pairs, staging, directory, contents, names):
    """Write the checkpoint into ``staging``, then publish it into ``directory``."""
    import tensorflow as tf
    tensor_names, tensors, written = [], [], {}
    for google_name, variable, kind in pairs:
        value = np.asarray(keras_value(variable), dtype=np.float32)
        value = value.T if kind == "transposed" else value
        if google_name in written:  # layers sharing one official weight set
            _check_shared(google_name, written[google_name], value)
            continue
        written[google_name] = value
        tensor_names.append(google_name)
        tensors.append(tf.constant(value))
    tf.raw_ops.SaveV2(prefix=storage.join(staging, GOOGLE_CHECKPOINT),
                      tensor_names=tensor_names,
                      shape_and_slices=[""] * len(tensor_names), tensors=tensors)
    for name in names:
        storage.atomic_write(storage.join(staging, name), contents[name])
    return checkpoint_files.publish(staging, directory, names)


def _vocabulary_rows(builder, vocab):
    """The tokens of ``vocab`` in the order of the model's embedding rows."""
    if isinstance(vocab, (str, os.PathLike)):
        vocab = load_vocab(vocab)
    vocab = getattr(vocab, "token_dict", vocab)
    if isinstance(vocab, dict):
        tokens = tokens_by_id(vocab)
    elif isinstance(vocab, (list, tuple)):
        tokens = list(vocab)
    else:
        raise TypeError(f"vocab must be a vocab.txt path, a {{token: id}} dict, a token list "
                        f"or a Tokenizer, got {type(vocab).__name__}")
    rows = int(builder.token_embedding.embeddings.shape[0])
    keep_tokens = builder.keep_tokens
    if len(tokens) == rows:
        return tokens
    if keep_tokens is not None and len(tokens) > max(keep_tokens):
        return [tokens[index] for index in keep_tokens]
    expected = f"{rows} tokens" + (f", or more than {max(keep_tokens)} to trim with "
                                   "keep_tokens" if keep_tokens is not None else "")
    raise ValueError(f"vocab has {len(tokens)} tokens but the model has {rows} embedding "
                     f"rows: expected {expected}")


def hugging_face_tensors(builder):
    """The builder's weights as a Hugging Face file of its family holds them.

    Each weight goes under its first Hugging Face name (``hugging_face_names``,
    base prefix included), transposed where the family's files store kernels
    ``[out, in]``, and the parts of a fused tensor (the family's ``hf_fused``, as
    GPT-2's ``attn.c_attn``) are joined into it (:func:`fuse_parts`); tied copies
    and buffers are not written. Values are float32.

    Returns:
        ``{name: array}``, for ``safetensors.numpy.save_file(tensors, path)``.

    Raises:
        ValueError: layers that share one weight set hold different values.

    Example:
        >>> from safetensors.numpy import save_file  # doctest: +SKIP
        >>> save_file(hugging_face_tensors(builder), "gpt2_tuned/model.safetensors")
    """
    tensors = {}
    for google_name, variable, kind in variable_map(builder):
        value = np.asarray(keras_value(variable), dtype=np.float32)
        value = value.T if kind == "transposed" else value
        names, transpose = builder.hugging_face_names(google_name)
        value = np.ascontiguousarray(value.T if transpose else value)
        if names[0] in tensors:  # layers sharing one weight set (ALBERT)
            _check_shared(google_name, tensors[names[0]], value)
            continue
        tensors[names[0]] = value
    return fuse_parts(tensors, builder.hf_fused)


def _check_shared(name, first, value):
    if not np.array_equal(first, value):
        raise ValueError(
            f"several layers map to the official variable {name!r} but hold different "
            "values (layers loaded from one shared weight set, then trained apart?); the "
            "official format stores one weight set for all of them")


def keras_value(variable):
    """The value of a Keras variable as NumPy, whatever the backend."""
    import keras
    return keras.ops.convert_to_numpy(variable.value)
