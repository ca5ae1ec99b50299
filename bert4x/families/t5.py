"""T5 and mT5: Google's encoder-decoder Transformer, bert4keras's ``t5*`` and ``mt5.1.1``.

One builder makes the encoder, the decoder and the model joining them
(bert4keras's ``t5.encoder``, ``t5.decoder``, ``t5.model``), and the two graphs
of cached decoding. The math (see ``docs/model.md``, "T5 and mT5"):

* no biases anywhere, RMS norms (``x / sqrt(mean(x^2) + eps) * scale``), pre-norm
  blocks ``x + Dropout(sublayer(norm(x)))``, a final norm and dropout per stack;
* attention scores ``q k^T + position bias + mask``, without ``1/sqrt(d)``; the
  position bias is one learned scalar per head and bucket of ``key - query``
  position, one table per stack (in its first block, shared by every block),
  buckets bidirectional in the encoder and causal in the decoder;
* the decoder attends to itself (causally), then to the encoder's output;
* the feed-forward is ``act(x W_i) W_o`` (T5.1.0: ReLU) or gated,
  ``gelu(x W_i0) * (x W_i1) W_o`` (T5.1.1, mT5);
* the logits are ``x E^T`` with the token embedding ``E``, on ``x`` scaled by
  ``hidden_size ** -0.5`` (T5.1.0, tied), or ``x W_logits`` (T5.1.1, mT5, untied).

The decoder's token ids start with the start id (0, the padding id).
"""

import dataclasses
import re
import typing

import keras
from keras import ops

from bert4x.configs import BertConfig
from bert4x.layers import (AttentionBias, CachedAttention, Dropout, FeedForward,
                           MultiHeadAttention, PaddingBias, RelativePositionBias,
                           ReversibleEmbedding, RMSNormalization, get_activation)
from bert4x.transformer import Transformer

_MASK_PENALTY = -1e9

#: Hugging Face's ``feed_forward_proj`` activations in bert4x's names (Hugging
#: Face's ``gelu`` is the exact GELU; its ``gated-gelu`` is the tanh form).
_HF_ACTIVATIONS = {"gelu": "gelu_erf"}

#: Official names of the parts of a T5 block (under ``{stack}/block_{iii}/layer_{jjj}/``).
T5_BLOCK_NAMES = dict(self_attention="SelfAttention", cross_attention="EncDecAttention",
                      feed_forward="DenseReluDense")


