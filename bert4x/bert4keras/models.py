"""bert4keras's ``build_transformer_model`` on bert4x's model builders.

The graph is bert4x's (same layers, names and numbers); what changes is the
interface: bert4keras's arguments and outputs, and Keras masks. The padding mask
(token id 0) is attached after the embeddings and follows the sequence through
every Transformer layer and the MLM head, so ``Loss`` layers, the CRF and
GlobalPointer receive it as they did in bert4keras. Pooled and NSP outputs
carry no mask.
"""

import functools

import keras
import numpy as np

from bert4x import models as _native
from bert4x.bert4keras.backend import gelu_activation_name, remember_model
from bert4x.bert4keras.layers import SequenceMask
from bert4x.checkpoints import vocabulary_axis
from bert4x.configs import read_config_file

__all__ = ["build_transformer_model"]

# bert4keras's names of config fields -> bert4x's.
_RENAMED = {"dropout_rate": "hidden_dropout_prob",
            "attention_dropout_rate": "attention_probs_dropout_prob",
            "max_position": "max_position_embeddings",
            "segment_vocab_size": "type_vocab_size"}
# bert4keras arguments bert4x does not offer (each raises, naming itself).
_UNSUPPORTED = ("residual_attention_scores", "autoresize_weights",
                "hierarchical_position", "shared_segment_embeddings", "attention_caches",
                "layers", "embedding_size_override")


class _Bert4kerasGraph:
    """bert4keras's graph on a family's builder (put before the family in the bases).

    It customises the family through the core's hooks only: float32 inputs named
    as bert4keras names them (``_inputs``, ``_model_inputs``), Keras masks after
    the embeddings and the MLM head (``embed``, ``mlm_logits``), custom positions
    (``position_ids``) and the heads' activations (``pooler_activation``,
    ``mlm_output_activation``). Its options are arguments, kept on the
    instance before the family builds its graph.

    Args:
        pool_activation, mlm_activation: the activation of the pooler's Dense and
            of the MLM output (None: the family's).
        name_prefix: put before the name of every layer and input.
        custom_position_ids: an ``Input-Position`` input indexes the position table.
        sequence_length: a fixed length of the inputs (None: any).
        **kwargs: the family's arguments.
    """

    def __init__(self, config, pool_activation=None, mlm_activation=None, name_prefix="",
                 custom_position_ids=False, sequence_length=None, **kwargs):
        self._pool_activation = pool_activation
        self._mlm_activation = mlm_activation
        self._name_prefix = name_prefix
        self._custom_position_ids = bool(custom_position_ids)
        self._sequence_length = sequence_length
        super().__init__(config, **kwargs)

    def _create_layers(self):
        super()._create_layers()
        self._sequence_mask = SequenceMask(from_ids=True, name="Embedding-Mask")
        # bert4x's layers pass masks on (in a reloaded model too); the tied
        # output layer drops the mask quietly and MLM-Mask restores it.
        self._mlm_mask = SequenceMask(name="MLM-Mask")
        if self._name_prefix:
            _prefix_layer_names(self, self._name_prefix)

    def pooler_activation(self):
        if self._pool_activation is None:
            return super().pooler_activation()
        return keras.activations.get(self._pool_activation)

    def mlm_output_activation(self):
        if self._mlm_activation is None:
            return super().mlm_output_activation()
        return keras.activations.get(self._mlm_activation)

    def _inputs(self, length=None, prefix="Input"):
        if prefix != "Input":
            return super()._inputs(length, prefix)
        # Keras 2's Input default, float32, as bert4keras scripts expect (they
        # multiply losses by segment ids); the embedding layers cast to int.
        name = self._name_prefix + prefix
        return (keras.Input((length,), name=f"{name}-Token"),
                keras.Input((length,), name=f"{name}-Segment"))

    def _model_inputs(self):
        token_ids, segment_ids = self._inputs(self._sequence_length)
        inputs = [token_ids, segment_ids]
        if self.config.type_vocab_size == 0 or not self.takes_segment_ids():
            # bert4keras's segment_vocab_size=0 (and its GPT-2s): token ids only.
            inputs, segment_ids = [token_ids], keras.ops.zeros_like(token_ids)
        position_ids = None
        if self._custom_position_ids:
            position_ids = keras.Input((self._sequence_length,),
                                       name=f"{self._name_prefix}Input-Position")
            inputs.append(position_ids)
        return inputs, token_ids, segment_ids, position_ids

    def position_ids(self, token_ids, positions=None):
        if self._custom_position_ids and positions is not None:
            # bert4keras's custom positions index the position table as given.
            return keras.ops.cast(positions, "int32")
        return super().position_ids(token_ids, positions)

    def embed(self, token_ids, segment_ids, *args, **kwargs):
        x = super().embed(token_ids, segment_ids, *args, **kwargs)
        return self._sequence_mask([x, token_ids])

    def mlm_logits(self, x, condition=None):
        return self._mlm_mask([super().mlm_logits(x, condition=condition), x])

    @property
    def initializer(self):
        """bert4keras's ``transformer.initializer``: truncated normal, stddev 0.02."""
        return keras.initializers.TruncatedNormal(stddev=0.02)

    @property
    def layers(self):
        """bert4keras's ``transformer.layers``: ``{name: layer}`` of the model."""
        return {layer.name: layer for layer in self.model.layers}


