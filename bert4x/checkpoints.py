"""Read and write BERT weights by name: Google TF checkpoints and Hugging Face safetensors.

Every Keras variable is paired with its official (Google TF) name, which the model
family declares (``Transformer.variable_map``); Hugging Face names are derived from
it. Nothing is matched by position.
"""

import json
import os
import re
import shutil
import tempfile
import warnings

import numpy as np

GOOGLE_CONFIG = "bert_config.json"
GOOGLE_CHECKPOINT = "bert_model.ckpt"
_OPTIMIZER_SUFFIXES = ("adam_m", "adam_v", "global_step", "Momentum", "lamb_m", "lamb_v")

# Head variables a checkpoint may lack (allow_missing_heads): the families'
# poolers and their MLM, NSP/SOP and discriminator heads.
_HEADS = ("bert/pooler/", "cls/", "electra/pooler/", "generator_predictions/",
          "discriminator_predictions/")
_MODEL_PREFIXES = ("bert", "roberta", "albert", "electra")


def variable_map(builder):
    """List ``(official_name, keras_variable, kind)`` for every weight of a builder.

    The family declares its names (``builder.variable_map()``); ``kind`` is
    "plain" (same shape), "vocab" (rows follow keep_tokens) or "transposed"
    ([out, in] in the official file, as BERT's NSP output_weights).
    """
    return builder.variable_map()


def hugging_face_names(official_name, renames=(), special=None):
    """Candidate Hugging Face names of an official name, and whether to transpose.

    Args:
        official_name: a Google TF name such as ``bert/encoder/layer_0/output/dense/kernel``.
        renames: ``(regex, replacement)`` pairs a family applies first (ALBERT's
            ``albert_layer_groups``, RoBERTa's ``lm_head``, ...).
        special: official name -> complete Hugging Face names, for names the
            rules do not give (output biases, NSP/SOP weights).

    Then ``layer_i`` becomes ``layer.i``, ``/`` becomes ``.``, kernels become
    ``weight`` (transposed: PyTorch stores ``[out, in]``), LayerNorm ``gamma``/``beta``
    become ``weight``/``bias`` (old files keep ``gamma``/``beta``), and files saved
    from the base model without its prefix (``bert.``) are matched too.
    """
    special = {"cls/predictions/output_bias": ["cls.predictions.bias",
                                               "cls.predictions.decoder.bias"],
               "cls/seq_relationship/output_weights": ["cls.seq_relationship.weight"],
               "cls/seq_relationship/output_bias": ["cls.seq_relationship.bias"]} \
        if special is None else special
    if official_name in special:
        return list(special[official_name]), False
    name = official_name
    for pattern, replacement in renames:
        name = re.sub(pattern, replacement, name)
    name = re.sub(r"/layer_(\d+)/", r"/layer.\1/", name).replace("/", ".")
    transpose = False
    if name.endswith(".kernel"):
        name, transpose = name[: -len(".kernel")] + ".weight", True
    elif name.endswith("_embeddings") or name.endswith("_embeddings_2"):
        name += ".weight"
    candidates = [name]
    if name.endswith(".gamma") or name.endswith(".beta"):
        modern = name.replace(".gamma", ".weight").replace(".beta", ".bias")
        candidates = [modern, name]
    base = name.split(".")[0]
    if base in _MODEL_PREFIXES:
        candidates += [candidate[len(base) + 1:] for candidate in candidates]
    return candidates, transpose


class _Reader:
    """Uniform access to the arrays of a checkpoint: ``names``, ``shape``, ``get``."""

    def __init__(self, path, fmt, names, shape_fn, get_fn):
        self.path, self.format = path, fmt
        self.names = set(names)
        self._shape, self._get = shape_fn, get_fn

    def shape(self, name):
        return tuple(self._shape(name))

    def get(self, name):
        try:
            return np.asarray(self._get(name))
        except Exception as error:  # corrupt data shows up only when read
            raise ValueError(f"checkpoint {self.path} is corrupt: reading {name!r} failed: "
                             f"{error}") from error


