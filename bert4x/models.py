"""``build_transformer_model`` and probes of a built model.

The graph is built by :class:`bert4x.transformer.Transformer`; the families
(:class:`BERT`, :class:`RoBERTa`, :class:`ALBERT`, :class:`ALBERTUnshared`,
:class:`ELECTRA`, :class:`RoFormer`, :class:`NEZHA`, :class:`RoFormerV2`, :class:`GPT`,
:class:`GPT2`, :class:`GPT2ML`) are in
:mod:`bert4x.families` (one module each) and importable from here too; importing
this module registers them in :data:`bert4x.registry.MODELS`.
"""

import numbers

import keras

from bert4x import storage
from bert4x.configs import read_config_file
from bert4x.families import (ALBERT, BERT, BERT_BLOCK_NAMES, GPT, GPT2, NEZHA, ALBERTUnshared,
                             ELECTRA, GPT2ML, RoBERTa, RoFormer, RoFormerV2)
from bert4x.layers import AttentionProbabilities, MultiHeadAttention
from bert4x.registry import MODELS, family_of
from bert4x.transformer import Transformer

# The families and the core are importable from here too.
__all__ = ["build_transformer_model", "intermediate_model", "attention_model", "MODELS",
           "Transformer", "BERT", "RoBERTa", "ALBERT", "ALBERTUnshared", "ELECTRA",
           "RoFormer", "NEZHA", "RoFormerV2", "GPT", "GPT2", "GPT2ML", "BERT_BLOCK_NAMES",
           "family_of"]

_CONFIG_NAMES = ("bert_config.json", "config.json")


def _config_in(folder):
    """The Google or Hugging Face config file inside ``folder``."""
    for name in _CONFIG_NAMES:
        if storage.isfile(storage.join(folder, name)):
            return storage.join(folder, name)
    raise FileNotFoundError(f"no {' or '.join(_CONFIG_NAMES)} found in {folder!r}; "
                            "pass config_path")


def resolve_paths(config_path, checkpoint_path):
    """Accept a folder for either argument; find the config beside the weights."""
    if config_path is None and checkpoint_path is not None:
        folder = checkpoint_path if storage.isdir(checkpoint_path) else storage.dirname(
            checkpoint_path)
        config_path = _config_in(folder)
    elif config_path is not None and storage.isdir(config_path):
        checkpoint_path = checkpoint_path or config_path
        config_path = _config_in(config_path)
    return config_path, checkpoint_path


