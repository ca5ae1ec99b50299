"""``build_transformer_model`` and probes of a built model.

The graph is built by :class:`bert4x.transformer.Transformer`; the families
(:class:`BERT`, :class:`RoBERTa`, :class:`ALBERT`, :class:`ALBERTUnshared`,
:class:`ELECTRA`, :class:`RoFormer`, :class:`NEZHA`) are in
:mod:`bert4x.families` and importable from here too.
"""

import keras

from bert4x import storage
from bert4x.configs import BertConfig
from bert4x.families import (ALBERT, BERT, MODELS, NEZHA, ALBERTUnshared, ELECTRA, RoBERTa,
                             RoFormer, family_of)
from bert4x.layers import ReusedLayer
from bert4x.transformer import BERT_BLOCK_NAMES, Transformer

# The families and the core are importable from here too.
__all__ = ["build_transformer_model", "intermediate_model", "attention_model", "MODELS",
           "Transformer", "BERT", "RoBERTa", "ALBERT", "ALBERTUnshared", "ELECTRA",
           "RoFormer", "NEZHA", "BERT_BLOCK_NAMES"]

_CONFIG_NAMES = ("bert_config.json", "config.json")


def _config_in(folder):
    """The Google or Hugging Face config file inside ``folder``."""
    for name in _CONFIG_NAMES:
        if storage.isfile(storage.join(folder, name)):
            return storage.join(folder, name)
    raise FileNotFoundError(f"no {' or '.join(_CONFIG_NAMES)} found in {folder!r}; "
                            "pass config_path")


def _resolve_paths(config_path, checkpoint_path):
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
                            application="encoder", with_pool=False, with_nsp=False,
                            with_mlm=False, keep_tokens=None, return_keras_model=True,
                            allow_missing_heads=False, ignore_unused_weights=False,
                            layer_norm_cond=None,
                            layer_norm_cond_hidden_size=None, layer_norm_cond_hidden_act=None,
                            additional_input_layers=None, dtype=None,
                            with_discriminator=False, **overrides):
    """Build a Keras model of the BERT family, optionally loading pretrained weights.

    Args:
        config_path: ``bert_config.json`` / ``config.json``, or a folder holding one
            (and the weights). May be omitted when ``checkpoint_path`` is a folder.
        checkpoint_path: a Google TF checkpoint prefix (``.../bert_model.ckpt``), a
            Hugging Face ``model.safetensors``, or a folder holding either.
        model: the family, with bert4keras's names: ``"bert"``, ``"roberta"``,
            ``"albert"``, ``"albert_unshared"``, ``"electra"``, ``"roformer"``,
            ``"nezha"`` (see ``MODELS``).
            None: the config's ``family`` (written by ``save_checkpoint``), else
            its Hugging Face ``model_type``, else ``"bert"``.
        application: ``"encoder"``, ``"lm"`` or ``"unilm"`` (the last two turn the
            MLM head on and return its output alone).
        with_pool, with_nsp, with_mlm, with_discriminator: heads to add (see
            :class:`Transformer`; a family refuses heads it does not have).
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
        **overrides: config fields to override (e.g. ``hidden_dropout_prob=0``), or
            the whole config when ``config_path`` is None.

    Returns:
        A ``keras.Model`` whose inputs are ``[token_ids, segment_ids, *additional]``
        and whose outputs are ``[sequence_output, pooled?, nsp_probs?, mlm?,
        discriminator?]`` (a single tensor when there is one), or the builder.

    Example:
        >>> model = build_transformer_model(  # doctest: +SKIP
        ...     "chinese_L-12_H-768_A-12/bert_config.json",
        ...     "chinese_L-12_H-768_A-12/bert_model.ckpt", with_mlm=True)
        >>> albert = build_transformer_model(  # doctest: +SKIP
        ...     "albert_tiny_zh/albert_config_tiny.json",
        ...     "albert_tiny_zh/albert_model.ckpt", model="albert")
    """
    if model is not None and model not in MODELS:
        raise ValueError(f"unknown model {model!r}; available: {sorted(MODELS)}")
    config_path, checkpoint_path = _resolve_paths(config_path, checkpoint_path)
    if config_path is not None:
        config = BertConfig.from_json(config_path).replace(**overrides)
    else:
        try:
            config = BertConfig(**overrides)
        except TypeError as error:
            raise TypeError(f"without config_path, pass BertConfig fields as keywords: "
                            f"{error}") from error
    if config.family is not None and config.family not in MODELS:
        raise ValueError(f"the config's family {config.family!r} is not a family bert4x "
                         f"builds; available: {sorted(MODELS)}")
    if model is None:
        model = config.family or (family_of(config.model_type) if config.model_type
                                  else "bert")
        if model not in MODELS:
            raise ValueError(f"the config's model_type {config.model_type!r} is not a "
                             f"family bert4x builds; available: {sorted(MODELS)}")
    builder = MODELS[model](
        config, application=application, with_pool=with_pool, with_nsp=with_nsp,
        with_mlm=with_mlm, keep_tokens=keep_tokens, layer_norm_cond=layer_norm_cond,
        layer_norm_cond_hidden_size=layer_norm_cond_hidden_size,
        layer_norm_cond_hidden_act=layer_norm_cond_hidden_act,
        additional_input_layers=additional_input_layers, dtype=dtype,
        with_discriminator=with_discriminator)
    if checkpoint_path is not None:
        builder.load_checkpoint(checkpoint_path, allow_missing_heads=allow_missing_heads,
                                ignore_unused_weights=ignore_unused_weights)
    return builder.model if return_keras_model else builder


