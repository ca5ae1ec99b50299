"""Read and write BERT weights by name: Google TF checkpoints and Hugging Face safetensors.

Every Keras variable is paired with its official Google name (the table of
``docs/model.md``); Hugging Face names are derived from it. Nothing is matched by
position.
"""

import json
import os
import shutil
import tempfile
import warnings

import numpy as np

GOOGLE_CONFIG = "bert_config.json"
GOOGLE_CHECKPOINT = "bert_model.ckpt"
_OPTIMIZER_SUFFIXES = ("adam_m", "adam_v", "global_step", "Momentum", "lamb_m", "lamb_v")

# kind: how an official array relates to the Keras variable.
#   "plain": same shape; "vocab": rows follow keep_tokens; "transposed": [out, in]
#   in the official file (NSP output_weights).
_HEADS = ("bert/pooler/", "cls/")


def variable_map(builder):
    """List ``(google_name, keras_variable, kind)`` for every weight of a builder."""
    pairs = [
        ("bert/embeddings/word_embeddings", builder.token_embedding.embeddings, "vocab"),
        ("bert/embeddings/token_type_embeddings", builder.segment_embedding.embeddings,
         "plain"),
        ("bert/embeddings/position_embeddings", builder.position_embedding.embeddings,
         "plain"),
    ]
    pairs += _norm_pairs("bert/embeddings/LayerNorm", builder.embedding_norm)
    for index, layers in enumerate(builder.blocks):
        prefix = f"bert/encoder/layer_{index}/"
        attention = layers["attention"]
        for part, dense in (("query", attention.query_dense), ("key", attention.key_dense),
                            ("value", attention.value_dense)):
            pairs += _dense_pairs(prefix + f"attention/self/{part}", dense)
        pairs += _dense_pairs(prefix + "attention/output/dense", attention.output_dense)
        pairs += _norm_pairs(prefix + "attention/output/LayerNorm", layers["attention_norm"])
        pairs += _dense_pairs(prefix + "intermediate/dense",
                              layers["feed_forward"].intermediate_dense)
        pairs += _dense_pairs(prefix + "output/dense", layers["feed_forward"].output_dense)
        pairs += _norm_pairs(prefix + "output/LayerNorm", layers["feed_forward_norm"])
    if builder.pooler_dense is not None:
        pairs += _dense_pairs("bert/pooler/dense", builder.pooler_dense)
    if builder.mlm_dense is not None:
        pairs += _dense_pairs("cls/predictions/transform/dense", builder.mlm_dense)
        pairs += _norm_pairs("cls/predictions/transform/LayerNorm", builder.mlm_norm)
        pairs.append(("cls/predictions/output_bias", builder.mlm_bias.bias, "vocab"))
    if builder.nsp_dense is not None:
        pairs.append(("cls/seq_relationship/output_weights", builder.nsp_dense.kernel,
                      "transposed"))
        pairs.append(("cls/seq_relationship/output_bias", builder.nsp_dense.bias, "plain"))
    return pairs


def _dense_pairs(name, dense):
    return [(name + "/kernel", dense.kernel, "plain"), (name + "/bias", dense.bias, "plain")]


def _norm_pairs(name, norm):
    return [(name + "/gamma", norm.gamma, "plain"), (name + "/beta", norm.beta, "plain")]


def hugging_face_names(google_name):
    """Candidate Hugging Face names of an official name, and whether to transpose."""
    if google_name == "cls/predictions/output_bias":
        return ["cls.predictions.bias", "cls.predictions.decoder.bias"], False
    if google_name == "cls/seq_relationship/output_weights":
        return ["cls.seq_relationship.weight"], False
    if google_name == "cls/seq_relationship/output_bias":
        return ["cls.seq_relationship.bias"], False
    name = google_name.replace("/layer_", "/layer.").replace("/", ".")
    transpose = False
    if name.endswith(".kernel"):
        name, transpose = name[: -len(".kernel")] + ".weight", True
    elif name.endswith("_embeddings"):
        name += ".weight"
    candidates = [name]
    if name.endswith(".gamma") or name.endswith(".beta"):
        modern = name.replace(".gamma", ".weight").replace(".beta", ".bias")
        candidates = [modern, name]
    if name.startswith("bert."):
        candidates += [candidate[len("bert."):] for candidate in candidates]
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

        def dtype(name):
            code = handle.get_slice(name).get_dtype()  # "F32", "BF16", "I64", "C64", ...
            return code, code.startswith(("F", "BF"))

        return _Reader(path, fmt, names, lambda n: handle.get_slice(n).get_shape(), get,
                       dtype)
    import tensorflow as tf
    try:
        reader = tf.train.load_checkpoint(path)
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except Exception as error:
        raise ValueError(f"cannot read TF checkpoint {path}: {error}") from error
    names = [n for n in shapes if not n.split("/")[-1].startswith(_OPTIMIZER_SUFFIXES)]
    return _Reader(path, fmt, names, lambda n: shapes[n], reader.get_tensor,
                   lambda n: (dtypes[n].name, dtypes[n].is_floating))


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