def build_transformer_model(config_path=None, checkpoint_path=None, model=None,
                            application=None, with_pool=False, with_nsp=False,
                            with_mlm=False, mlm_positions=False, keep_tokens=None,
                            return_keras_model=True,
                            allow_missing_heads=False, ignore_unused_weights=False,
                            layer_norm_cond=None,
                            layer_norm_cond_hidden_size=None, layer_norm_cond_hidden_act=None,
                            additional_input_layers=None, dtype=None,
                            with_discriminator=False, name=None, **overrides):
    """Build a Keras model of the BERT family, optionally loading pretrained weights.

    Args:
        config_path: ``bert_config.json`` / ``config.json``, or a folder holding one
            (and the weights). May be omitted when ``checkpoint_path`` is a folder.
        checkpoint_path: a Google TF checkpoint prefix (``.../bert_model.ckpt``), a
            Hugging Face ``model.safetensors``, or a folder holding either.
        model: the family, with bert4keras's names: ``"bert"``, ``"roberta"``,
            ``"albert"``, ``"albert_unshared"``, ``"electra"``, ``"roformer"``,
            ``"nezha"``, ``"roformer_v2"``, ``"gpt"``, ``"gpt2"``, ``"gpt2_ml"`` (see
            ``MODELS``).
            None: the config's ``family`` (written by ``save_checkpoint``), else
            its Hugging Face ``model_type``, else ``"bert"``.
        application: ``"encoder"``, ``"lm"`` or ``"unilm"`` (the last two turn the
            MLM head on and return its output alone); None: the family's natural
            one, ``"encoder"`` for the BERT family, ``"lm"`` for the GPTs (which
            build ``"lm"``, and ``gpt`` also ``"unilm"``, only).
        with_pool, with_nsp, with_mlm, with_discriminator: heads to add (see
            :class:`Transformer`; a family refuses heads it does not have).
        mlm_positions: run the MLM head only at given positions (keras-hub's
            ``mask_positions``): the model takes ``[token_ids, segment_ids,
            positions]`` and its MLM output is ``[batch, P, vocab]``, the full
            head's output gathered at ``positions`` ``[batch, P]``.
        keep_tokens: vocabulary rows to keep (from ``load_vocab(simplified=True)``).
        return_keras_model: ``False`` returns the builder (a :class:`Transformer`),
            which also gives the incremental-decoding graphs.
        allow_missing_heads: start heads the checkpoint lacks from their initialiser
            (with a warning naming them) instead of raising.
        ignore_unused_weights: load a checkpoint holding variables in the model's
            own scope that the model does not use (e.g. a 3-layer checkpoint with
            ``num_hidden_layers=2``), with a warning listing them, instead of
            raising. Heads the model did not ask for (``cls/*``, the pooler) are
            never an error.
        layer_norm_cond, layer_norm_cond_hidden_size, layer_norm_cond_hidden_act,
            additional_input_layers: Conditional Layer Normalization (see
            :class:`Transformer`).
        dtype: a Keras dtype policy name such as ``"mixed_bfloat16"``.
        name: the name of the Keras model (default: the family's).
        **overrides: config fields to override (e.g. ``hidden_dropout_prob=0``), or
            the whole config when ``config_path`` is None.

    Returns:
        A ``keras.Model`` whose inputs are ``[token_ids, segment_ids, positions?,
        *additional]`` (token ids alone for ``gpt2``, ``gpt2_ml`` and a ``gpt``
        without a segment table)
        and whose outputs are ``[sequence_output, pooled?, nsp_probs?, mlm?,
        discriminator?]`` (a single tensor when there is one), or the builder.

    Example:
        >>> model = build_transformer_model(  # doctest: +SKIP
        ...     "chinese_L-12_H-768_A-12/bert_config.json",
        ...     "chinese_L-12_H-768_A-12/bert_model.ckpt", with_mlm=True)
        >>> albert = build_transformer_model(  # doctest: +SKIP
        ...     "albert_tiny_zh/albert_config_tiny.json",
        ...     "albert_tiny_zh/albert_model.ckpt", model="albert")
        >>> masked_lm = build_transformer_model(  # doctest: +SKIP
        ...     "chinese_L-12_H-768_A-12", with_mlm="linear", mlm_positions=True)
        >>> logits = masked_lm.predict([token_ids, segment_ids, positions])  # [B, P, V]
    """
    if model is not None and model not in MODELS:
        raise ValueError(f"unknown model {model!r}; available: {sorted(MODELS)}")
    config_path, checkpoint_path = resolve_paths(config_path, checkpoint_path)
    values = read_config_file(config_path) if config_path is not None else overrides
    model = model or _family_named_by(values)
    config_class = MODELS[model].config_class
    if config_path is not None:
        config = config_class.from_dict(values, source=config_path).replace(**overrides)
    else:
        try:
            config = config_class(**overrides)
        except TypeError as error:
            raise TypeError(f"without config_path, pass {config_class.__name__} fields as "
                            f"keywords: {error}") from error
    builder = MODELS[model](
        config, application=application, with_pool=with_pool, with_nsp=with_nsp,
        with_mlm=with_mlm, mlm_positions=mlm_positions, keep_tokens=keep_tokens,
        layer_norm_cond=layer_norm_cond,
        layer_norm_cond_hidden_size=layer_norm_cond_hidden_size,
        layer_norm_cond_hidden_act=layer_norm_cond_hidden_act,
        additional_input_layers=additional_input_layers, dtype=dtype,
        with_discriminator=with_discriminator, name=name)
    if checkpoint_path is not None:
        builder.load_checkpoint(checkpoint_path, allow_missing_heads=allow_missing_heads,
                                ignore_unused_weights=ignore_unused_weights)
    return builder.model if return_keras_model else builder