@dataclasses.dataclass
class T5Config(BertConfig):
    """The config of a T5 or mT5: bert4keras's field names or Hugging Face's.

    bert4keras's files use BERT's names plus ``attention_head_size`` and write a
    gated feed-forward as ``hidden_act: ["gelu", "linear"]``; Hugging Face's use
    ``d_model``, ``d_kv``, ``d_ff``, ``num_layers``, ``num_heads``,
    ``dropout_rate``, ``layer_norm_epsilon`` and ``feed_forward_proj``
    (``"relu"``, ``"gated-gelu"``, ...). In a T5 config ``"gelu"`` is T5's GELU,
    the tanh form Google's checkpoints were trained with (``"gelu_erf"`` is the
    exact one; Hugging Face's ``"gelu"`` is read as that).

    Fields left None take the family's value when the model is built:
    ``hidden_act`` (T5.1.0: ``"relu"``; T5.1.1, mT5: ``["gelu", "linear"]``),
    ``tie_word_embeddings`` (T5.1.0: true), ``scale_decoder_outputs`` (as
    ``tie_word_embeddings``), ``num_decoder_layers`` (``num_hidden_layers``),
    ``attention_head_size`` (``hidden_size / num_attention_heads``) and
    ``attention_probs_dropout_prob`` (``hidden_dropout_prob``).

    Example:
        >>> config = T5Config(vocab_size=100, hidden_size=32, num_hidden_layers=2,
        ...                   num_attention_heads=3, attention_head_size=8,
        ...                   intermediate_size=48, hidden_act=["gelu", "linear"])
        >>> config.head_size, config.decoder_layers
        (8, 2)
    """

    aliases: typing.ClassVar[dict] = {
        "d_model": "hidden_size", "d_kv": "attention_head_size", "d_ff": "intermediate_size",
        "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
        "dropout_rate": "hidden_dropout_prob", "layer_norm_epsilon": "layer_norm_eps",
        "attention_dropout_rate": "attention_probs_dropout_prob"}
    # Derived from feed_forward_proj, or about the initialisation only.
    informational: typing.ClassVar[frozenset] = frozenset({
        "dense_act_fn", "is_gated_act", "initializer_factor", "is_encoder_decoder",
        "n_positions"})

    hidden_act: object = None
    attention_probs_dropout_prob: float = None
    layer_norm_eps: float = 1e-6
    #: Hugging Face's ``d_kv``: the size of a head (None: hidden_size / heads).
    attention_head_size: int = None
    num_decoder_layers: int = None
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    #: The logits use the token embedding (T5.1.0) or a kernel of their own.
    tie_word_embeddings: bool = None
    #: Scale the decoder's output by ``hidden_size ** -0.5`` before the logits
    #: (None: when tied, as Google's T5 and Hugging Face; bert4keras always does).
    scale_decoder_outputs: bool = None
    #: bert4keras's ``cross_position_bias``: the decoder's position bias (causal
    #: buckets of encoder position - decoder position) in cross-attention too.
    cross_position_bias: bool = False
    decoder_start_token_id: int = 0

    def __post_init__(self):
        if self.attention_probs_dropout_prob is None:
            self.attention_probs_dropout_prob = self.hidden_dropout_prob
        super().__post_init__()
        for name in ("attention_head_size", "num_decoder_layers"):
            value = getattr(self, name)
            if value is not None and (not _is_count(value) or value < 1):
                raise ValueError(f"config field {name} must be a positive integer, got "
                                 f"{value!r}")
        if not _is_count(self.relative_attention_num_buckets) or \
                self.relative_attention_num_buckets < 4:
            raise ValueError(f"config field relative_attention_num_buckets must be an "
                             f"integer >= 4, got {self.relative_attention_num_buckets!r}")
        if not _is_count(self.relative_attention_max_distance) or \
                self.relative_attention_max_distance < 1:
            raise ValueError(f"config field relative_attention_max_distance must be a "
                             f"positive integer, got {self.relative_attention_max_distance!r}")
        for name in ("tie_word_embeddings", "scale_decoder_outputs", "cross_position_bias"):
            if not any(getattr(self, name) is value for value in (None, True, False)):
                raise ValueError(f"config field {name} must be true or false, got "
                                 f"{getattr(self, name)!r}")
        start = self.decoder_start_token_id
        if not _is_count(start) or not 0 <= start < self.vocab_size:
            raise ValueError(f"config field decoder_start_token_id must be an id below "
                             f"vocab_size {self.vocab_size}, got {start!r}")

    def _check_head_size(self):
        if self.attention_head_size is None:
            super()._check_head_size()

    def _check_activation(self):
        if self.hidden_act is None:
            return
        names = self.hidden_act if isinstance(self.hidden_act, list) else [self.hidden_act]
        if not names or not all(isinstance(name, str) for name in names):
            raise ValueError(f"config field hidden_act must be an activation name such as "
                             f"'relu', or a list of them for a gated feed-forward such as "
                             f"['gelu', 'linear'], got {self.hidden_act!r}")
        for name in names:
            try:
                get_activation(name)
            except ValueError as error:
                raise ValueError(f"config field hidden_act: {error}") from None

    @property
    def head_size(self):
        return self.attention_head_size or self.hidden_size // self.num_attention_heads

    @property
    def decoder_layers(self):
        """Blocks of the decoder (``num_decoder_layers``, else ``num_hidden_layers``)."""
        return self.num_decoder_layers or self.num_hidden_layers

    @classmethod
    def from_dict(cls, values, source="config"):
        """Read bert4keras's or Hugging Face's fields (see the class docstring).

        Hugging Face's ``feed_forward_proj`` becomes ``hidden_act``. transformers 5
        writes ``tie_word_embeddings: true`` for every T5 and mT5 (it ties the
        output to the embedding only when the weights hold none of their own):
        its ``scale_decoder_outputs`` says whether the model is T5.1.0 (scaled,
        tied), and an mT5 is never tied nor scaled.
        """
        values = dict(values)
        # A Hugging Face file (bert4x's exports name their family and say what they mean).
        if values.get("model_type") in ("t5", "mt5") and "family" not in values:
            default = "gated-gelu" if values["model_type"] == "mt5" else "relu"  # theirs
            values["hidden_act"] = _projection_activation(
                values.pop("feed_forward_proj", default), source)
            if values["model_type"] == "mt5":
                values.update(tie_word_embeddings=False, scale_decoder_outputs=False)
            elif "scale_decoder_outputs" in values:
                values["tie_word_embeddings"] = values["scale_decoder_outputs"]
        elif "feed_forward_proj" in values:
            values["hidden_act"] = _projection_activation(values.pop("feed_forward_proj"),
                                                          source)
        return super().from_dict(values, source=source)


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _projection_activation(projection, source):
    """bert4x's ``hidden_act`` for a Hugging Face ``feed_forward_proj``."""
    if not isinstance(projection, str):
        raise ValueError(f"{source}: feed_forward_proj must be a name such as 'relu' or "
                         f"'gated-gelu', got {projection!r}")
    parts = projection.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise ValueError(f"{source}: feed_forward_proj {projection!r} is not 'ACT' or "
                         "'gated-ACT'")
    if parts == ["gated", "gelu"]:
        return ["gelu_new", "linear"]  # Hugging Face's gated-gelu is the tanh form
    activation = _HF_ACTIVATIONS.get(parts[-1], parts[-1])
    return [activation, "linear"] if len(parts) == 2 else activation


def _t5_activation(name):
    """T5's reading of an activation name: its ``gelu`` is the tanh form."""
    return "gelu_new" if name == "gelu" else name