# One bert4keras builder per family, made once: bert4keras's graph before the family's.
_BUILDERS = {model: type(f"Bert4keras{family.__name__}", (_Bert4kerasGraph, family), {})
             for model, family in _native.MODELS.items()}


def _prefix_layer_names(builder, prefix):
    """Put ``prefix`` before the name of every layer the builder made."""
    seen = set()

    def visit(value):
        if isinstance(value, keras.Model):
            return  # a user's condition model keeps its names
        if isinstance(value, keras.layers.Layer) and id(value) not in seen:
            seen.add(id(value))
            value.name = prefix + value.name
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    for value in vars(builder).values():
        visit(value)


def _config(config_path, overrides, family):
    fields = {_RENAMED.get(key, key): value for key, value in overrides.items()}
    if not family.segment_embeddings:
        fields["type_vocab_size"] = 0  # bert4keras's GPT-2s never read a segment table
    values = read_config_file(config_path) if config_path is not None else {}
    if "hidden_act" not in fields and "hidden_act" in values:
        fields["hidden_act"] = values["hidden_act"]
    if "hidden_act" in fields:
        fields["hidden_act"] = _bert4keras_gelu(fields["hidden_act"])
    for field, value in family.bert4keras_config.items():
        if field not in fields and values.get(field) is None:
            fields[field] = value
    if config_path is None:
        return family.config_class(**fields)
    return family.config_class.from_dict(values, source=config_path).replace(**fields)


def _bert4keras_gelu(hidden_act):
    """``hidden_act`` with bert4keras's ``gelu`` (see ``set_gelu``) in bert4x's names;
    in a list (T5's gated feed-forward) by its explicit name, since a T5 config's
    own ``gelu`` is the tanh form."""
    if hidden_act == "gelu":
        return gelu_activation_name()
    if isinstance(hidden_act, list):
        explicit = "gelu_erf" if gelu_activation_name() == "gelu" else "gelu_tanh"
        return [explicit if name == "gelu" else name for name in hidden_act]
    return hidden_act


def _head_activation(value):
    """``(flag, activation)`` for bert4x from a bert4keras head argument."""
    if value is True or value is False or value is None:
        return bool(value), None
    return True, value