def _lookup(reader, google_name):
    """Return ``(name_in_file, transpose)`` or ``(None, False)``."""
    if reader.format == "tensorflow":
        return (google_name, False) if google_name in reader.names else (None, False)
    candidates, transpose = hugging_face_names(google_name)
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
    reads from: ``bert/embeddings/``, ``bert/encoder/``, and the ``bert/pooler/``,
    ``cls/predictions/`` and ``cls/seq_relationship/`` heads only when the model
    has them (the same groups spelled the Hugging Face way in safetensors).
    Variables outside it are left alone: heads the model did not ask for (an
    encoder loaded from a pretraining checkpoint), optimizer slots, a fine-tuned
    classifier's own layers.

    Args:
        builder: a :class:`bert4x.models.BERT`.
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
    keep_tokens = builder.keep_tokens
    pairs = variable_map(builder)
    missing_heads, assignments = [], []
    for google_name, variable, kind in pairs:
        name, transpose = _lookup(reader, google_name)
        if name is None:
            if allow_missing_heads and google_name.startswith(_HEADS):
                missing_heads.append(google_name)
                continue
            hint = ("; pass allow_missing_heads=True to start it from its initialiser"
                    if google_name.startswith(_HEADS) else "")
            raise ValueError(f"checkpoint {reader.path} has no variable {google_name!r} "
                             f"(format {reader.format}){hint}")
        reader.check_float(name)
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
        if kind == "vocab" and shape[:1] != expected[:1]:
            raise ValueError(
                f"vocabulary size mismatch: {name!r} in {reader.path} has "
                f"{shape[0]} rows but the config's vocab_size gives {expected[0]}")
        if shape != expected:
            raise ValueError(f"shape mismatch for {name!r} in {reader.path}: checkpoint "
                             f"{shape}, model variable {variable.path} expects {expected}")
        assignments.append((name, variable, kind, transpose))
    _check_unused(reader, pairs, {name for name, *_ in assignments}, ignore_unused_weights)
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


# Hugging Face files may hold a tied copy of the word embeddings and a buffer of
# position ids; neither is a weight of its own.
_HUGGING_FACE_EXTRAS = ("cls.predictions.decoder.weight", "embeddings.position_ids")


def _check_unused(reader, pairs, consumed, ignore):
    """Refuse (or with ``ignore``, warn about) unconsumed names in the model's scope."""
    groups = {"/".join(google_name.split("/")[:2]) + "/" for google_name, _, _ in pairs}
    accounted = set(consumed)
    if reader.format == "safetensors":
        groups = {group.replace("/", ".") for group in groups}
        groups |= {group[len("bert."):] for group in groups if group.startswith("bert.")}
        for google_name, _, _ in pairs:  # aliases, such as the two MLM bias spellings
            accounted.update(hugging_face_names(google_name)[0])
    unused = sorted(name for name in reader.names
                    if name.startswith(tuple(groups)) and name not in accounted
                    and not name.endswith(_HUGGING_FACE_EXTRAS))
    if not unused:
        return
    message = (f"checkpoint {reader.path} holds {len(unused)} variables in the model's "
               f"own scope that the model does not use (does the config match the "
               f"checkpoint, e.g. num_hidden_layers?): {unused[:20]}"
               f"{' ...' if len(unused) > 20 else ''}")
    if not ignore:
        raise ValueError(message + "; pass ignore_unused_weights=True to load anyway")
    warnings.warn(message, stacklevel=4)


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
        names, tensors = [], []
        for google_name, variable, kind in pairs:
            value = np.asarray(keras_value(variable), dtype=np.float32)
            names.append(google_name)
            tensors.append(tf.constant(value.T if kind == "transposed" else value))
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