class T5(Transformer):
    """T5 and mT5, encoder-decoder (bert4keras ``model="t5"``, Hugging Face ``model_type``
    ``"t5"``): the architecture its config says, T5.1.0's when it says nothing.

    ``builder.encoder`` maps ``Encoder-Input-Token`` ``[batch, S]`` to the
    encoder's output ``[batch, S, hidden]`` (zero at the padding);
    ``builder.decoder`` maps ``[Input-Context, Decoder-Input-Token]`` (that
    output, whose all-zero rows are padding, and the decoder's ids, starting with
    the start id 0) to next-token probabilities ``[batch, T, vocab]``;
    ``builder.model`` maps ``[encoder ids, decoder ids]`` to the same
    probabilities. ``bert4x.decoding.Decoder`` decodes with the builder: the
    encoder runs once per source and each decoder layer's cross-attention keys
    and values are computed once.

    Args:
        config: a :class:`T5Config`.
        keep_tokens: vocabulary rows to keep (the padding/start id among them).
        dtype: a dtype policy for every layer.
        name: name of the Keras model (default: the family's name).
        application, with_pool, with_nsp, with_mlm, with_discriminator,
            mlm_positions, layer_norm_cond, layer_norm_cond_hidden_size,
            layer_norm_cond_hidden_act, additional_input_layers: BERT's options,
            which T5 refuses (at values other than their defaults).

    Example:
        >>> config = T5Config(vocab_size=100, hidden_size=32, num_hidden_layers=2,
        ...                   num_attention_heads=2, intermediate_size=48)
        >>> t5 = T5(config)
        >>> t5.model.predict([np.array([[5, 6, 7]]), np.array([[0, 8]])]).shape
        (1, 2, 100)
    """

    family = "t5"
    model_types = ("t5", "mt5")
    config_class = T5Config
    heads = ()
    absolute_positions = False
    #: No BERT-style name layout (``bert/embeddings/...``): see :meth:`variable_map`.
    prefix = None
    block_names = T5_BLOCK_NAMES
    #: None of the core's block norms: T5's pre-norm sublayers are its own (_sublayer).
    block_norms = ()
    #: What the builder's ``model`` is: "model" (encoder and decoder), "encoder"
    #: or "decoder" (bert4keras's ``*_encoder`` and ``*_decoder``).
    part = "model"
    #: The config's values when it leaves them out.
    default_hidden_act = "relu"
    default_tied = True
    #: Official name of the norms' scope: T5's ``layer_norm`` (``final_layer_norm``
    #: for a stack's last), or mT5's ``rms_norm`` (for both).
    norm_name = "layer_norm"
    encoder_decoder = True
    #: What bert4keras 0.11.5 computes and Google's T5 does not: the decoder's
    #: position bias in cross-attention too, and the decoder's output always scaled.
    #: bert4x.bert4keras builds these (checkpoints trained in bert4keras, such as
    #: T5-PEGASUS, expect them); a config or keyword may say otherwise.
    bert4keras_config = dict(cross_position_bias=True, scale_decoder_outputs=True)
    #: The stacks' copies of the shared embedding in Hugging Face files.
    hf_copies = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")

    def __init__(self, config, application="encoder", with_pool=False, with_nsp=False,
                 with_mlm=False, with_discriminator=False, keep_tokens=None,
                 mlm_positions=False, layer_norm_cond=None, layer_norm_cond_hidden_size=None,
                 layer_norm_cond_hidden_act=None, additional_input_layers=None, dtype=None,
                 name=None):
        self._refuse_options(application=application, with_pool=with_pool,
                             with_nsp=with_nsp, with_mlm=with_mlm,
                             with_discriminator=with_discriminator, mlm_positions=mlm_positions,
                             layer_norm_cond=layer_norm_cond,
                             layer_norm_cond_hidden_size=layer_norm_cond_hidden_size,
                             layer_norm_cond_hidden_act=layer_norm_cond_hidden_act,
                             additional_input_layers=additional_input_layers)
        self.check_config(config)
        self.keep_tokens, config = self.kept_vocabulary(self._completed(config), keep_tokens)
        self.config = config
        self.application = "encoder"
        self.with_pool = self.with_nsp = self.with_mlm = self.with_discriminator = False
        self.mlm_positions = self.conditional = False
        self.additional_inputs, self.condition_model = [], None
        self.dtype = dtype
        self.name = name or self.family
        self._cache_models = None
        self._cached_attentions = {}
        self._create_layers()
        self.encoder, self.decoder, self.model = self._build_models()

    # ------------------------------------------------------ family declaration
    def _refuse_options(self, **options):
        defaults = dict(application="encoder", additional_input_layers=None)
        given = sorted(name for name, value in options.items()
                       if value not in (defaults.get(name), False, None))
        if given:
            raise ValueError(
                f"{self.family!r} is an encoder-decoder without BERT's heads, applications "
                f"and conditional norms: {given} cannot be set (its model takes [encoder "
                f"ids, decoder ids] and gives the decoder's next-token probabilities)")

    def _completed(self, config):
        """The config with the family's values for the fields it leaves None."""
        hidden_act = config.hidden_act
        if hidden_act is None:  # a copy: the config's list is its own
            hidden_act = list(self.default_hidden_act) if self.gated_by_default else \
                self.default_hidden_act
        tied = self.default_tied if config.tie_word_embeddings is None \
            else config.tie_word_embeddings
        scaled = tied if config.scale_decoder_outputs is None else config.scale_decoder_outputs
        return config.replace(hidden_act=hidden_act, tie_word_embeddings=tied,
                              scale_decoder_outputs=scaled)

    @classmethod
    def kept_vocabulary(cls, config, keep_tokens):
        """As :meth:`Transformer.kept_vocabulary`, the decoder's start id renumbered too."""
        if keep_tokens is None:
            return None, config
        kept, start = [int(token) for token in keep_tokens], config.decoder_start_token_id
        if start not in kept:
            raise ValueError(f"keep_tokens must keep the decoder's start id {start}")
        # Renumbered first, so that it stays an id of the trimmed vocabulary.
        config = config.replace(decoder_start_token_id=kept.index(start))
        return super().kept_vocabulary(config, kept)

    @property
    def generates(self):
        """Whether ``bert4x.decoding.Decoder`` decodes with it: the whole model does."""
        return self.part == "model"

    @property
    def gated_by_default(self):
        """Whether the version's feed-forward is gated when its config says nothing."""
        return isinstance(self.default_hidden_act, list)

    @property
    def tied(self):
        """Whether the logits use the token embedding (T5.1.0)."""
        return self.config.tie_word_embeddings

    @property
    def gated(self):
        """Whether the feed-forward is gated (T5.1.1, mT5)."""
        return isinstance(self.config.hidden_act, list)

    # ----------------------------------------------------------------- layers
    def _initializer(self):
        return keras.initializers.TruncatedNormal(stddev=self.config.initializer_range)

    def _create_layers(self):
        c, kw = self.config, dict(dtype=self.dtype)
        self.token_embedding = ReversibleEmbedding(
            c.vocab_size, c.hidden_size, embeddings_initializer=self._initializer(),
            name="Embedding-Token", **kw)
        self.encoder_layers = self.decoder_layers = None
        if self.part in ("model", "encoder"):
            self.encoder_layers = self._create_stack("Encoder", c.num_hidden_layers)
        if self.part in ("model", "decoder"):
            self.decoder_layers = self._create_stack("Decoder", c.decoder_layers)
            self._create_output_layers()

    def _create_stack(self, stack, blocks):
        c, kw = self.config, dict(dtype=self.dtype)
        decoder = stack == "Decoder"
        return dict(
            embedding_dropout=Dropout(c.hidden_dropout_prob, name=f"{stack}-Embedding-Dropout",
                                      **kw),
            position_bias=RelativePositionBias(
                c.num_attention_heads, c.relative_attention_num_buckets,
                c.relative_attention_max_distance, bidirectional=not decoder,
                embeddings_initializer=self._initializer(),
                name=f"{stack}-Embedding-Relative-Position", **kw),
            # The encoder masks its padding; the decoder is causal (its first id is the
            # padding id, and real ids never see the padding after them).
            attention_bias=AttentionBias("lm" if decoder else "encoder",
                                         pad_id=None if decoder else c.pad_token_id,
                                         name=f"{stack}-Attention-Bias"),
            blocks=[self._create_block(f"{stack}-Transformer-{index}-", decoder)
                    for index in range(blocks)],
            output_norm=RMSNormalization(c.layer_norm_eps, name=f"{stack}-Output-Norm", **kw),
            output_dropout=Dropout(c.hidden_dropout_prob, name=f"{stack}-Output-Dropout",
                                   **kw))

    def _create_block(self, prefix, decoder):
        parts = ["MultiHeadSelfAttention"] + (["MultiHeadCrossAttention"] if decoder else [])
        block = {part: self._sublayer(prefix + part, self._attention(prefix + part))
                 for part in parts}
        c = self.config
        activation = ([_t5_activation(name) for name in c.hidden_act] if self.gated
                      else _t5_activation(c.hidden_act))
        block["FeedForward"] = self._sublayer(prefix + "FeedForward", FeedForward(
            c.intermediate_size, activation, kernel_initializer=self._initializer(),
            use_bias=False, name=prefix + "FeedForward", dtype=self.dtype))
        return block

    def _attention(self, name):
        c = self.config
        return MultiHeadAttention(c.num_attention_heads, c.head_size,
                                  c.attention_probs_dropout_prob,
                                  kernel_initializer=self._initializer(), use_bias=False,
                                  attention_scale=False, name=name, dtype=self.dtype)

    def _sublayer(self, name, layer):
        """A pre-norm residual sublayer: ``x + Dropout(layer(norm(x)))``."""
        c, kw = self.config, dict(dtype=self.dtype)
        return dict(norm=RMSNormalization(c.layer_norm_eps, name=f"{name}-Norm", **kw),
                    layer=layer,
                    dropout=Dropout(c.hidden_dropout_prob, name=f"{name}-Dropout", **kw),
                    add=keras.layers.Add(name=f"{name}-Add", **kw))

    def _create_output_layers(self):
        c = self.config
        self.context_bias = PaddingBias(name="Decoder-Context-Mask")
        self.output_scale = None
        if c.scale_decoder_outputs:
            self.output_scale = keras.layers.Rescaling(
                c.hidden_size ** -0.5, name="Decoder-Output-Scale", dtype=self.dtype)
        self.lm_dense = None
        if not self.tied:
            self.lm_dense = keras.layers.Dense(
                c.vocab_size, use_bias=False, kernel_initializer=self._initializer(),
                name="Decoder-Output-LM", dtype=self.dtype)
        self.lm_activation = keras.layers.Activation(
            "softmax", name="Decoder-Output-LM-Activation", dtype="float32")

    # ------------------------------------------------------------------ graph
    def _embedded(self, stack, token_ids, training=None):
        return stack["embedding_dropout"](self.token_embedding(token_ids), training=training)

    @staticmethod
    def _residual(sublayer, x, run, training=None):
        """``x + Dropout(run(norm(x)))`` with the sublayer's layers; ``run`` gets the
        normalised input and returns the sublayer's output."""
        transformed = run(sublayer["norm"](x))
        transformed = sublayer["dropout"](transformed, training=training)
        return sublayer["add"]([x, transformed])

    def _feed_forward(self, block, x, training=None):
        return self._residual(block["FeedForward"], x, block["FeedForward"]["layer"],
                              training)

    def encoder_output(self, token_ids, training=None):
        """The encoder on ``token_ids`` ``[batch, S]``: ``[batch, S, hidden]``, zero at
        the padding (so that the decoder, given it alone, sees the padding)."""
        stack = self.encoder_layers
        x = self._embedded(stack, token_ids, training)
        bias = stack["attention_bias"](token_ids) + stack["position_bias"](x, x)
        for block in stack["blocks"]:
            attention = block["MultiHeadSelfAttention"]["layer"]
            x = self._residual(block["MultiHeadSelfAttention"], x, lambda h: attention(
                h, attention_bias=bias, training=training), training)
            x = self._feed_forward(block, x, training)
        x = stack["output_dropout"](stack["output_norm"](x), training=training)
        real = ops.not_equal(token_ids, self.config.pad_token_id)[..., None]
        return ops.where(real, x, ops.zeros_like(x))

    def decoder_logits(self, context, token_ids, training=None):
        """The decoder on ``context`` ``[batch, S, hidden]`` (all-zero rows are padding)
        and its ids ``[batch, T]``: next-token logits ``[batch, T, vocab]``."""
        stack = self.decoder_layers
        x = self._embedded(stack, token_ids, training)
        position_bias = stack["position_bias"](x, x)
        self_bias = stack["attention_bias"](token_ids) + position_bias
        cross_bias = self.context_bias(context)
        if self.config.cross_position_bias:
            cross_bias = cross_bias + stack["position_bias"](x, context)
        for block in stack["blocks"]:
            attention = block["MultiHeadSelfAttention"]["layer"]
            x = self._residual(block["MultiHeadSelfAttention"], x, lambda h: attention(
                h, attention_bias=self_bias, training=training), training)
            cross = block["MultiHeadCrossAttention"]["layer"]
            x = self._residual(block["MultiHeadCrossAttention"], x, lambda h: cross(
                h, attention_bias=cross_bias, context=context, training=training), training)
            x = self._feed_forward(block, x, training)
        return self.lm_logits(x, training)

    def lm_logits(self, x, training=None):
        """The decoder's last norm, dropout, scale and output projection: float32 logits."""
        stack = self.decoder_layers
        x = stack["output_dropout"](stack["output_norm"](x), training=training)
        if self.output_scale is not None:
            x = self.output_scale(x)
        logits = self.token_embedding(x, reverse=True) if self.tied else self.lm_dense(x)
        return ops.cast(logits, "float32")

    def model_input(self, name, shape, dtype="int32"):
        """The ``keras.Input`` of the models (a hook: bert4x.bert4keras makes them
        float32, as Keras 2's inputs were)."""
        return keras.Input(shape, dtype=dtype, name=name)

    def decoder_output(self, probabilities, decoder_ids):
        """The models' output from the decoder's probabilities (a hook:
        bert4x.bert4keras gives it the Keras mask of the decoder's ids)."""
        return probabilities

    def _build_models(self):
        encoder_ids = self.model_input("Encoder-Input-Token", (None,))
        decoder_ids = self.model_input("Decoder-Input-Token", (None,))
        context = self.model_input("Input-Context", (None, self.config.hidden_size),
                                   "float32")
        encoder = decoder = model = None
        if self.encoder_layers is not None:
            encoded = self.encoder_output(encoder_ids)
            encoder = keras.Model(encoder_ids, encoded, name=self._model_name("encoder"))
        # The joined model first: its calls are the layers' first, which
        # bert4x.models.intermediate_model and attention_model read.
        if encoder is not None and self.decoder_layers is not None:
            probabilities = self.lm_activation(self.decoder_logits(encoded, decoder_ids))
            model = keras.Model([encoder_ids, decoder_ids],
                                self.decoder_output(probabilities, decoder_ids), name=self.name)
        if self.decoder_layers is not None:
            probabilities = self.lm_activation(self.decoder_logits(context, decoder_ids))
            decoder = keras.Model([context, decoder_ids],
                                  self.decoder_output(probabilities, decoder_ids),
                                  name=self._model_name("decoder"))
        return encoder, decoder, model or encoder or decoder

    def _model_name(self, part):
        return self.name if self.part == part else f"{self.name}_{part.capitalize()}"

    # ------------------------------------------------------ incremental decoding
    def cache_models(self):
        """Return ``(prefill_model, step_model)`` for cached decoding.

        ``prefill_model({"token_ids"})`` runs the encoder on the padded sources
        ``[sources, S]`` once, then the decoder on its start id, and returns the
        next-token ``logits`` ``[sources, vocab]``, the ``cache`` of the start
        id's self-attention keys and values ``[sources, layers, 2, heads, 1,
        head_size]`` and the ``cross_cache``, every decoder layer's
        cross-attention keys and values of the encoder's output ``[sources,
        layers, 2, heads, S, head_size]``.

        ``step_model({"token_ids", "source_cache", "source_key_mask", "cache",
        "key_mask", "write_mask", "cross_cache"})`` runs one token per row
        ``[batch, 1]``, the rows grouped by source (``batch // sources``
        consecutive rows each, e.g. a source's beams): its self-attention sees
        the start id (``source_cache``, the prefill's ``cache``) and the rows'
        generated tokens (``cache`` ``[batch, layers, 2, heads, M, head_size]``,
        ``key_mask`` ``[batch, M]`` marking the valid slots including the one
        ``write_mask`` marks, written now); its cross-attention sees
        ``cross_cache``, whose real tokens ``source_key_mask`` ``[sources, S]``
        marks. Generated slot ``j`` holds position ``j + 1`` (the start id is at
        0), and every row is at the same step, as ``bert4x.decoding.Decoder``
        feeds them. Returns the ``logits`` ``[batch, vocab]`` and the rows'
        updated ``cache``.

        Example:
            >>> config = T5Config(vocab_size=100, hidden_size=32, num_hidden_layers=2,
            ...                   num_attention_heads=2, intermediate_size=48)
            >>> prefill_model, step_model = T5(config).cache_models()
            >>> outputs = prefill_model({"token_ids": np.array([[5, 6, 7]])})
            >>> tuple(outputs["cross_cache"].shape)  # [sources, layers, 2, heads, S, d]
            (1, 2, 2, 2, 3, 16)
        """
        if not self.generates:
            raise ValueError(f"cached decoding needs the whole encoder-decoder; this "
                             f"{self.family!r} builder has its {self.part} only")
        if self._cache_models is None:
            self._cache_models = (self._build_prefill_model(), self._build_step_model())
        return self._cache_models

    def _cached(self, attention):
        """The one :class:`CachedAttention` running ``attention``'s weights."""
        if attention.name not in self._cached_attentions:
            self._cached_attentions[attention.name] = CachedAttention(attention)
        return self._cached_attentions[attention.name]

    def _cached_block(self, block, x, run_self, run_cross):
        """A decoder block in a decoding graph; ``run_*`` call the cached attention of
        the normalised input. Returns ``(x, self-attention cache, cross cache)``."""
        found = {}

        def keep(part, run):
            def call(h):
                outputs = run(self._cached(block[part]["layer"]), h)
                found[part] = outputs["cache"]
                return outputs["output"]
            return call

        x = self._residual(block["MultiHeadSelfAttention"], x,
                           keep("MultiHeadSelfAttention", run_self))
        x = self._residual(block["MultiHeadCrossAttention"], x,
                           keep("MultiHeadCrossAttention", run_cross))
        x = self._feed_forward(block, x)
        return x, found["MultiHeadSelfAttention"], found["MultiHeadCrossAttention"]

    def _build_prefill_model(self):
        token_ids = keras.Input((None,), dtype="int32", name="token_ids")
        stack = self.decoder_layers
        context = self.encoder_output(token_ids)
        start = ops.zeros_like(token_ids[:, :1]) + self.config.decoder_start_token_id
        x = self._embedded(stack, start)
        self_bias = stack["position_bias"](x, x)
        cross_bias = self.context_bias(context)
        if self.config.cross_position_bias:
            cross_bias = cross_bias + stack["position_bias"](x, context)
        caches, cross_caches = [], []
        for block in stack["blocks"]:
            x, cache, cross_cache = self._cached_block(
                block, x, lambda cached, h: cached(h, attention_bias=self_bias),
                lambda cached, h: cached(h, attention_bias=cross_bias, context=context))
            caches.append(cache)
            cross_caches.append(cross_cache)
        return keras.Model({"token_ids": token_ids},
                           {"logits": self.lm_logits(x)[:, 0],
                            "cache": ops.stack(caches, axis=1),
                            "cross_cache": ops.stack(cross_caches, axis=1)},
                           name=f"{self.name}_prefill")

    def _build_step_model(self):
        c = self.config
        cache = ((c.decoder_layers, 2, c.num_attention_heads, None, c.head_size),
                 self.token_embedding.compute_dtype)  # the layers' (mixed precision: bf16)
        inputs = {name: keras.Input(shape, dtype=dtype, name=name) for name, (shape, dtype) in
                  dict(token_ids=((1,), "int32"), source_cache=cache,
                       source_key_mask=((None,), "float32"), cache=cache,
                       key_mask=((None,), "float32"), write_mask=((None,), "float32"),
                       cross_cache=cache).items()}
        stack = self.decoder_layers
        x = self._embedded(stack, inputs["token_ids"])
        own_bias, start_bias, cross_bias = self._step_biases(
            stack["position_bias"], inputs["key_mask"], inputs["source_key_mask"])
        caches = []
        for layer, block in enumerate(stack["blocks"]):
            x, cache, _ = self._cached_block(
                block, x,
                lambda cached, h: cached(
                    h, attention_bias=own_bias, cache=inputs["cache"][:, layer],
                    write_mask=inputs["write_mask"],
                    source_cache=inputs["source_cache"][:, layer], source_bias=start_bias),
                lambda cached, h: cached(h, source_cache=inputs["cross_cache"][:, layer],
                                         source_bias=cross_bias))
            caches.append(cache)
        return keras.Model(inputs, {"logits": self.lm_logits(x)[:, 0],
                                    "cache": ops.stack(caches, axis=1)},
                           name=f"{self.name}_step")

    def _step_biases(self, position_bias, key_mask, source_key_mask):
        """Attention biases of a decoding step: over the rows' generated slots
        ``[batch, heads, 1, M]``, over the start id ``[sources, heads, 1, 1]`` and over
        the encoder's output ``[sources, 1 or heads, 1, S]``."""
        # The new token's position is the number of valid slots (the start id is at 0);
        # generated slot j holds position j + 1.
        query = ops.cast(ops.sum(key_mask, axis=1, keepdims=True), "int32")
        slots = ops.cast(ops.cumsum(ops.ones_like(key_mask), axis=1), "int32")
        own = position_bias(query, slots) + _key_bias(key_mask)
        # Per source, at the step every row is at.
        source_query = ops.cast(ops.zeros_like(source_key_mask[:, :1]), "int32") + ops.max(query)
        start = position_bias(source_query, ops.zeros_like(source_query))
        cross = _key_bias(source_key_mask)
        if self.config.cross_position_bias:
            positions = ops.cast(ops.cumsum(ops.ones_like(source_key_mask), axis=1) - 1,
                                 "int32")
            cross = cross + position_bias(source_query, positions)
        return own, start, cross

    # -------------------------------------------------------------- checkpoints
    def variable_map(self):
        """``[(official_name, keras_variable, kind)]``: Mesh TensorFlow's names, as
        bert4keras's ``T5_Base.variable_mapping`` gives them."""
        pairs = [("shared/embedding", self.token_embedding.embeddings, "vocab")]
        if self.encoder_layers is not None:
            pairs += self._stack_variables("encoder", self.encoder_layers)
        if self.decoder_layers is not None:
            pairs += self._stack_variables("decoder", self.decoder_layers)
            if self.lm_dense is not None:
                pairs.append(("decoder/logits/kernel", self.lm_dense.kernel, "vocab_columns"))
        return pairs

    def _stack_variables(self, stack, layers):
        names, norm = self.block_names, self.norm_name
        parts = [("MultiHeadSelfAttention", names["self_attention"])]
        if stack == "decoder":
            parts.append(("MultiHeadCrossAttention", names["cross_attention"]))
        pairs = []
        for index, block in enumerate(layers["blocks"]):
            prefix = f"{stack}/block_{index:03d}/"
            for number, (part, name) in enumerate(parts):
                scope = f"{prefix}layer_{number:03d}/"
                attention = block[part]["layer"]
                pairs += [(f"{scope}{name}/{letter}", dense.kernel, "plain")
                          for letter, dense in zip("qkvo", (
                              attention.query_dense, attention.key_dense,
                              attention.value_dense, attention.output_dense))]
                if index == 0 and part == "MultiHeadSelfAttention":
                    pairs.append((f"{scope}{name}/relative_attention_bias",
                                  layers["position_bias"].embeddings, "plain"))
                pairs.append((f"{scope}{norm}/scale", block[part]["norm"].scale, "plain"))
            scope = f"{prefix}layer_{len(parts):03d}/"
            feed_forward = block["FeedForward"]["layer"]
            inner = (["wi_0", "wi_1"] if self.gated else ["wi"])
            pairs += [(f"{scope}{names['feed_forward']}/{w}/kernel", dense.kernel, "plain")
                      for w, dense in zip(inner, feed_forward.intermediate_denses)]
            pairs.append((f"{scope}{names['feed_forward']}/wo/kernel",
                          feed_forward.output_dense.kernel, "plain"))
            pairs.append((f"{scope}{norm}/scale", block["FeedForward"]["norm"].scale, "plain"))
        final = "final_layer_norm" if norm == "layer_norm" else norm
        return pairs + [(f"{stack}/{final}/scale", layers["output_norm"].scale, "plain")]

    def hugging_face_names(self, official_name):
        """Hugging Face's ``T5ForConditionalGeneration`` names (``MT5...`` has the same):
        ``shared.weight``, ``encoder.block.0.layer.0.SelfAttention.q.weight``,
        ..., ``lm_head.weight``; kernels and position tables are transposed."""
        if official_name == "shared/embedding":
            return ["shared.weight", "encoder.embed_tokens.weight",
                    "decoder.embed_tokens.weight"], False
        if official_name == "decoder/logits/kernel":
            # transformers 5 leaves lm_head.weight out when it equals the embedding.
            return ["lm_head.weight", "shared.weight"], True
        final = re.fullmatch(r"(encoder|decoder)/\w+/scale", official_name)
        if final:
            return [f"{final.group(1)}.final_layer_norm.weight"], False
        stack, block, layer, rest = re.fullmatch(
            r"(encoder|decoder)/block_(\d+)/layer_(\d+)/(.+)", official_name).groups()
        prefix = f"{stack}.block.{int(block)}.layer.{int(layer)}."
        if rest.endswith("/scale"):
            return [prefix + "layer_norm.weight"], False
        return [prefix + rest.replace("/kernel", "").replace("/", ".") + ".weight"], True

    @property
    def hf_ignored(self):
        """Hugging Face names that are no weights of their own: the stacks' copies of
        the embedding, and the output's when it is tied."""
        return self.hf_copies + (("lm_head.weight",) if self.tied else ())

    def head_weight_names(self):
        """The untied output kernel (a checkpoint may lack it: allow_missing_heads)."""
        return {"decoder/logits/kernel"} if self.decoder_layers is not None and \
            self.lm_dense is not None else set()

    def dropped_weight_names(self):
        return []

    def missing_weight_hint(self, official_name):
        if official_name in self.head_weight_names():
            return "; pass allow_missing_heads=True to start it from its initialiser"
        if "rms_norm" in official_name or "layer_norm" in official_name:
            return ("; T5's official checkpoints name their norms layer_norm, mT5's "
                    "rms_norm: pass model='mt5.1.1' or 't5.1.1' accordingly")
        return ""

    def checkpoint_groups(self, names, separator="/"):
        """A stack is one group (``encoder/``, ``decoder/``; ``encoder.``, ...): blocks
        beyond the config's are unused variables of the model's own scope."""
        return {name.split(separator)[0] + separator for name in names
                if name not in self.hf_copies}  # a stack's copy is the shared embedding