def build_transformer_model(config_path=None, checkpoint_path=None, model="bert",
                            application="encoder", return_keras_model=True,
                            with_pool=False, with_nsp=False, with_mlm=False,
                            keep_tokens=None, ignore_invalid_weights=False,
                            layer_norm_cond=None, layer_norm_cond_hidden_size=None,
                            layer_norm_cond_hidden_act=None, additional_input_layers=None,
                            custom_position_ids=False, sequence_length=None, prefix=None,
                            compound_tokens=None, final_activation=None, name=None,
                            **kwargs):
    """Build a model as bert4keras 0.11.5 does, on bert4x's builder.

    Outputs follow bert4keras: the sequence output when no head is asked;
    otherwise only the heads: the pooled output (``with_pool``, an activation
    name or True for tanh) or, with ``with_nsp``, the NSP probabilities in its
    place, then the MLM output (``with_mlm``: True for softmax or an
    activation name such as ``"linear"``). ``application="lm"``/``"unilm"``
    returns the MLM probabilities.

    ``segment_vocab_size=0`` builds a model without segment embeddings that
    takes token ids only (its checkpoint's segment table is left unused).

    The GPT families (``gpt``, ``gpt2``, ``gpt2_ml``) are language models whatever
    ``application`` says (``"encoder"``, the default, builds their ``"lm"``; ``gpt``
    also builds ``"unilm"``) and return the LM probabilities, or with
    ``final_activation`` (bert4keras's GPT argument, e.g. ``"linear"``) that
    activation of the logits. ``gpt2`` and ``gpt2_ml`` take token ids only.

    The token and segment inputs are float32 (Keras 2's default, which
    bert4keras scripts rely on, e.g. ``loss * segment_ids``); the embedding
    layers cast them to int.

    Args:
        config_path: the ``bert_config.json``.
        checkpoint_path: the checkpoint prefix (or Hugging Face weights).
        model: a bert4x family name (``"bert"``, and the families bert4x has).
        application: ``"encoder"``, ``"lm"`` or ``"unilm"``.
        return_keras_model: False returns the bert4x builder.
        keep_tokens: vocabulary rows to keep.
        compound_tokens: new vocabulary rows after the kept ones, each the
            average of the (kept) rows it lists: a list of ids, or
            ``(ids, weights)`` for a weighted average.
        ignore_invalid_weights: let heads missing from the checkpoint keep their
            initial values (bert4x lists them in a warning; the encoder's
            weights must all be there).
        layer_norm_cond, layer_norm_cond_hidden_size, layer_norm_cond_hidden_act,
            additional_input_layers: Conditional Layer Normalization; the
            additional inputs may be one tensor or a list.
        custom_position_ids: add an ``Input-Position`` input (after the
            segment input) whose values index the position table.
        sequence_length: a fixed length for the inputs (None: variable).
        prefix: put before the name of every layer and input, so that two
            models can live in one graph.
        final_activation: the GPT families' output activation (default softmax).
        name: the name of the Keras model.
        **kwargs: config fields, with bert4keras's names (``dropout_rate``,
            ``max_position``, ``segment_vocab_size``, ``hidden_act``, ...).

    T5 and mT5 (``model="t5"``, ``"t5.1.0"``, ``"t5.1.1"``, ``"mt5.1.1"``, and
    their ``*_encoder`` / ``*_decoder``) are built as bert4keras builds them:
    with ``return_keras_model=False`` the builder has ``encoder`` (encoder ids
    to its output), ``decoder`` (``[that output, decoder ids]`` to next-token
    probabilities) and ``model`` (``[encoder ids, decoder ids]`` to the same),
    and, as in bert4keras, the decoder's position bias in cross-attention
    (``cross_position_bias``) and its output scaled by ``hidden_size ** -0.5``
    for T5.1.1 too (``scale_decoder_outputs``), unless a keyword says
    otherwise; bert4keras's ``gelu`` is the exact one unless ``set_gelu("tanh")``.

    Example:
        >>> model = build_transformer_model(config_path, checkpoint_path,  # doctest: +SKIP
        ...                                 application="unilm", keep_tokens=keep_tokens)
    """
    for option in _UNSUPPORTED:
        if kwargs.get(option):
            raise NotImplementedError(f"{option}= is not supported by bert4x.bert4keras")
    if isinstance(model, str):
        model = model.lower()
    if model not in _native.MODELS:
        raise ValueError(f"unknown model {model!r}; bert4x builds {sorted(_native.MODELS)}")
    config_path, checkpoint_path = _native.resolve_paths(config_path, checkpoint_path)
    family = _native.MODELS[model]
    config = _config(config_path, kwargs, family)
    if family.encoder_decoder:
        builder = _encoder_decoder(
            family, config, checkpoint_path, application=application,
            keep_tokens=keep_tokens, compound_tokens=compound_tokens, name=name,
            allow_missing_heads=ignore_invalid_weights, refused=dict(
                with_pool=with_pool, with_nsp=with_nsp, with_mlm=with_mlm,
                layer_norm_cond=layer_norm_cond, additional_input_layers=additional_input_layers,
                custom_position_ids=custom_position_ids, sequence_length=sequence_length,
                prefix=prefix))
        return builder.model if return_keras_model else builder
    with_nsp, nsp_activation = _head_activation(with_nsp)
    with_pool, pool_activation = _head_activation(with_pool)
    with_mlm, mlm_activation = _head_activation(with_mlm)
    if "encoder" not in family.applications:
        # bert4keras's GPTs are causal language models in every application.
        application = family.applications[0] if application == "encoder" else application
        if final_activation is not None:
            mlm_activation = final_activation
    elif final_activation is not None:
        raise ValueError(f"final_activation is an argument of the GPT families, not of "
                         f"{model!r}")
    if nsp_activation is not None:
        raise ValueError(f"with_nsp must be True or False, got {nsp_activation!r}")
    if custom_position_ids and not family.absolute_positions:
        raise ValueError(f"custom_position_ids=True needs a learned position table; "
                         f"{model!r} encodes positions in its attention")
    kept = None
    if compound_tokens:
        # Placeholder rows for the compounds, averaged once the checkpoint is in.
        kept = list(range(config.vocab_size)) if keep_tokens is None else list(keep_tokens)
        keep_tokens = kept + [kept[0]] * len(compound_tokens)
    builder = _BUILDERS[model](
        config, pool_activation=pool_activation, mlm_activation=mlm_activation,
        name_prefix=prefix or "", custom_position_ids=custom_position_ids,
        sequence_length=sequence_length, application=application,
        with_pool=with_pool or with_nsp,
        with_nsp=with_nsp, with_mlm=with_mlm, keep_tokens=keep_tokens,
        layer_norm_cond=layer_norm_cond,
        layer_norm_cond_hidden_size=layer_norm_cond_hidden_size,
        layer_norm_cond_hidden_act=layer_norm_cond_hidden_act,
        additional_input_layers=additional_input_layers, name=name)
    if checkpoint_path is not None:
        builder.load_checkpoint(checkpoint_path, allow_missing_heads=ignore_invalid_weights)
        if compound_tokens:
            _average_compound_rows(builder, compound_tokens, len(kept))
    builder.model = _bert4keras_outputs(builder, bool(with_pool or with_nsp), with_nsp,
                                        bool(with_mlm))
    _finish(builder.model)
    return builder.model if return_keras_model else builder