def _family_named_by(values):
    """The family a config's values name: its ``family`` (written by
    ``save_checkpoint``), else its Hugging Face ``model_type``, else ``"bert"``."""
    family = values.get("family")
    if family is not None:
        if family not in MODELS:
            raise ValueError(f"the config's family {family!r} is not a family bert4x "
                             f"builds; available: {sorted(MODELS)}")
        return family
    model_type = values.get("model_type")
    if model_type is None:
        return "bert"
    if family_of(model_type) not in MODELS:
        raise ValueError(f"the config's model_type {model_type!r} is not a family bert4x "
                         f"builds; available: {sorted(MODELS)}")
    return family_of(model_type)


def intermediate_model(model, layer_names):
    """A model with the same inputs that returns the outputs of the named layers.

    A layer that runs more than once (ALBERT's shared layers run once per
    Transformer layer) is named with the call: ``(name, call)``, ``call``
    counting from 0 (negative counts from the end).

    Args:
        model: a functional model from :func:`build_transformer_model` (or loaded
            from ``.keras``).
        layer_names: a name, a ``(name, call)`` pair, or a list of them, e.g.
            ``"Transformer-1-FeedForward-Norm"``.

    Raises:
        ValueError: no such layer, or a shared layer named without its call, or a
            call it does not make (each named with the number of calls).

    Example:
        >>> probe = intermediate_model(model, ["Embedding-Norm",  # doctest: +SKIP
        ...                                    "Transformer-0-FeedForward-Norm"])
        >>> embeddings, first_layer = probe.predict([token_ids, segment_ids])
        >>> third = intermediate_model(albert, ("Transformer-FeedForward-Norm", 2))  # doctest: +SKIP
    """
    single = isinstance(layer_names, str) or (
        isinstance(layer_names, tuple) and len(layer_names) == 2
        and _is_index(layer_names[1]))
    names = [layer_names] if single else list(layer_names)
    if not names:
        raise ValueError("layer_names is empty: name at least one layer")
    graph = _Calls(model)
    outputs = []
    for item in names:
        name, call = (item, None) if isinstance(item, str) else item
        found = graph.outputs(name, graph.call_index(name, call))
        outputs.append(found[0] if len(found) == 1 else found)
    return keras.Model(model.inputs, outputs[0] if len(outputs) == 1 else outputs)


def attention_model(model, layer_indices):
    """A model returning the attention probabilities ``[batch, heads, query, key]``.

    The attention layers of ``model`` are read again on the inputs they get in
    ``model`` through :class:`~bert4x.layers.AttentionProbabilities`: no weights
    are copied and nothing is rebuilt by hand. Masked keys get probability 0.

    Args:
        model: a functional BERT-family model (any family; ALBERT's shared
            layers included).
        layer_indices: an int or a list of ints: the attention calls in the order
            they run (0 is the first Transformer layer's; ALBERT with
            ``inner_group_num`` > 1 runs that many per layer, as ``transformers``
            counts them). Negative counts from the end.

    Example:
        >>> first, last = attention_model(model, [0, -1]).predict(  # doctest: +SKIP
        ...     [token_ids, segment_ids])
    """
    indices = [layer_indices] if _is_index(layer_indices) or isinstance(
        layer_indices, bool) else list(layer_indices)
    if not indices:
        raise ValueError("layer_indices is empty: give at least one attention layer")
    graph = _Calls(model)
    calls = graph.attention_calls()
    outputs, readers = [], {}
    for index in indices:
        if not _is_index(index) or not -len(calls) <= index < len(calls):
            raise ValueError(f"model {model.name!r} runs {len(calls)} attention layers "
                             f"(indices 0..{len(calls) - 1}); got {index!r}")
        name, call = calls[int(index)]
        args, kwargs = graph.arguments(name, call)
        if name not in readers:  # one per layer: a shared (ALBERT) layer's calls share it
            readers[name] = AttentionProbabilities(model.get_layer(name))
        outputs.append(readers[name](*args, **kwargs))
    return keras.Model(model.inputs, outputs[0] if len(outputs) == 1 else outputs)