def intermediate_model(model, layer_names):
    """A model with the same inputs that returns the outputs of the named layers.

    Args:
        model: a functional model from :func:`build_transformer_model` (or loaded
            from ``.keras``).
        layer_names: a name or a list of names, e.g. ``"Transformer-1-FeedForward-Norm"``.

    Example:
        >>> probe = intermediate_model(model, ["Embedding-Norm",  # doctest: +SKIP
        ...                                    "Transformer-0-FeedForward-Norm"])
        >>> embeddings, first_layer = probe.predict([token_ids, segment_ids])
    """
    names = [layer_names] if isinstance(layer_names, str) else list(layer_names)
    outputs = [_layer(model, name).output for name in names]
    return keras.Model(model.inputs, outputs[0] if len(outputs) == 1 else outputs)


def attention_model(model, layer_indices):
    """A model returning the attention probabilities ``[batch, heads, query, key]``.

    The attention layers of ``model`` are called again on their own inputs with
    ``return_attention_scores=True``: no weights are copied and nothing is rebuilt
    by hand. Masked keys get probability 0.

    Args:
        model: a functional BERT model.
        layer_indices: an int or a list of ints (0 is the first Transformer layer).
    """
    indices = [layer_indices] if isinstance(layer_indices, int) else list(layer_indices)
    outputs = []
    # The inputs of layer i's attention: the previous layer's output (the
    # embeddings for i = 0) and the shared attention bias, read by layer name.
    bias = _layer(model, "Attention-Bias").output
    for index in indices:
        attention = _layer(model, f"Transformer-{index}-MultiHeadSelfAttention")
        previous = ("Embedding-Dropout" if index == 0
                    else f"Transformer-{index - 1}-FeedForward-Norm")
        x = _layer(model, previous).output
        _, probs = ReusedLayer(attention, return_attention_scores=True)(
            x, attention_bias=bias)
        outputs.append(probs)
    return keras.Model(model.inputs, outputs[0] if len(outputs) == 1 else outputs)


def _layer(model, name):
    try:
        return model.get_layer(name)
    except ValueError:
        names = [layer.name for layer in model.layers]
        raise ValueError(f"model {model.name!r} has no layer {name!r}; its layers: "
                         f"{names}") from None