def _find_weights(path):
    """Resolve a folder or prefix to ``(path, format)``."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "model.safetensors")):
            return os.path.join(path, "model.safetensors"), "safetensors"
        import tensorflow as tf
        latest = tf.train.latest_checkpoint(path)
        if latest:
            return latest, "tensorflow"
        prefix = os.path.join(path, GOOGLE_CHECKPOINT)
        if os.path.isfile(prefix + ".index"):
            return prefix, "tensorflow"
        if os.path.isfile(os.path.join(path, "pytorch_model.bin")):
            raise NotImplementedError(
                f"{path}: pytorch_model.bin is not read by bert4x; convert it to "
                "model.safetensors (safetensors.torch.save_file) or a TF checkpoint")
        raise FileNotFoundError(
            f"no checkpoint in folder {path!r}: expected model.safetensors, a 'checkpoint' "
            f"file, or {GOOGLE_CHECKPOINT}.index")
    if path.endswith(".safetensors"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        return path, "safetensors"
    if path.endswith(".index"):
        path = path[: -len(".index")]
    if not os.path.isfile(path + ".index"):
        raise FileNotFoundError(
            f"checkpoint not found: {path} (expected {path}.index and its data files)")
    return path, "tensorflow"


def open_checkpoint(path):
    """Open a Google TF checkpoint or safetensors file for reading by name."""
    path, fmt = _find_weights(str(path))
    if fmt == "safetensors":
        from safetensors import safe_open
        try:
            handle = safe_open(path, framework="numpy")
            names = list(handle.keys())
        except Exception as error:
            raise ValueError(f"cannot read safetensors file {path}: {error}") from error

        def get(name):
            # NumPy has no bfloat16: widen those tensors to float32 from their bits.
            if handle.get_slice(name).get_dtype() == "BF16":
                return _read_bfloat16(path, name)
            return handle.get_tensor(name)

        return _Reader(path, fmt, names, lambda n: handle.get_slice(n).get_shape(), get)
    import tensorflow as tf
    try:
        reader = tf.train.load_checkpoint(path)
        shapes = reader.get_variable_to_shape_map()
    except Exception as error:
        raise ValueError(f"cannot read TF checkpoint {path}: {error}") from error
    names = [n for n in shapes if not n.split("/")[-1].startswith(_OPTIMIZER_SUFFIXES)]
    return _Reader(path, fmt, names, lambda n: shapes[n], reader.get_tensor)


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


def _lookup(reader, builder, google_name):
    """Return ``(name_in_file, transpose)`` or ``(None, False)``."""
    if reader.format == "tensorflow":
        return (google_name, False) if google_name in reader.names else (None, False)
    candidates, transpose = builder.hugging_face_names(google_name)
    for candidate in candidates:
        if candidate in reader.names:
            return candidate, transpose
    return None, False


def load_weights(builder, path, allow_missing_heads=False):
    """Assign every mapped variable of ``builder`` from the checkpoint at ``path``.

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: a missing variable, a shape mismatch (naming both shapes), a
            vocabulary size that differs from the config, or a corrupt file.
    """
    reader = open_checkpoint(path)
    keep_tokens = builder.keep_tokens
    missing_heads, assignments = [], []
    for google_name, variable, kind in variable_map(builder):
        name, transpose = _lookup(reader, builder, google_name)
        if name is None:
            if allow_missing_heads and google_name.startswith(_HEADS):
                missing_heads.append(google_name)
                continue
            hint = ("; pass allow_missing_heads=True to start it from its initialiser"
                    if google_name.startswith(_HEADS) else "")
            raise ValueError(f"checkpoint {reader.path} has no variable {google_name!r} "
                             f"(format {reader.format}){hint}")
        shape = reader.shape(name)
        if transpose or kind == "transposed":
            shape = shape[::-1]
        if kind == "vocab" and keep_tokens is not None:
            if max(keep_tokens) >= shape[0]:
                raise ValueError(
                    f"keep_tokens refers to row {max(keep_tokens)} but {name!r} in "
                    f"{reader.path} has only {shape[0]} rows")
            shape = (len(keep_tokens),) + shape[1:]
        expected = tuple(variable.shape)
        if shape != expected:
            if kind == "vocab":
                raise ValueError(
                    f"vocabulary size mismatch: {name!r} in {reader.path} has "
                    f"{shape[0]} rows but the config's vocab_size gives {expected[0]}")
            raise ValueError(f"shape mismatch for {name!r} in {reader.path}: checkpoint "
                             f"{shape}, model variable {variable.path} expects {expected}")
        assignments.append((name, variable, kind, transpose))
    for name, variable, kind, transpose in assignments:
        value = reader.get(name)
        if transpose or kind == "transposed":
            value = value.T
        if kind == "vocab" and keep_tokens is not None:
            value = value[np.asarray(keep_tokens)]
        variable.assign(value.astype(variable.dtype))
    if missing_heads:
        warnings.warn(f"checkpoint {reader.path} lacks these head variables, which keep "
                      f"their initial values: {missing_heads}", stacklevel=3)


def save_checkpoint(builder, directory):
    """Write ``bert_config.json`` + ``bert_model.ckpt`` in Google's official format.

    The folder is written beside its destination and moved into place, so a crash
    leaves the previous checkpoint (or none), never a half-written one. Heads the
    model has (pooler, MLM, NSP) are written too. Weights the official format has
    no name for (e.g. the condition Dense layers of Conditional Layer
    Normalization) are not written, and a warning lists them.

    Args:
        builder: a :class:`bert4x.models.BERT` (``return_keras_model=False``).
        directory: destination folder. An existing one is replaced only if it holds
            nothing but a BERT checkpoint (``bert_config.json``, ``checkpoint``,
            ``bert_model.ckpt.*``, ``vocab.txt``).

    Returns:
        The checkpoint prefix ``directory/bert_model.ckpt``.

    Raises:
        FileExistsError: ``directory`` exists and holds other files or folders.
    """
    import tensorflow as tf
    directory = os.path.abspath(str(directory))
    _check_replaceable(directory)
    pairs = variable_map(builder)
    mapped = {id(variable) for _, variable, _ in pairs}
    unwritten = [variable.path for variable in builder.model.weights
                 if id(variable) not in mapped]
    if unwritten:
        warnings.warn(f"the official checkpoint format has no names for these weights, "
                      f"which are not written to {directory}: {unwritten}", stacklevel=2)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-", dir=parent)
    try:
        names, tensors, written = [], [], {}
        for google_name, variable, kind in pairs:
            value = np.asarray(keras_value(variable), dtype=np.float32)
            value = value.T if kind == "transposed" else value
            if google_name in written:  # layers sharing one official weight set
                _check_shared(google_name, written[google_name], value)
                continue
            written[google_name] = value
            names.append(google_name)
            tensors.append(tf.constant(value))
        prefix = os.path.join(staging, GOOGLE_CHECKPOINT)
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                          shape_and_slices=[""] * len(names), tensors=tensors)
        with open(os.path.join(staging, "checkpoint"), "w", encoding="utf-8") as file:
            file.write(f'model_checkpoint_path: "{GOOGLE_CHECKPOINT}"\n'
                       f'all_model_checkpoint_paths: "{GOOGLE_CHECKPOINT}"\n')
        with open(os.path.join(staging, GOOGLE_CONFIG), "w", encoding="utf-8") as file:
            json.dump(builder.config.to_dict(), file, indent=2)
        _replace_folder(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return os.path.join(directory, GOOGLE_CHECKPOINT)


def _check_shared(name, first, value):
    if not np.array_equal(first, value):
        raise ValueError(
            f"several layers map to the official variable {name!r} but hold different "
            "values (an albert_unshared model after training?); the official format "
            "stores one weight set per ALBERT group")


def keras_value(variable):
    """The value of a Keras variable as NumPy, whatever the backend."""
    import keras
    return keras.ops.convert_to_numpy(variable.value)


def _check_replaceable(directory):
    """Refuse to replace a folder that holds more than a BERT checkpoint."""
    if not os.path.exists(directory):
        return
    if not os.path.isdir(directory):
        raise FileExistsError(f"{directory} exists and is not a folder")
    foreign = sorted(
        name for name in os.listdir(directory)
        if not (name in (GOOGLE_CONFIG, "checkpoint", "vocab.txt")
                and os.path.isfile(os.path.join(directory, name))
                or name.startswith(GOOGLE_CHECKPOINT + "."))
    )
    if foreign:
        raise FileExistsError(
            f"{directory} exists and holds more than a BERT checkpoint ({foreign[:10]}); "
            "save_checkpoint replaces its destination folder, so choose a new or "
            "checkpoint-only folder")


def _replace_folder(staging, directory):
    """Move ``staging`` to ``directory``, replacing an existing folder."""
    if not os.path.exists(directory):
        os.rename(staging, directory)
        return
    retired = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".old-",
                               dir=os.path.dirname(directory))
    os.rmdir(retired)
    os.rename(directory, retired)
    os.rename(staging, directory)
    shutil.rmtree(retired, ignore_errors=True)
