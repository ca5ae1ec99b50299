"""Build BERT-family models: ``build_transformer_model`` and the :class:`BERT` builder.

The Transformer block is written once (:meth:`BERT.block`) and used by three
graphs that share the same layers, hence the same weights:

* the Keras model users train and save (``BERT.model``);
* the prefill model of incremental decoding (runs a source once and returns the
  next-token logits and every layer's keys and values);
* the step model (runs one new token against the cached keys and values).
"""

import warnings

import keras
import numpy as np
from keras import ops

from bert4x import checkpoints, storage
from bert4x.configs import BertConfig
from bert4x.layers import (AttentionBias, BiasAdd, Dropout, FeedForward, FirstToken,
                           LayerNormalization, MultiHeadAttention, PositionEmbedding,
                           ReusedLayer, ReversibleEmbedding, get_activation)

_MASK_PENALTY = -1e9


class BERT:
    """Builder of a BERT model and of its incremental-decoding graphs.

    Layer names follow bert4keras (``Embedding-Token``, ``Transformer-3-FeedForward``,
    ``MLM-Norm``, ...), so intermediate outputs are one ``model.get_layer`` away.

    Args:
        config: a :class:`BertConfig`.
        application: ``"encoder"``, ``"lm"`` (left to right) or ``"unilm"`` (seq2seq).
        with_pool: add the pooler output (tanh Dense on ``[CLS]``).
        with_nsp: add next-sentence probabilities (implies the pooler);
            ``"linear"`` for logits.
        with_mlm: ``True`` for MLM probabilities, ``"linear"`` for logits.
        keep_tokens: ids of the vocabulary rows to keep (a trimmed vocabulary).
        layer_norm_cond: a Keras tensor ``[batch, c]`` computed from
            ``additional_input_layers``; makes every LayerNorm conditional.
        layer_norm_cond_hidden_size: if set, the condition first goes through a
            bias-free ``Dense(size, layer_norm_cond_hidden_act)`` shared by all norms.
        layer_norm_cond_hidden_act: activation of that Dense.
        additional_input_layers: extra ``keras.Input`` tensors the condition uses
            (one tensor or a list); they become model inputs after token and
            segment ids.
        dtype: a dtype policy for every layer (e.g. ``"mixed_bfloat16"``).
        name: name of the Keras model.
    """

    def __init__(self, config, application="encoder", with_pool=False, with_nsp=False,
                 with_mlm=False, keep_tokens=None, layer_norm_cond=None,
                 layer_norm_cond_hidden_size=None, layer_norm_cond_hidden_act=None,
                 additional_input_layers=None, dtype=None, name="bert"):
        if application not in AttentionBias.APPLICATIONS:
            raise ValueError(f"unknown application {application!r}; expected one of "
                             f"{AttentionBias.APPLICATIONS}")
        if keep_tokens is not None:
            keep_tokens = [int(token) for token in keep_tokens]
            out_of_range = [t for t in keep_tokens if not 0 <= t < config.vocab_size]
            if out_of_range:
                raise ValueError(f"keep_tokens has ids outside the vocabulary of "
                                 f"{config.vocab_size}: {out_of_range[:10]}")
            config = config.replace(vocab_size=len(keep_tokens))
        if additional_input_layers is None:
            additional_input_layers = []
        elif not isinstance(additional_input_layers, (list, tuple)):
            additional_input_layers = [additional_input_layers]  # one tensor, as bert4keras
        if layer_norm_cond is not None and not additional_input_layers:
            raise ValueError("layer_norm_cond must be computed from additional_input_layers "
                             "(pass the keras.Input tensors it depends on)")
        self.config = config
        self.application = application
        if with_nsp not in (False, True, "linear", None):
            raise ValueError(f"with_nsp must be True, False or 'linear', got {with_nsp!r}")
        self.with_nsp = with_nsp or False
        self.with_pool = bool(with_pool)
        # Generators need the MLM head: lm/unilm switch it on.
        self.with_mlm = with_mlm or application in ("lm", "unilm")
        self.keep_tokens = keep_tokens
        self.additional_inputs = list(additional_input_layers)
        self.conditional = layer_norm_cond is not None
        self.condition_model = None
        if self.conditional:
            self.condition_model = keras.Model(
                self.additional_inputs, layer_norm_cond, name="layer_norm_condition")
        self.cond_hidden_size = layer_norm_cond_hidden_size
        self.cond_hidden_act = layer_norm_cond_hidden_act
        self.dtype = dtype
        self.name = name
        self._create_layers()
        self.model = self._build_model()
        self._cache_models = None

    # ----------------------------------------------------------------- layers
    def _initializer(self):
        return keras.initializers.TruncatedNormal(stddev=self.config.initializer_range)

    def _norm(self, name):
        return LayerNormalization(self.config.layer_norm_eps, conditional=self.conditional,
                                  name=name, dtype=self.dtype)

    def _create_layers(self):
        c = self.config
        init = self._initializer
        kw = dict(dtype=self.dtype)
        self.token_embedding = ReversibleEmbedding(
            c.vocab_size, c.hidden_size, embeddings_initializer=init(),
            name="Embedding-Token", **kw)
        self.segment_embedding = keras.layers.Embedding(
            c.type_vocab_size, c.hidden_size, embeddings_initializer=init(),
            name="Embedding-Segment", **kw)
        self.position_embedding = PositionEmbedding(
            c.max_position_embeddings, c.hidden_size, embeddings_initializer=init(),
            name="Embedding-Position", **kw)
        self.embedding_add = keras.layers.Add(name="Embedding-Add", **kw)
        self.embedding_norm = self._norm("Embedding-Norm")
        self.embedding_dropout = Dropout(
            c.hidden_dropout_prob, name="Embedding-Dropout", **kw)
        self.attention_bias = AttentionBias(self.application, name="Attention-Bias")
        self.cond_dense = None
        if self.conditional and self.cond_hidden_size:
            self.cond_dense = keras.layers.Dense(
                self.cond_hidden_size, activation=get_activation(self.cond_hidden_act),
                use_bias=False, kernel_initializer=init(), name="LayerNorm-Condition", **kw)
        self.blocks = []
        for i in range(c.num_hidden_layers):
            prefix = f"Transformer-{i}-"
            self.blocks.append(dict(
                attention=MultiHeadAttention(
                    c.num_attention_heads, c.head_size, c.attention_probs_dropout_prob,
                    kernel_initializer=init(), name=prefix + "MultiHeadSelfAttention", **kw),
                attention_dropout=Dropout(
                    c.hidden_dropout_prob, name=prefix + "MultiHeadSelfAttention-Dropout",
                    **kw),
                attention_add=keras.layers.Add(name=prefix + "MultiHeadSelfAttention-Add",
                                               **kw),
                attention_norm=self._norm(prefix + "MultiHeadSelfAttention-Norm"),
                feed_forward=FeedForward(
                    c.intermediate_size, c.hidden_act, kernel_initializer=init(),
                    name=prefix + "FeedForward", **kw),
                feed_forward_dropout=Dropout(
                    c.hidden_dropout_prob, name=prefix + "FeedForward-Dropout", **kw),
                feed_forward_add=keras.layers.Add(name=prefix + "FeedForward-Add", **kw),
                feed_forward_norm=self._norm(prefix + "FeedForward-Norm"),
            ))
        self.pooler = self.pooler_dense = self.nsp_dense = None
        if self.with_pool or self.with_nsp:
            self.pooler = FirstToken(name="Pooler")
            self.pooler_dense = keras.layers.Dense(
                c.hidden_size, activation="tanh", kernel_initializer=init(),
                name="Pooler-Dense", **kw)
        if self.with_nsp:
            self.nsp_dense = keras.layers.Dense(
                2, activation=None if self.with_nsp == "linear" else "softmax",
                kernel_initializer=init(), name="NSP-Proba",
                dtype="float32")
        self.mlm_dense = self.mlm_norm = self.mlm_bias = None
        if self.with_mlm:
            self.mlm_dense = keras.layers.Dense(
                c.hidden_size, activation=get_activation(c.hidden_act),
                kernel_initializer=init(), name="MLM-Dense", **kw)
            self.mlm_norm = self._norm("MLM-Norm")
            self.mlm_bias = BiasAdd(name="MLM-Bias", dtype="float32")
            self.mlm_activation = keras.layers.Activation(
                "softmax", name="MLM-Activation", dtype="float32")

    # ------------------------------------------------------------------ graph
    def _inputs(self, length=None, prefix="Input"):
        token_ids = keras.Input((length,), dtype="int32", name=f"{prefix}-Token")
        segment_ids = keras.Input((length,), dtype="int32", name=f"{prefix}-Segment")
        return token_ids, segment_ids

    def _condition(self, condition):
        if condition is None or self.cond_dense is None:
            return condition
        return self.cond_dense(condition)

    def embed(self, token_ids, segment_ids, position_ids=None, condition=None,
              training=None):
        """Token + segment + position embeddings, then (conditional) LayerNorm and dropout."""
        x = self.token_embedding(token_ids)
        s = self.segment_embedding(segment_ids)
        p = self.position_embedding(x, position_ids=position_ids)
        x = self.embedding_add([x, s, p])
        x = self.embedding_norm(x, condition=condition)
        return self.embedding_dropout(x, training=training)

    def block(self, index, x, attention_bias, condition=None, cache=None, write_mask=None,
              return_cache=False, training=None):
        """One post-norm Transformer layer; returns ``x`` or ``(x, cache)``."""
        layers = self.blocks[index]
        new_cache = None
        if cache is not None:
            attended, new_cache = ReusedLayer(layers["attention"])(
                x, attention_bias=attention_bias, cache=cache, write_mask=write_mask)
        elif return_cache:
            attended, new_cache = ReusedLayer(layers["attention"], return_cache=True)(
                x, attention_bias=attention_bias)
        else:
            attended = layers["attention"](x, attention_bias=attention_bias,
                                           training=training)
        attended = layers["attention_dropout"](attended, training=training)
        x = layers["attention_add"]([x, attended])
        x = layers["attention_norm"](x, condition=condition)
        transformed = layers["feed_forward"](x)
        transformed = layers["feed_forward_dropout"](transformed, training=training)
        x = layers["feed_forward_add"]([x, transformed])
        x = layers["feed_forward_norm"](x, condition=condition)
        return (x, new_cache) if new_cache is not None else x

    def mlm_logits(self, x, condition=None):
        """The MLM head: Dense, activation, (conditional) LayerNorm, tied output, bias."""
        x = self.mlm_dense(x)
        x = self.mlm_norm(x, condition=condition)
        x = self.token_embedding(x, reverse=True)
        return self.mlm_bias(x)

    def _build_model(self):
        token_ids, segment_ids = self._inputs()
        inputs = [token_ids, segment_ids] + self.additional_inputs
        condition = None
        if self.conditional:
            condition = self._condition(self.condition_model(self.additional_inputs))
        x = self.embed(token_ids, segment_ids, condition=condition)
        bias = self.attention_bias(token_ids, segment_ids)
        for index in range(self.config.num_hidden_layers):
            x = self.block(index, x, bias, condition=condition)
        outputs = [x]
        if self.pooler is not None:
            pooled = self.pooler_dense(self.pooler(x))
            if self.with_pool:
                outputs.append(pooled)
            if self.with_nsp:
                outputs.append(self.nsp_dense(pooled))
        if self.with_mlm:
            logits = self.mlm_logits(x, condition=condition)
            outputs.append(logits if self.with_mlm == "linear" else self.mlm_activation(logits))
        if self.application in ("lm", "unilm") and len(outputs) == 2:
            outputs = outputs[1:]  # generators are used for their token distribution
        return keras.Model(inputs, outputs[0] if len(outputs) == 1 else outputs,
                           name=self.name)

    # ------------------------------------------------------ incremental decoding
    def cache_models(self):
        """Return ``(prefill_model, step_model)`` for incremental decoding.

        ``prefill_model([token_ids, segment_ids, last_index, *extra])`` runs the
        padded sources once and returns the MLM logits ``[batch, vocab]`` at
        ``last_index`` and the cache ``[batch, layers, 2, heads, length, head_size]``.

        ``step_model([token_ids, segment_ids, position_ids, cache, key_mask,
        write_mask, *extra])`` runs one token per row (all ``[batch, 1]``)
        against ``cache`` (``[batch, layers, 2, heads, M, head_size]``);
        ``key_mask`` ``[batch, M]`` marks the valid cache slots including the one
        written now, ``write_mask`` one-hot marks that slot. Returns the logits
        ``[batch, vocab]`` and the updated cache.
        """
        if self.application == "encoder":
            raise ValueError("incremental decoding needs application='lm' or 'unilm'")
        if self._cache_models is None:
            self._cache_models = (self._build_prefill_model(), self._build_step_model())
        return self._cache_models

    def _extra_inputs(self, prefix):
        extra = [keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype,
                             name=f"{prefix}-{i}") for i, tensor in enumerate(self.additional_inputs)]
        condition = None
        if self.conditional:
            condition = self._condition(self.condition_model(extra))
        return extra, condition

    def _build_prefill_model(self):
        token_ids, segment_ids = self._inputs(prefix="Prefill")
        last_index = keras.Input((), dtype="int32", name="Prefill-LastIndex")
        extra, condition = self._extra_inputs("Prefill-Extra")
        x = self.embed(token_ids, segment_ids, condition=condition)
        bias = self.attention_bias(token_ids, segment_ids)
        caches = []
        for index in range(self.config.num_hidden_layers):
            x, cache = self.block(index, x, bias, condition=condition, return_cache=True)
            caches.append(cache)
        last = ops.take_along_axis(x, ops.reshape(last_index, (-1, 1, 1)), axis=1)
        logits = self.mlm_logits(last, condition=condition)[:, 0]
        return keras.Model([token_ids, segment_ids, last_index] + extra,
                           [logits, ops.stack(caches, axis=1)], name=f"{self.name}_prefill")

    def _build_step_model(self):
        c = self.config
        token_ids, segment_ids = self._inputs(length=1, prefix="Step")
        position_ids = keras.Input((1,), dtype="int32", name="Step-Position")
        cache = keras.Input((c.num_hidden_layers, 2, c.num_attention_heads, None, c.head_size),
                            name="Step-Cache", dtype=self.model.compute_dtype)
        key_mask = keras.Input((None,), name="Step-KeyMask")
        write_mask = keras.Input((None,), name="Step-WriteMask")
        extra, condition = self._extra_inputs("Step-Extra")
        x = self.embed(token_ids, segment_ids, position_ids=position_ids, condition=condition)
        bias = ops.where(ops.cast(key_mask, "bool"), 0.0, _MASK_PENALTY)[:, None, None, :]
        caches = []
        for index in range(c.num_hidden_layers):
            x, layer_cache = self.block(index, x, bias, condition=condition,
                                        cache=cache[:, index], write_mask=write_mask)
            caches.append(layer_cache)
        logits = self.mlm_logits(x, condition=condition)[:, 0]
        return keras.Model(
            [token_ids, segment_ids, position_ids, cache, key_mask, write_mask] + extra,
            [logits, ops.stack(caches, axis=1)], name=f"{self.name}_step")

    # -------------------------------------------------------------- checkpoints
    def load_checkpoint(self, path, allow_missing_heads=False, ignore_unused_weights=False):
        """Load a Google TF checkpoint or Hugging Face safetensors by variable name.

        Args:
            path: checkpoint prefix, ``.safetensors`` file, or a directory holding one.
            allow_missing_heads: let a pooler/MLM/NSP head that the checkpoint lacks
                keep its initial values (listed in a warning) instead of failing.
            ignore_unused_weights: load a checkpoint that holds more than the model
                uses in its own scope (e.g. more layers than ``num_hidden_layers``),
                with a warning listing them, instead of failing. Heads the model
                did not ask for are never an error.
        """
        checkpoints.load_weights(self, path, allow_missing_heads=allow_missing_heads,
                                 ignore_unused_weights=ignore_unused_weights)

    def variable_map(self):
        """``[(google_name, keras_variable, kind)]`` for every mapped weight."""
        return checkpoints.variable_map(self)


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