def _finish(*models):
    """Remember the models (for ``K.learning_phase``-style helpers) and give their
    layers Keras 2's node accessors."""
    for model in models:
        if model is None:
            continue
        remember_model(model)
        for layer in model.layers:
            _add_node_accessors(layer)


def _encoder_decoder(family, config, checkpoint_path, application, keep_tokens,
                     compound_tokens, name, allow_missing_heads, refused):
    """bert4keras's T5: the builder with ``encoder``, ``decoder`` and ``model``."""
    if application != "encoder":
        raise ValueError(f"{family.family!r} model can not be used as {application!r} "
                         "application (bert4keras refuses it too)")
    given = sorted(option for option, value in refused.items() if value)
    if given:
        raise NotImplementedError(f"{given} are not offered for {family.family!r} by "
                                  "bert4x.bert4keras")
    kept = None
    if compound_tokens:
        kept = list(range(config.vocab_size)) if keep_tokens is None else list(keep_tokens)
        keep_tokens = kept + [kept[0]] * len(compound_tokens)
    builder = _keras2_encoder_decoder(family)(config, keep_tokens=keep_tokens, name=name)
    if checkpoint_path is not None:
        builder.load_checkpoint(checkpoint_path, allow_missing_heads=allow_missing_heads)
        if compound_tokens:
            _average_compound_rows(builder, compound_tokens, len(kept))
    _finish(builder.encoder, builder.decoder, builder.model)
    return builder