class _Calls:
    """The calls of a functional model's layers, read from its (public) config.

    A layer's first call gives its ``output``; a later call of a shared layer is
    replayed: the layer is called again on the replayed inputs of that call,
    which shares its weights and gives the same tensor.
    """

    def __init__(self, model):
        config = model.get_config()
        self.model = model
        self.nodes = {layer["name"]: layer["inbound_nodes"] for layer in config["layers"]}
        # Layers and the keras.ops operations of the graph (which get_layer does not find).
        self.operations = {operation.name: operation for operation in model.operations}
        self.inputs = {name: tensor for (name, _, _), tensor in
                       zip(config["input_layers"], model.inputs)}
        self._outputs = {}

    def call_index(self, name, call):
        """``call`` checked against the calls of ``name`` (None: its only call)."""
        _layer(self.model, name)
        count = len(self.nodes.get(name, ()))
        if call is None:
            if count > 1:
                raise ValueError(
                    f"layer {name!r} runs {count} times in model {self.model.name!r} (its "
                    f"weights are shared); name the call: ({name!r}, 0) .. "
                    f"({name!r}, {count - 1})")
            return 0
        if not _is_index(call) or not -count <= call < count:
            raise ValueError(f"layer {name!r} runs {count} times in model "
                             f"{self.model.name!r}; there is no call {call!r}")
        return int(call) % count

    def outputs(self, name, call):
        """The output tensors (a list) of call ``call`` of layer ``name``."""
        key = (name, call)
        if key not in self._outputs:
            if name in self.inputs:
                found = self.inputs[name]
            elif call == 0:
                found = self.operations[name].output
            else:
                args, kwargs = self.arguments(name, call)
                found = self.operations[name](*args, **kwargs)
            self._outputs[key] = list(found) if isinstance(found, (list, tuple)) else [found]
        return self._outputs[key]

    def arguments(self, name, call):
        """``(args, kwargs)`` of call ``call`` of layer ``name``, as tensors."""
        node = self.nodes[name][call]
        return self._tensors(node["args"]), self._tensors(node["kwargs"])

    def _tensors(self, value):
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                name, call, index = value["config"]["keras_history"]
                return self.outputs(name, call)[index]
            return {key: self._tensors(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._tensors(item) for item in value)
        return value

    def attention_calls(self):
        """``[(layer name, call)]`` of every bert4x attention call, in running order."""
        attention = {name for name, operation in self.operations.items()
                     if isinstance(operation, MultiHeadAttention)}
        # Attention calls upstream of each call (longest path), depth first with a
        # stack: a deep model's chain is longer than Python's recursion limit.
        before = {}
        calls = [(name, call) for name in attention for call in range(len(self.nodes[name]))]
        for start in calls:
            stack = [start]
            while stack:
                key = stack[-1]
                node = {} if key[0] in self.inputs else self.nodes[key[0]][key[1]]
                parents = _parents(node)
                waiting = [parent for parent in parents if parent not in before]
                if waiting:
                    stack.extend(waiting)
                    continue
                before[key] = max((before[parent] + (parent[0] in attention)
                                   for parent in parents), default=0)
                stack.pop()
        return sorted(calls, key=before.__getitem__)


def _is_index(value):
    """An int (NumPy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _parents(value):
    """``(layer name, call)`` of every tensor a serialised call reads."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            name, call, _ = value["config"]["keras_history"]
            return [(name, call)]
        return [parent for item in value.values() for parent in _parents(item)]
    if isinstance(value, (list, tuple)):
        return [parent for item in value for parent in _parents(item)]
    return []


def _layer(model, name):
    try:
        return model.get_layer(name)
    except ValueError:
        names = [layer.name for layer in model.layers]
        raise ValueError(f"model {model.name!r} has no layer {name!r}; its layers: "
                         f"{names}") from None