MODELS = {"bert": BERT}


def build_transformer_model(config_path=None, checkpoint_path=None, model="bert",
                            application="encoder", with_pool=False, with_nsp=False,
                            with_mlm=False, keep_tokens=None, return_keras_model=True,
                            allow_missing_heads=False, ignore_unused_weights=False,
                            layer_norm_cond=None,
                            layer_norm_cond_hidden_size=None, layer_norm_cond_hidden_act=None,
                            additional_input_layers=None, dtype=None, **overrides):
    """Build a BERT-family Keras model, optionally loading pretrained weights.

    Args:
        config_path: ``bert_config.json`` / ``config.json``, or a folder holding one
            (and the weights). May be omitted when ``checkpoint_path`` is a folder.
        checkpoint_path: a Google TF checkpoint prefix (``.../bert_model.ckpt``), a
            Hugging Face ``model.safetensors``, or a folder holding either.
        model: the family; ``"bert"``.
        application: ``"encoder"``, ``"lm"`` or ``"unilm"`` (the last two turn the
            MLM head on and return its output alone).
        with_pool, with_nsp, with_mlm: heads to add (see :class:`BERT`).
        keep_tokens: vocabulary rows to keep (from ``load_vocab(simplified=True)``).
        return_keras_model: ``False`` returns the :class:`BERT` builder, which also
            gives the incremental-decoding graphs.
        allow_missing_heads: start heads the checkpoint lacks from their initialiser
            (with a warning naming them) instead of raising.
        ignore_unused_weights: load a checkpoint holding variables in the model's
            own scope that the model does not use (e.g. a 3-layer checkpoint with
            ``num_hidden_layers=2``), with a warning listing them, instead of
            raising. Heads the model did not ask for (``cls/*``, the pooler) are
            never an error.
        layer_norm_cond, layer_norm_cond_hidden_size, layer_norm_cond_hidden_act,
            additional_input_layers: Conditional Layer Normalization (see :class:`BERT`).
        dtype: a Keras dtype policy name such as ``"mixed_bfloat16"``.
        **overrides: config fields to override (e.g. ``hidden_dropout_prob=0``), or
            the whole config when ``config_path`` is None.

    Returns:
        A ``keras.Model`` whose inputs are ``[token_ids, segment_ids, *additional]``
        and whose outputs are ``[sequence_output, pooled?, nsp_probs?, mlm?]`` (a
        single tensor when there is one), or the builder.

    Example:
        >>> model = build_transformer_model(  # doctest: +SKIP
        ...     "chinese_L-12_H-768_A-12/bert_config.json",
        ...     "chinese_L-12_H-768_A-12/bert_model.ckpt", with_mlm=True)
    """
    if model not in MODELS:
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
    builder = MODELS[model](
        config, application=application, with_pool=with_pool, with_nsp=with_nsp,
        with_mlm=with_mlm, keep_tokens=keep_tokens, layer_norm_cond=layer_norm_cond,
        layer_norm_cond_hidden_size=layer_norm_cond_hidden_size,
        layer_norm_cond_hidden_act=layer_norm_cond_hidden_act,
        additional_input_layers=additional_input_layers, dtype=dtype)
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