def _keras2_encoder_decoder(family):
    """An encoder-decoder's builder with bert4keras's interface: float32 inputs (Keras
    2's default) and the decoder's padding mask on its output, the first position
    (the start id 0) kept, so that a ``Loss`` layer reads it as ``mask[1]``."""

    class Keras2(family):
        def model_input(self, name, shape, dtype="int32"):
            return keras.Input(shape, name=name)

        def decoder_output(self, probabilities, decoder_ids):
            return self._decoder_mask([probabilities, decoder_ids])

        def _create_layers(self):
            super()._create_layers()
            self._decoder_mask = SequenceMask(from_ids=True, keep_first=True,
                                              name="Decoder-Output-Mask")

        @property
        def initializer(self):
            """bert4keras's ``transformer.initializer``: truncated normal, stddev 0.02."""
            return keras.initializers.TruncatedNormal(stddev=0.02)

        @property
        def layers(self):
            """bert4keras's ``transformer.layers``: ``{name: layer}`` of the models."""
            models = [self.encoder, self.decoder, self.model]
            return {layer.name: layer for model in models if model is not None
                    for layer in model.layers}

    Keras2.__name__ = Keras2.__qualname__ = f"Keras2{family.__name__}"
    return Keras2


def _average_compound_rows(builder, compound_tokens, first_row):
    """Set each compound token's rows (embedding, MLM bias) to its tokens' average."""
    for _, variable, kind in builder.variable_map():
        axis = vocabulary_axis(kind)
        if axis is None:
            continue
        value = np.moveaxis(keras.ops.convert_to_numpy(variable), axis, 0).copy()
        for row, item in enumerate(compound_tokens, start=first_row):
            ids, weights = (item, None) if isinstance(item, list) else item
            value[row] = np.average(value[list(ids)], axis=0, weights=weights)
        variable.assign(np.moveaxis(value, 0, axis))


def _add_node_accessors(layer):
    """Keras 2's ``layer.get_output_at(i)``/``get_input_at(i)`` on a Keras 3 layer.

    bert4keras scripts take a layer's output at its ``i``-th call this way
    (e.g. ALBERT's shared layers, once per Transformer layer); Keras 3 layers
    keep the calls as ``_inbound_nodes`` but have no such methods.
    """
    def tensors(kind, node_index):
        nodes = layer._inbound_nodes
        if not -len(nodes) <= node_index < len(nodes):
            raise ValueError(f"layer {layer.name!r} was called {len(nodes)} times; "
                             f"there is no node {node_index}")
        found = getattr(nodes[node_index], f"{kind}_tensors")
        return found[0] if len(found) == 1 else list(found)

    for kind in ("output", "input"):
        if not hasattr(layer, f"get_{kind}_at"):
            object.__setattr__(layer, f"get_{kind}_at",
                               functools.partial(tensors, kind))


def _bert4keras_outputs(builder, pooled, nsp, mlm):
    """The native model with bert4keras's choice of outputs (same graph, same layers)."""
    model = builder.model
    outputs = list(model.outputs)
    if builder.application != "encoder":
        return model
    rest = outputs[1:]  # after the sequence output
    chosen = []
    if pooled:
        # The native order is [sequence, pooled, nsp?, mlm?]; NSP replaces pooled.
        chosen.append(rest[1] if nsp else rest[0])
        rest = rest[2:] if nsp else rest[1:]
    if mlm:
        chosen.append(rest[0])
    if not chosen:
        return model
    return keras.Model(model.inputs, chosen[0] if len(chosen) == 1 else chosen,
                       name=model.name)