def _key_bias(key_mask):
    """``[batch, M]`` 0/1 key mask -> additive bias ``[batch, 1, 1, M]``."""
    return ops.where(ops.cast(key_mask, "bool"), 0.0, _MASK_PENALTY)[:, None, None, :]



class T5_1_0(T5):  # noqa: N801 (bert4keras's name, t5.1.0)
    """T5.1.0 (bert4keras ``model="t5.1.0"``, which ``"t5"`` is too): ReLU
    feed-forward, the output tied to the token embedding and scaled by
    ``hidden_size ** -0.5``, unless the config says otherwise."""

    family = "t5.1.0"
    same_weights_as = ("t5",)


class T5_1_1(T5):  # noqa: N801
    """T5.1.1 (bert4keras ``model="t5.1.1"``): a gated feed-forward
    ``gelu(x W_i0) * (x W_i1) W_o`` (tanh GELU) and an output kernel of its own
    (``decoder/logits/kernel``), unless the config says otherwise."""

    family = "t5.1.1"
    same_weights_as = ("t5", "t5.1.0")
    default_hidden_act = ["gelu", "linear"]
    default_tied = False


class MT5_1_1(T5_1_1):  # noqa: N801
    """mT5 (bert4keras ``model="mt5.1.1"``, Hugging Face ``model_type`` ``"mt5"``):
    T5.1.1 whose official checkpoints name the norms ``rms_norm``
    (``encoder/block_000/layer_000/rms_norm/scale``, ``encoder/rms_norm/scale``).
    T5-PEGASUS is an mT5 with a BERT-style vocabulary."""

    family = "mt5.1.1"
    model_types = ("mt5", "t5")
    same_weights_as = ()
    norm_name = "rms_norm"


def _part_family(base, part):
    """bert4keras's ``<name>_encoder`` / ``<name>_decoder``: a family building one part
    of ``base``, from its checkpoints."""
    return type(f"{base.__name__}_{part.capitalize()}", (base,), dict(
        family=f"{base.family}_{part}", part=part,
        same_weights_as=(base.family,) + base.same_weights_as, __module__=__name__,
        __doc__=f"The {part} of {base.__name__} alone (bert4keras "
                f"``model=\"{base.family}_{part}\"``): its ``model`` is ``builder.{part}``."))


T5_Encoder, T5_Decoder = _part_family(T5, "encoder"), _part_family(T5, "decoder")
T5_1_0_Encoder, T5_1_0_Decoder = _part_family(T5_1_0, "encoder"), _part_family(T5_1_0, "decoder")
T5_1_1_Encoder, T5_1_1_Decoder = _part_family(T5_1_1, "encoder"), _part_family(T5_1_1, "decoder")
MT5_1_1_Encoder = _part_family(MT5_1_1, "encoder")
MT5_1_1_Decoder = _part_family(MT5_1_1, "decoder")
