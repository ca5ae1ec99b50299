"""The core of every Transformer family: embeddings, blocks, heads and graphs.

:class:`Transformer` is the one core every family uses. Embeddings, the
post-norm block, the heads and three graphs are written once and share the same
layers, hence the same weights:

* the Keras model users train and save (``builder.model``);
* the prefill model of incremental decoding (runs a source once and returns the
  next-token logits and the keys and values of every layer application);
* the step model (runs one new token against the cached keys and values).

A family (:class:`BERT`, :class:`RoBERTa`, :class:`ALBERT`, :class:`ALBERTUnshared`,
:class:`ELECTRA`, :class:`RoFormer`, :class:`NEZHA`, :class:`RoFormerV2`, :class:`GPT`,
:class:`GPT2`, :class:`GPT2ML`, one module each in :mod:`bert4x.families`) is a small
subclass that registers itself in :mod:`bert4x.registry` when it is defined, and declares
what differs:

* the config fields it owns (``config_fields``, each with its neutral value):
  :meth:`Transformer.check_config` refuses a field another family owns unless it
  is neutral, naming its owners, and the family refuses values it cannot build;
* the families whose weights it reads unchanged (``same_weights_as``);
* how it embeds: ``factorised`` (embeddings of width ``embedding_size`` then an
  ``Embedding-Mapping`` Dense to ``hidden_size``), ``absolute_positions`` (a
  learned position table or none) and :meth:`Transformer.position_ids`;
* how attention sees positions: :meth:`Transformer.position_encoding` returns None
  or a ``bert4x.layers.PositionEncoding`` given to every ``MultiHeadAttention``.
  The core then passes the absolute ``query_positions`` of the new token (and
  ``key_positions`` of every cache slot, ``cumsum(key_mask) - 1``) to attention in
  the step graph; in the training and prefill graphs positions are ``0..L-1`` and
  attention derives them itself;
* whether layers are shared: :meth:`Transformer.layer_blocks` lists the blocks
  (weight sets) each layer runs, so ALBERT runs one block many times;
* the parts of its layers: ``dense_bias`` (whether the encoder's Dense layers
  have biases), ``norm_options`` (the ``bert4x.layers.LayerNormalization``
  variant: RMS norm, no gamma, no beta) and ``embedding_dropout_before_norm``;
* where a block normalises (``block_norms``: after each residual sum, BERT's
  post-norm; on each sub-block's input, GPT-2's pre-norm; or both) and whether a
  final norm follows the last block (``final_norm``) or one precedes the first
  (``norm_embeddings``);
* the applications it builds (``applications``: the GPTs are language models),
  whether it takes segment ids, and whether its MLM head transforms the hidden
  states or is the tied output alone (``mlm_transform``);
* its heads (``heads``) and its checkpoint names: the official ones
  (:meth:`variable_map`, ``block_names``) and the Hugging Face ones
  (:meth:`hugging_face_names` from ``hf_renames``, ``hf_special``, ``hf_prefix``;
  ``hf_ignored`` for the buffers and tied copies Hugging Face files hold;
  ``hf_transposed_kernels`` and ``hf_fused`` for GPT's ``Conv1D`` files).

The core never imports the families: what it needs to know about the others
(who owns a field, which family a ``model_type`` names) it asks the registry.
"""

import keras
from keras import ops

from bert4x import checkpoints, registry
from bert4x.configs import BertConfig
from bert4x.layers import (AttentionBias, BiasAdd, CachedAttention, Dropout, Embedding,
                           FeedForward, FirstToken, LayerNormalization, MultiHeadAttention,
                           PositionEmbedding, ReversibleEmbedding, get_activation)


_MASK_PENALTY = -1e9

#: The declaration of ``embedding_size`` a factorised family owns: neutral when
#: unset or equal to ``hidden_size`` (nothing to factorise).
EMBEDDING_SIZE = registry.ConfigField(neutral=(None,), same_as="hidden_size",
                                      meaning="the width of factorised embeddings")

#: The norms a block may have (``Transformer.block_norms``), in the order they run:
#: on the attention's input, after the attention's residual sum, on the
#: feed-forward's input, after its residual sum.
BLOCK_NORMS = ("attention_input_norm", "attention_norm", "feed_forward_input_norm",
               "feed_forward_norm")


class Transformer:
    """The Transformer core: a builder of a model and of its incremental-decoding graphs.

    Subclasses are the families; this class holds everything they share (see the
    module docstring for what a family declares). Layer names follow bert4keras
    (``Embedding-Token``, ``Transformer-3-FeedForward``, ``MLM-Norm``, ...), so
    intermediate outputs are one ``model.get_layer`` away.

    Args:
        config: a :class:`BertConfig`.
        application: ``"encoder"``, ``"lm"`` (left to right) or ``"unilm"`` (seq2seq),
            among the family's ``applications``; None: its natural one (the first).
        with_pool: add the pooler output (tanh Dense on ``[CLS]``).
        with_nsp: add next-sentence (ALBERT: sentence-order) probabilities
            (implies the pooler); ``"linear"`` for logits.
        with_mlm: ``True`` for MLM probabilities, ``"linear"`` for logits.
        mlm_positions: run the MLM head only at given positions (keras-hub's
            ``mask_positions``): the model takes a third input
            ``Input-MLM-Positions`` ``[batch, P]`` of int positions and its MLM
            output is ``[batch, P, vocab]``. With a large vocabulary the head on
            every position costs as much as the encoder. Needs the MLM head.
        with_discriminator: ELECTRA: replaced-token probabilities; ``"linear"``
            for logits.
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
        name: name of the Keras model (default: the family's name).

    Example:
        >>> config = BertConfig(vocab_size=100, embedding_size=16, hidden_size=32,
        ...                     num_hidden_layers=2, num_attention_heads=2,
        ...                     intermediate_size=48)
        >>> builder = ALBERT(config, with_mlm=True)
        >>> builder.schedule  # both layers run the one shared block
        [0, 0]
        >>> prefill_model, step_model = ALBERT(config, application="unilm").cache_models()
    """

    #: The ``model=`` name of the family; a subclass that sets it is registered.
    family = None
    #: Hugging Face ``model_type`` values whose configs this family builds (the
    #: first is the one :func:`bert4x.registry.family_of` maps to this family).
    model_types = ()
    #: Config fields the family owns beyond BERT's: ``{field: ConfigField}``. The
    #: other families refuse them at a value other than the neutral one.
    config_fields = {}
    #: The config dataclass of the family: :class:`BertConfig`, or a subclass with
    #: the family's own fields and file names (``aliases``).
    config_class = BertConfig
    #: Families that read this family's weights unchanged, and whose weights it
    #: reads (an export of one builds as the other).
    same_weights_as = ()
    #: Heads the family has: among "pool", "nsp", "mlm", "discriminator".
    heads = ("pool", "nsp", "mlm")
    #: Applications (attention patterns) the family builds; the first is its natural
    #: one, which ``application=None`` picks (left-to-right GPTs: ``("lm", ...)``).
    applications = AttentionBias.APPLICATIONS
    #: A segment (token type) table may be configured (``type_vocab_size`` > 0).
    segment_embeddings = True
    #: A LayerNorm over the summed embeddings (``Embedding-Norm``).
    norm_embeddings = True
    #: The norms of a block, among :data:`BLOCK_NORMS`: ``attention_norm`` and
    #: ``feed_forward_norm`` (after each residual sum: BERT's post-norm block),
    #: ``attention_input_norm`` and ``feed_forward_input_norm`` (on each
    #: sub-block's input, the residual left unnormalised: a pre-norm block).
    block_norms = ("attention_norm", "feed_forward_norm")
    #: A LayerNorm after the last block (``Output-Norm``; pre-norm families).
    final_norm = False
    #: The MLM head transforms the hidden states (Dense, activation, LayerNorm) and
    #: adds an output bias around the tied output; False: the logits are the hidden
    #: states times the token embeddings transposed, nothing else (GPT's LM head).
    mlm_transform = True
    #: Embeddings of width ``embedding_size`` mapped to ``hidden_size``.
    factorised = False
    #: A learned absolute position table in the embeddings.
    absolute_positions = True
    #: Whether the encoder's Dense layers (attention projections, feed-forward,
    #: embedding mapping) have biases.
    dense_bias = True
    #: Options of every LayerNormalization of the family (``zero_mean``, ``scale``,
    #: ``offset``; see :class:`bert4x.layers.LayerNormalization`); empty: BERT's.
    norm_options = {}
    #: Embeddings summed, then dropout, then the norm (BERT: the norm, then dropout).
    embedding_dropout_before_norm = False
    #: The only ``position_embedding_type`` the family builds.
    position_embedding_type = "absolute"
    #: Official name prefix of the embeddings and encoder (``bert/embeddings/...``).
    prefix = "bert"
    #: Official names of a block's weights, relative to :meth:`block_name_prefix`:
    #: ``{part: name}`` for the parts query, key, value, attention_output,
    #: attention_norm, intermediate, output, feed_forward_norm.
    block_names = None
    #: ``(pattern, replacement)`` rewrites of official names before the generic
    #: Hugging Face rule (``/`` to ``.``, kernels transposed to ``weight``).
    hf_renames = ()
    #: Official names whose Hugging Face names the generic rule does not give
    #: (output biases, NSP/SOP weights): ``{official: [Hugging Face names]}``.
    hf_special = {}
    #: The Hugging Face base model's prefix (``bert``): files saved from the base
    #: model lack it, so names without it are matched too.
    hf_prefix = None
    #: Endings of Hugging Face names that are no weights of their own (buffers,
    #: tied copies of the word embeddings): never "unused".
    hf_ignored = ()
    #: Hugging Face files store kernels ``[out, in]`` (PyTorch ``Linear``): False for
    #: files that keep them ``[in, out]`` (GPT's ``Conv1D``).
    hf_transposed_kernels = True
    #: Tensors of Hugging Face files that hold several weights side by side on their
    #: last axis: ``{whole: parts}``; a file's ``<a>.<whole>.<b>`` is read as
    #: ``<a>.<whole>.<part>.<b>`` for each part (GPT-2's fused ``attn.c_attn``:
    #: ``{"attn.c_attn": ("query", "key", "value")}``). See
    #: :func:`bert4x.checkpoints.split_fused`.
    hf_fused = {}
    #: An encoder-decoder (T5): its ``model`` takes ``[encoder ids, decoder ids]``
    #: and its builder has ``encoder`` and ``decoder`` models.
    encoder_decoder = False
    #: Config values bert4x.bert4keras builds this family with unless told
    #: otherwise: what bert4keras computes differently from the original model.
    bert4keras_config = {}

    def __init__(self, config, application=None, with_pool=False, with_nsp=False,
                 with_mlm=False, with_discriminator=False, keep_tokens=None,
                 mlm_positions=False, layer_norm_cond=None, layer_norm_cond_hidden_size=None,
                 layer_norm_cond_hidden_act=None, additional_input_layers=None, dtype=None,
                 name=None):
        application = self._check_application(application)
        self.check_config(config)
        keep_tokens, config = self.kept_vocabulary(config, keep_tokens)
        if additional_input_layers is None:
            additional_input_layers = []
        elif not isinstance(additional_input_layers, (list, tuple)):
            additional_input_layers = [additional_input_layers]  # one tensor, as bert4keras
        if layer_norm_cond is not None and not additional_input_layers:
            raise ValueError("layer_norm_cond must be computed from additional_input_layers "
                             "(pass the keras.Input tensors it depends on)")
        if layer_norm_cond is not None and not (self.norm_options.get("scale", True)
                                                or self.norm_options.get("offset", True)):
            raise ValueError(f"layer_norm_cond conditions the gamma and beta of the norms; "
                             f"the norms of {self.family!r} have neither")
        self.config = config
        self.application = application
        if application == "unilm" and not self.takes_segment_ids():
            raise ValueError(f"application='unilm' needs segment ids, which this "
                             f"{self.family!r} model does not take (no segment table)")
        for flag, value in (("with_nsp", with_nsp), ("with_discriminator", with_discriminator)):
            if value not in (False, True, "linear", None):
                raise ValueError(f"{flag} must be True, False or 'linear', got {value!r}")
        self.with_nsp = with_nsp or False
        self.with_pool = bool(with_pool)
        # Generators need the MLM head: lm/unilm switch it on.
        self.with_mlm = with_mlm or application in ("lm", "unilm")
        self.with_discriminator = with_discriminator or False
        self._check_heads()
        if mlm_positions and not self.with_mlm:
            raise ValueError("mlm_positions needs the MLM head: pass with_mlm=True or "
                             "'linear' (or application='lm'/'unilm')")
        self.mlm_positions = bool(mlm_positions)
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
        self.name = name or self.family
        self.schedule = [index for layer in range(config.num_hidden_layers)
                         for index in self.layer_blocks(layer)]
        self._create_layers()
        self.model = self._build_model()
        self._cache_models = None
        self._cached_attentions = {}

    # ------------------------------------------------------ family declaration
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("family") is not None:  # a family, not a variant of one
            cls._check_declaration()
            registry.register(cls)

    @classmethod
    def _check_declaration(cls):
        """Refuse a family whose declaration cannot work, when its class is defined."""
        if not (isinstance(cls.config_class, type) and issubclass(cls.config_class,
                                                                   BertConfig)):
            raise TypeError(f"{cls.__qualname__}.config_class must be BertConfig or a "
                            f"subclass of it, got {cls.config_class!r}")
        known = cls.config_class.field_names()
        unknown = sorted(set(cls.config_fields) - set(known))
        if unknown:
            raise TypeError(f"{cls.__qualname__}.config_fields names {unknown}, which are "
                            f"not fields of {cls.config_class.__name__}; known fields: "
                            f"{known}")
        if cls.factorised != ("embedding_size" in cls.config_fields):
            raise TypeError(f"{cls.__qualname__}: a factorised family owns embedding_size "
                            "(config_fields = {'embedding_size': EMBEDDING_SIZE, ...}), and "
                            "only a factorised family does")
        if cls.block_names is None:
            raise TypeError(f"{cls.__qualname__} declares no block_names (the official "
                            "names of a block's weights)")
        unknown = sorted(set(cls.block_norms) - set(BLOCK_NORMS))
        if unknown:
            raise TypeError(f"{cls.__qualname__}.block_norms names {unknown}; a block's "
                            f"norms are among {BLOCK_NORMS}")
        # A family may give its names per instance (a property, as ALBERT's layouts).
        names = cls.block_names if isinstance(cls.block_names, dict) else None
        unnamed = [norm for norm in cls.block_norms if names is not None and norm not in names]
        if unnamed:
            raise TypeError(f"{cls.__qualname__}.block_names has no official name for the "
                            f"block norms {unnamed}")
        if not cls.applications or not set(cls.applications) <= set(
                AttentionBias.APPLICATIONS):
            raise TypeError(f"{cls.__qualname__}.applications must be some of "
                            f"{AttentionBias.APPLICATIONS}, got {cls.applications!r}")

    @classmethod
    def _check_application(cls, application):
        """The application to build: ``application``, or the family's natural one."""
        if application is None:
            return cls.applications[0]
        if application not in AttentionBias.APPLICATIONS:
            raise ValueError(f"unknown application {application!r}; expected one of "
                             f"{AttentionBias.APPLICATIONS}")
        if application not in cls.applications:
            raise ValueError(f"a {cls.family!r} model builds application "
                             f"{_listing(map(repr, cls.applications), 'or')}, not "
                             f"{application!r} (leave application out for "
                             f"{cls.applications[0]!r})")
        return application

    @classmethod
    def check_config(cls, config):
        """Refuse config values that would change the architecture of this family.

        Raises:
            ValueError: a field another family owns has a value other than its
                neutral one (the error names the families that own it), the
                config was saved from a family whose weights this one does not
                read, or ``model_type`` names another family.
        """
        if not isinstance(config, cls.config_class):
            raise TypeError(
                f"a {cls.family!r} model needs a {cls.config_class.__name__}, got a "
                f"{type(config).__name__}: read its config file with model={cls.family!r} "
                f"or build {cls.config_class.__name__}(...)")
        if config.family is not None and not registry.read_same_weights(config.family,
                                                                         cls.family):
            raise ValueError(
                f"the config was saved from a {config.family!r} model (its field family), "
                f"which cannot be built as a {cls.family!r} model; pass "
                f"model={config.family!r} or leave model= out")
        if config.model_type is not None and config.model_type not in cls.model_types:
            raise ValueError(
                f"the config's model_type {config.model_type!r} is not a {cls.family!r} "
                f"model; pass model={registry.family_of(config.model_type)!r}")
        for field in config.field_names():
            cls._check_foreign_field(config, field)
        if config.type_vocab_size and not cls.segment_embeddings:
            raise ValueError(f"a {cls.family!r} model has no segment embeddings: "
                             f"type_vocab_size must be 0, got {config.type_vocab_size}")
        if config.position_embedding_type != cls.position_embedding_type:
            raise NotImplementedError(
                f"position_embedding_type={config.position_embedding_type!r} is not "
                f"supported by {cls.family!r} (it uses "
                f"{cls.position_embedding_type!r})")

    @classmethod
    def _check_foreign_field(cls, config, field):
        """Refuse a field other families own, at a value other than its neutral one."""
        owners = registry.owners(field)
        if not owners or field in cls.config_fields:
            return
        declared = registry.MODELS[owners[0]].config_fields[field]  # the owners agree
        value = getattr(config, field)
        if declared.is_neutral(value, config):
            return
        shown = f"{field}={value!r}"
        if declared.same_as is not None:
            shown = f"{field} {value!r} != {declared.same_as} " \
                    f"{getattr(config, declared.same_as)!r}"
        meaning = f" ({declared.meaning})" if declared.meaning else ""
        raise ValueError(f"config field {shown}{meaning} belongs to "
                         f"{_listing(map(repr, owners), 'and')}: pass "
                         f"{_listing((f'model={name!r}' for name in owners), 'or')}, not "
                         f"{cls.family!r}")

    @classmethod
    def kept_vocabulary(cls, config, keep_tokens):
        """``(keep_tokens, config)`` of a model keeping only ``keep_tokens`` rows of its
        vocabulary: the ids as a list (None: all) and the config with the trimmed
        ``vocab_size`` and the special ids renumbered.

        Raises:
            ValueError: an id outside the vocabulary, or the padding id left out.
        """
        if keep_tokens is None:
            return None, config
        keep_tokens = [int(token) for token in keep_tokens]
        out_of_range = [t for t in keep_tokens if not 0 <= t < config.vocab_size]
        if out_of_range:
            raise ValueError(f"keep_tokens has ids outside the vocabulary of "
                             f"{config.vocab_size}: {out_of_range[:10]}")
        if config.pad_token_id not in keep_tokens:
            raise ValueError(f"keep_tokens must keep the padding id {config.pad_token_id}")
        return keep_tokens, config.replace(vocab_size=len(keep_tokens),
                                           pad_token_id=keep_tokens.index(config.pad_token_id))

    @property
    def generates(self):
        """Whether the model predicts next tokens, so that ``bert4x.decoding.Decoder``
        decodes with it (``application`` ``"lm"`` or ``"unilm"``)."""
        return self.application in ("lm", "unilm")

    def layer_blocks(self, layer):
        """The blocks (indices into ``self.blocks``) that layer ``layer`` runs in order."""
        return [layer]

    @property
    def num_blocks(self):
        return self.config.num_hidden_layers

    def block_layer_prefix(self, index):
        """Keras name prefix of block ``index``'s layers."""
        return f"Transformer-{index}-"

    def block_name_prefix(self, index):
        """Official name prefix of block ``index``'s weights."""
        return f"{self.prefix}/encoder/layer_{index}/"

    def position_encoding(self):
        """None, or the ``PositionEncoding`` every attention layer applies."""
        return None

    def position_ids(self, token_ids, positions=None):
        """Ids into the position table for ``token_ids``, or None for ``0..L-1``.

        Args:
            token_ids: ``[batch, L]`` ids.
            positions: None in the full graphs; in a decoding step the absolute
                (0-based) position of each new token, ``[batch, 1]``.
        """
        return positions

    @property
    def max_positions(self):
        """How many positions a sequence (source plus generated tokens) may use;
        None for a family without a position table (no limit)."""
        if not self.absolute_positions:
            return None
        return self.config.max_position_embeddings

    def position_rule(self):
        """Where :attr:`max_positions` comes from, for error messages."""
        return "max_position_embeddings"

    def mlm_hidden_act(self):
        """Activation of the MLM head's dense layer."""
        return self.config.hidden_act

    def mlm_width(self):
        """Width of the MLM head's transform (the tied embeddings' width)."""
        return self.config.embedding_width

    def _check_heads(self):
        requested = dict(pool=self.with_pool, nsp=self.with_nsp, mlm=self.with_mlm,
                         discriminator=self.with_discriminator)
        missing = [head for head, value in requested.items()
                   if value and head not in self.heads]
        if missing:
            raise ValueError(f"model {self.family!r} has no {missing} head; its heads: "
                             f"{list(self.heads)}")

    # ----------------------------------------------------------------- layers
    def _initializer(self):
        return keras.initializers.TruncatedNormal(stddev=self.config.initializer_range)

    def _norm(self, name):
        return LayerNormalization(self.config.layer_norm_eps, conditional=self.conditional,
                                  name=name, dtype=self.dtype, **self.norm_options)

    def _dense(self, units, name, activation=None, **kwargs):
        return keras.layers.Dense(units, activation=get_activation(activation),
                                  kernel_initializer=self._initializer(), name=name,
                                  dtype=kwargs.pop("dtype", self.dtype), **kwargs)

    def _create_layers(self):
        self._create_embeddings()
        self.attention_bias = AttentionBias(self.application, pad_id=self.config.pad_token_id,
                                            name="Attention-Bias")
        self.cond_dense = None
        if self.conditional and self.cond_hidden_size:
            self.cond_dense = self._dense(self.cond_hidden_size, "LayerNorm-Condition",
                                          self.cond_hidden_act, use_bias=False)
        self.blocks = [self._create_block(self.block_layer_prefix(index))
                       for index in range(self.num_blocks)]
        self.output_norm = self._norm("Output-Norm") if self.final_norm else None
        self._create_heads()

    def _create_embeddings(self):
        c, init, kw = self.config, self._initializer, dict(dtype=self.dtype)
        width = self.embedding_layers_width()
        self.token_embedding = ReversibleEmbedding(
            c.vocab_size, c.embedding_width, embeddings_initializer=init(),
            name="Embedding-Token", **kw)
        self.token_projection = self._token_projection()
        self.segment_embedding = None
        if c.type_vocab_size:  # 0: no segment table (segment ids drive a UniLM mask only)
            self.segment_embedding = Embedding(
                c.type_vocab_size, width, embeddings_initializer=init(),
                name="Embedding-Segment", **kw)
        self.position_embedding = None
        if self.absolute_positions:
            self.position_embedding = PositionEmbedding(
                c.max_position_embeddings, width, embeddings_initializer=init(),
                name="Embedding-Position", **kw)
        self.embedding_add = keras.layers.Add(name="Embedding-Add", **kw)
        self.embedding_norm = self._norm("Embedding-Norm") if self.norm_embeddings else None
        self.embedding_dropout = Dropout(c.hidden_dropout_prob, name="Embedding-Dropout", **kw)
        self.embedding_mapping = None
        if self.factorised and self.needs_embedding_mapping():
            self.embedding_mapping = self._dense(c.hidden_size, "Embedding-Mapping",
                                                 use_bias=self.dense_bias)

    def embedding_layers_width(self):
        """Width of the segment and position tables and of the embedding norm."""
        return self.config.embedding_width

    def _token_projection(self):
        """A layer applied to the token embeddings before the sum, or None."""
        return None

    def needs_embedding_mapping(self):
        """Whether a factorised family maps the embeddings to ``hidden_size``."""
        return self.config.embedding_width != self.config.hidden_size

    def _create_block(self, prefix):
        c, init, kw = self.config, self._initializer, dict(dtype=self.dtype)
        encoding = self.position_encoding()
        attention_kw = {} if encoding is None else dict(position_encoding=encoding)
        block = dict(
            attention=MultiHeadAttention(
                c.num_attention_heads, c.head_size, c.attention_probs_dropout_prob,
                kernel_initializer=init(), name=prefix + "MultiHeadSelfAttention",
                use_bias=self.dense_bias, **attention_kw, **kw),
            attention_dropout=Dropout(
                c.hidden_dropout_prob, name=prefix + "MultiHeadSelfAttention-Dropout", **kw),
            attention_add=keras.layers.Add(name=prefix + "MultiHeadSelfAttention-Add", **kw),
            feed_forward=FeedForward(c.intermediate_size, c.hidden_act,
                                     kernel_initializer=init(), name=prefix + "FeedForward",
                                     use_bias=self.dense_bias, **kw),
            feed_forward_dropout=Dropout(
                c.hidden_dropout_prob, name=prefix + "FeedForward-Dropout", **kw),
            feed_forward_add=keras.layers.Add(name=prefix + "FeedForward-Add", **kw),
        )
        for part, layer_name in (("attention", "MultiHeadSelfAttention"),
                                 ("feed_forward", "FeedForward")):
            # bert4keras's names: "<sub-block>-Norm", or "-Norm-0" (input) and
            # "-Norm-1" (after the sum) when the sub-block has both.
            both = (f"{part}_input_norm", f"{part}_norm")
            norms = [norm for norm in both if norm in self.block_norms]
            block.update(dict.fromkeys(both))
            for number, norm in enumerate(norms):
                suffix = "-Norm" if len(norms) == 1 else f"-Norm-{number}"
                block[norm] = self._norm(prefix + layer_name + suffix)
        return block

    def _create_heads(self):
        c = self.config
        self.pooler = self.pooler_dense = self.nsp_dense = None
        if self.with_pool or self.with_nsp:
            self.pooler = FirstToken(name="Pooler")
            self.pooler_dense = self._dense(c.hidden_size, "Pooler-Dense",
                                            self.pooler_activation())
        if self.with_nsp:
            self.nsp_dense = self._dense(
                2, "NSP-Proba", None if self.with_nsp == "linear" else "softmax",
                dtype="float32")
        self.mlm_dense = self.mlm_norm = self.mlm_bias = None
        if self.with_mlm:
            self._create_mlm_head()
        self.discriminator_dense = self.discriminator_output = None
        if self.with_discriminator:
            self.discriminator_dense = self._dense(c.hidden_size, "Discriminator-Dense",
                                                   c.hidden_act)
            self.discriminator_output = self._dense(
                1, "Discriminator-Prediction",
                None if self.with_discriminator == "linear" else "sigmoid", dtype="float32")

    def pooler_activation(self):
        """Activation of the pooler's Dense: a name or a callable (BERT: tanh)."""
        return "tanh"

    def mlm_output_activation(self):
        """What ``with_mlm=True`` applies to the MLM logits: a name or a callable
        (softmax, for probabilities)."""
        return "softmax"

    def _create_mlm_head(self):
        """The MLM head's layers (:meth:`mlm_logits` runs them) and ``mlm_activation``,
        the softmax of the model's MLM output."""
        if self.mlm_transform:
            self.mlm_dense = self._dense(self.mlm_width(), "MLM-Dense", self.mlm_hidden_act())
            self.mlm_norm = self._norm("MLM-Norm")
            self.mlm_bias = BiasAdd(name="MLM-Bias", dtype="float32")
        self.mlm_activation = keras.layers.Activation(
            self.mlm_output_activation(), name="MLM-Activation", dtype="float32")

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
        """Token + segment (+ position) embeddings, (conditional) LayerNorm, dropout
        and, for factorised families, the mapping to ``hidden_size``.

        Args:
            position_ids: None in the full graphs; the absolute position of each
                token in a decoding step.
        """
        x = self.token_embedding(token_ids)
        if self.token_projection is not None:
            x = self.token_projection(x)
        parts = [x]
        if self.segment_embedding is not None:
            if self.config.type_vocab_size == 1:
                # One token type (RoBERTa): segment ids may drive the UniLM mask only.
                segment_ids = ops.zeros_like(segment_ids)
            parts.append(self.segment_embedding(segment_ids))
        if self.position_embedding is not None:
            parts.append(self.position_embedding(
                x, position_ids=self.position_ids(token_ids, position_ids)))
        x = self.embedding_add(parts)
        if self.embedding_dropout_before_norm:
            x = self.embedding_dropout(x, training=training)
            if self.embedding_norm is not None:
                x = self.embedding_norm(x, condition=condition)
        else:
            if self.embedding_norm is not None:
                x = self.embedding_norm(x, condition=condition)
            x = self.embedding_dropout(x, training=training)
        if self.embedding_mapping is not None:
            x = self.embedding_mapping(x)
        return x

    def block(self, index, x, attention_bias, condition=None, training=None):
        """Transformer block ``index`` (of ``self.blocks``) on ``x``, its norms where the
        family declares them; returns the block's output."""
        layers = self.blocks[index]
        attended = layers["attention"](self._attention_input(layers, x, condition),
                                       attention_bias=attention_bias, training=training)
        return self._after_attention(layers, x, attended, condition, training)

    def cached_block(self, index, x, attention_bias, condition=None, **cache_inputs):
        """Block ``index`` of a decoding graph: returns ``(x, cache)``, the block's
        output and the keys and values of its attention.

        ``cache_inputs`` are :class:`~bert4x.layers.CachedAttention`'s keyword
        arguments: none in the prefill (the cache is this call's keys and values);
        ``cache`` and ``write_mask`` (and positions, a source cache) in a step.
        """
        layers = self.blocks[index]
        attended = self._cached_attention(index)(self._attention_input(layers, x, condition),
                                                 attention_bias=attention_bias,
                                                 **cache_inputs)
        x = self._after_attention(layers, x, attended["output"], condition, None)
        return x, attended["cache"]

    def _cached_attention(self, index):
        """The one :class:`CachedAttention` of block ``index`` (made on first use; an
        ALBERT block runs it once per application)."""
        if index not in self._cached_attentions:
            self._cached_attentions[index] = CachedAttention(self.blocks[index]["attention"])
        return self._cached_attentions[index]

    @staticmethod
    def _attention_input(layers, x, condition):
        """What a block's attention reads: ``x``, normalised in a pre-norm block."""
        norm = layers["attention_input_norm"]
        return x if norm is None else norm(x, condition=condition)

    def _after_attention(self, layers, x, attended, condition, training):
        """The rest of a block after its attention output ``attended``: the residual
        sums, the feed-forward and the norms the family declares (``block_norms``)."""
        attended = layers["attention_dropout"](attended, training=training)
        x = layers["attention_add"]([x, attended])
        if layers["attention_norm"] is not None:
            x = layers["attention_norm"](x, condition=condition)
        transformed = x
        if layers["feed_forward_input_norm"] is not None:
            transformed = layers["feed_forward_input_norm"](x, condition=condition)
        transformed = layers["feed_forward"](transformed)
        transformed = layers["feed_forward_dropout"](transformed, training=training)
        x = layers["feed_forward_add"]([x, transformed])
        if layers["feed_forward_norm"] is not None:
            x = layers["feed_forward_norm"](x, condition=condition)
        return x

    def encode(self, x, attention_bias, condition=None, training=None):
        """Run every layer (``self.schedule``) on the embeddings ``x``, then the final
        norm of a pre-norm family."""
        for index in self.schedule:
            x = self.block(index, x, attention_bias, condition=condition, training=training)
        return self.finish(x, condition)

    def finish(self, x, condition=None):
        """The hidden states after the last block: ``Output-Norm`` of a family with a
        final norm, else ``x`` itself."""
        if self.output_norm is None:
            return x
        return self.output_norm(x, condition=condition)

    def mlm_logits(self, x, condition=None):
        """The MLM head: Dense, activation, (conditional) LayerNorm, tied output, bias
        (without ``mlm_transform``: the tied output alone)."""
        if self.mlm_dense is not None:
            x = self.mlm_dense(x)
            x = self.mlm_norm(x, condition=condition)
        if self.token_projection is not None:
            x = self.token_projection(x, reverse=True)
        x = self.token_embedding(x, reverse=True)
        return x if self.mlm_bias is None else self.mlm_bias(x)

    def mlm_logits_at(self, x, positions, condition=None):
        """The MLM head on ``x`` ``[batch, L, width]`` at ``positions`` ``[batch, P]``
        only: logits ``[batch, P, vocab]``, equal to the full head's gathered there."""
        gathered = ops.take_along_axis(x, ops.expand_dims(positions, -1), axis=1)
        return self.mlm_logits(gathered, condition=condition)

    def mlm_positions_model(self, length=None, num_positions=None, name=None):
        """``[token_ids, segment_ids, positions, *additional] -> MLM logits [batch, P,
        vocab]`` at the positions, on this builder's layers (training it trains
        :attr:`model`); without segment ids for a model that takes none (GPT-2).

        Args:
            length, num_positions: fixed sizes of the inputs (None: any).
            name: the Keras model's name (default: ``<name>_mlm_positions``).

        Example:
            >>> config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
            ...                     num_attention_heads=2, intermediate_size=48)
            >>> model = BERT(config, with_mlm="linear").mlm_positions_model(16, 3)
            >>> model.output.shape
            (None, 3, 100)
        """
        if not self.with_mlm:
            raise ValueError("mlm_positions_model needs the MLM head: build with "
                             "with_mlm=True or 'linear'")
        return self._build_model(positions_only=True, length=length,
                                 num_positions=num_positions,
                                 name=name or f"{self.name}_mlm_positions")

    def _model_inputs(self):
        """``(inputs, token_ids, segment_ids, position_ids)`` of the full model.

        ``inputs`` are the model's input tensors (before the additional ones);
        the ids are what the graph reads, drawn from them; ``position_ids`` None
        means ``0..L-1``.
        """
        token_ids, segment_ids = self._inputs()
        if not self.takes_segment_ids():
            return [token_ids], token_ids, ops.zeros_like(token_ids), None
        return [token_ids, segment_ids], token_ids, segment_ids, None

    def takes_segment_ids(self):
        """Whether the model takes segment ids after the token ids (its decoding
        graphs always do, and ignore them without a segment table)."""
        return self.segment_embeddings

    def _build_model(self, positions_only=False, length=None, num_positions=None, name=None):
        """The model with every requested head (the MLM head at an
        ``Input-MLM-Positions`` input when ``mlm_positions``), or with
        ``positions_only`` the MLM logits at those positions alone."""
        if positions_only:
            token_ids, segment_ids = self._inputs(length)
            inputs, position_ids = [token_ids, segment_ids], None
            if not self.takes_segment_ids():
                inputs, segment_ids = [token_ids], ops.zeros_like(token_ids)
        else:
            inputs, token_ids, segment_ids, position_ids = self._model_inputs()
        mlm_positions = None
        if positions_only or self.mlm_positions:
            mlm_positions = keras.Input((num_positions,), dtype="int32",
                                        name="Input-MLM-Positions")
            inputs = inputs + [mlm_positions]
        inputs = inputs + self.additional_inputs
        condition = None
        if self.conditional:
            condition = self._condition(self.condition_model(self.additional_inputs))
        x = self.embed(token_ids, segment_ids, position_ids=position_ids, condition=condition)
        bias = self.attention_bias(token_ids, segment_ids)
        x = self.encode(x, bias, condition=condition)
        if positions_only:
            return keras.Model(inputs, self.mlm_logits_at(x, mlm_positions, condition),
                               name=name)
        self.sequence_output = x
        outputs = [x]
        if self.pooler is not None:
            pooled = self.pooler_dense(self.pooler(x))
            if self.with_pool:
                outputs.append(pooled)
            if self.with_nsp:
                outputs.append(self.nsp_dense(pooled))
        if self.with_mlm:
            logits = (self.mlm_logits(x, condition=condition) if mlm_positions is None
                      else self.mlm_logits_at(x, mlm_positions, condition=condition))
            outputs.append(logits if self.with_mlm == "linear" else self.mlm_activation(logits))
        if self.with_discriminator:
            scores = self.discriminator_output(self.discriminator_dense(x))
            outputs.append(ops.squeeze(scores, axis=-1))
        if self.application in ("lm", "unilm") and len(outputs) == 2:
            outputs = outputs[1:]  # generators are used for their token distribution
        return keras.Model(inputs, outputs[0] if len(outputs) == 1 else outputs,
                           name=name or self.name)

    # ------------------------------------------------------ incremental decoding
    def cache_models(self):
        """Return ``(prefill_model, step_model)`` for incremental decoding.

        Both take a dict of named inputs and return ``{"logits", "cache"}``. The
        inputs of the extra condition (``additional_input_layers``) are named
        as their tensors are (``tensor.name``, e.g. the ``name`` of their
        ``keras.Input``), one row per row of ``token_ids``.

        ``prefill_model({"token_ids", "segment_ids", "last_index", **extra})``
        runs the padded sources ``[sources, S]`` once and returns the MLM
        ``logits`` ``[sources, vocab]`` at ``last_index`` ``[sources]`` and the
        ``cache`` ``[sources, applications, 2, heads, S, head_size]``, one entry
        per layer application (ALBERT's shared layers have one per
        application, not per shared block).

        ``step_model({"token_ids", "segment_ids", "position_ids",
        "source_cache", "source_key_mask", "cache", "key_mask", "write_mask",
        **extra})`` runs one token per row (ids and positions ``[batch, 1]``) at
        absolute position ``position_ids``. It attends to two caches:
        ``source_cache`` ``[sources, applications, 2, heads, S, head_size]``
        (the prefill's cache, stored once per source, ``source_key_mask``
        ``[sources, S]`` marking its real tokens, which hold positions ``0, 1,
        ...`` in slot order), shared by ``batch // sources`` consecutive rows
        per source (the beams of a source), and the rows' own ``cache``
        ``[batch, applications, 2, heads, M, head_size]`` of generated tokens,
        ``key_mask`` ``[batch, M]`` marking its valid slots including the one
        written now, which ``write_mask`` one-hot marks (generated slot ``j``
        holds position ``source length + j``). Returns the ``logits``
        ``[batch, vocab]`` and the rows' updated ``cache``.

        Example:
            >>> config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
            ...                     num_attention_heads=2, intermediate_size=48)
            >>> prefill_model, step_model = BERT(config, application="lm").cache_models()
            >>> outputs = prefill_model({"token_ids": np.array([[2, 7, 9]]),
            ...                          "segment_ids": np.zeros((1, 3), "int32"),
            ...                          "last_index": np.array([2])})
            >>> tuple(outputs["cache"].shape)  # [sources, layers, 2, heads, S, head_size]
            (1, 2, 2, 2, 3, 16)
        """
        if self.application == "encoder":
            raise ValueError("incremental decoding needs application='lm' or 'unilm'")
        if self._cache_models is None:
            self._cache_models = (self._build_prefill_model(), self._build_step_model())
        return self._cache_models

    def _extra_inputs(self, taken):
        """``({name: input}, condition)``: inputs of a decoding graph standing for the
        additional inputs, named as they are, and the condition computed from them."""
        extra = {}
        for tensor in self.additional_inputs:
            if tensor.name in taken or tensor.name in extra:
                raise ValueError(
                    f"the additional input named {tensor.name!r} clashes with another input "
                    f"of the decoding graphs ({sorted(taken | set(extra))}): give it "
                    f"another name (keras.Input(..., name=...))")
            extra[tensor.name] = keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype,
                                             name=tensor.name)
        condition = None
        if self.conditional:
            condition = self._condition(self.condition_model(list(extra.values())))
        return extra, condition

    def _build_prefill_model(self):
        inputs = _named_inputs(token_ids=((None,), "int32"), segment_ids=((None,), "int32"),
                               last_index=((), "int32"))
        extra, condition = self._extra_inputs(set(inputs))
        token_ids, segment_ids = inputs["token_ids"], inputs["segment_ids"]
        x = self.embed(token_ids, segment_ids, condition=condition)
        bias = self.attention_bias(token_ids, segment_ids)
        caches = []
        for index in self.schedule:
            x, cache = self.cached_block(index, x, bias, condition=condition)
            caches.append(cache)
        x = self.finish(x, condition)
        logits = self.mlm_logits_at(x, ops.reshape(inputs["last_index"], (-1, 1)),
                                    condition=condition)[:, 0]
        return keras.Model({**inputs, **extra},
                           {"logits": logits, "cache": ops.stack(caches, axis=1)},
                           name=f"{self.name}_prefill")

    def _build_step_model(self):
        c = self.config
        cache = ((len(self.schedule), 2, c.num_attention_heads, None, c.head_size),
                 self.token_embedding.compute_dtype)  # the layers' (mixed precision: bf16)
        inputs = _named_inputs(
            token_ids=((1,), "int32"), segment_ids=((1,), "int32"),
            position_ids=((1,), "int32"), source_cache=cache,
            source_key_mask=((None,), "float32"), cache=cache,
            key_mask=((None,), "float32"), write_mask=((None,), "float32"))
        extra, condition = self._extra_inputs(set(inputs))
        token_ids, segment_ids = inputs["token_ids"], inputs["segment_ids"]
        position_ids, key_mask = inputs["position_ids"], inputs["key_mask"]
        source_key_mask = inputs["source_key_mask"]
        x = self.embed(token_ids, segment_ids, position_ids=position_ids, condition=condition)
        step = dict(write_mask=inputs["write_mask"], source_bias=_mask_bias(source_key_mask))
        if self.position_encoding() is not None:
            # Generated slot j holds position (source length + j). The [batch, 1] term
            # comes first: Keras 3.15's functional replay broadcasts `[b, M] + [b, 1]`
            # wrongly (as if the second were [M]) while `[b, 1] + [b, M]` is right.
            start = position_ids + 1 - ops.cast(ops.sum(key_mask, axis=1, keepdims=True),
                                                "int32")
            step.update(source_key_positions=_slot_positions(source_key_mask),
                        query_positions=position_ids,
                        key_positions=start + _slot_positions(key_mask))
        bias, caches = _mask_bias(key_mask), []
        for application, index in enumerate(self.schedule):
            x, layer_cache = self.cached_block(
                index, x, bias, condition=condition, cache=inputs["cache"][:, application],
                source_cache=inputs["source_cache"][:, application], **step)
            caches.append(layer_cache)
        x = self.finish(x, condition)
        logits = self.mlm_logits(x, condition=condition)[:, 0]
        return keras.Model({**inputs, **extra},
                           {"logits": logits, "cache": ops.stack(caches, axis=1)},
                           name=f"{self.name}_step")

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
        """``[(official_name, keras_variable, kind)]`` for every mapped weight.

        ``kind`` says how the official array relates to the variable: "plain"
        (same shape), "vocab" (rows follow ``keep_tokens``), "vocab_columns"
        (columns follow them) or "transposed".
        """
        pairs = self._embedding_variables()
        for index, layers in enumerate(self.blocks):
            pairs += self._block_variables(self.block_name_prefix(index), layers)
        if self.output_norm is not None:
            pairs += norm_pairs(self.final_norm_name(), self.output_norm)
        return pairs + self._head_variables()

    def final_norm_name(self):
        """Official name of the final norm (``Output-Norm``) of a pre-norm family."""
        raise NotImplementedError(f"{self.family!r} has no final norm")

    def _embedding_variables(self):
        p = f"{self.prefix}/embeddings/"
        pairs = [(p + "word_embeddings", self.token_embedding.embeddings, "vocab")]
        if self.segment_embedding is not None:
            pairs.append((p + "token_type_embeddings", self.segment_embedding.embeddings,
                          "plain"))
        if self.position_embedding is not None:
            pairs.append((p + "position_embeddings", self.position_embedding.embeddings,
                          "plain"))
        if self.embedding_norm is not None:
            pairs += norm_pairs(p + "LayerNorm", self.embedding_norm)
        if self.embedding_mapping is not None:
            pairs += dense_pairs(self.embedding_mapping_name(), self.embedding_mapping)
        return pairs

    def embedding_mapping_name(self):
        """Official name of the ``Embedding-Mapping`` Dense."""
        raise NotImplementedError(f"{self.family!r} has no embedding mapping")

    def _block_variables(self, prefix, layers):
        names, attention = self.block_names, layers["attention"]
        feed_forward = layers["feed_forward"]
        pairs = []
        for part, dense in (("query", attention.query_dense), ("key", attention.key_dense),
                            ("value", attention.value_dense),
                            ("attention_output", attention.output_dense),
                            ("intermediate", feed_forward.intermediate_dense),
                            ("output", feed_forward.output_dense)):
            pairs += dense_pairs(prefix + names[part], dense)
        for norm in BLOCK_NORMS:
            if layers[norm] is not None:
                pairs += norm_pairs(prefix + names[norm], layers[norm])
        return pairs

    def _head_variables(self):
        pairs = []
        if self.pooler_dense is not None:
            pairs += dense_pairs(f"{self.prefix}/pooler/dense", self.pooler_dense)
        if self.mlm_dense is not None:
            p = self.mlm_prefix()
            pairs += dense_pairs(p + "transform/dense", self.mlm_dense)
            pairs += norm_pairs(p + "transform/LayerNorm", self.mlm_norm)
            pairs.append((p + "output_bias", self.mlm_bias.bias, "vocab"))
        if self.nsp_dense is not None:
            pairs.append(("cls/seq_relationship/output_weights", self.nsp_dense.kernel,
                          "transposed"))
            pairs.append(("cls/seq_relationship/output_bias", self.nsp_dense.bias, "plain"))
        return pairs

    def mlm_prefix(self):
        """Official name prefix of the MLM head."""
        return "cls/predictions/"

    def hugging_face_names(self, official_name):
        """Candidate Hugging Face names of an official name, and whether to transpose."""
        return checkpoints.hugging_face_names(official_name, self.hf_renames,
                                              self.hf_special, self.hf_prefix,
                                              self.hf_transposed_kernels)

    def head_weight_names(self):
        """Official names of the heads' weights (a checkpoint may lack them:
        ``allow_missing_heads``)."""
        return {name for name, _, _ in self._head_variables()}

    def checkpoint_groups(self, names, separator="/"):
        """The name groups of the model's own scope in a checkpoint (see
        ``bert4x.checkpoints.load_weights``): the first two parts of each of its
        ``names`` (``bert/encoder/``; Hugging Face's ``bert.encoder.``), split at
        ``separator``. A variable of the checkpoint in one of these groups that the
        model does not use is an error."""
        return {separator.join(name.split(separator)[:2]) + separator for name in names}

    def dropped_weight_names(self):
        """Official names of weights a checkpoint may hold that this model leaves out
        on purpose (the segment table, with ``type_vocab_size`` 0)."""
        if self.segment_embedding is not None:
            return []
        return [f"{self.prefix}/embeddings/token_type_embeddings"]

    def missing_weight_hint(self, official_name):
        """What to do when a checkpoint lacks ``official_name`` ("" when nothing helps),
        to end an error message."""
        if official_name in self.head_weight_names():
            return "; pass allow_missing_heads=True to start it from its initialiser"
        without_table = registry.families_without_position_table(self.prefix)
        if without_table and official_name == f"{self.prefix}/embeddings/position_embeddings":
            choices = _listing((f"model={name!r}" for name in without_table), "or")
            return (f"; a checkpoint without a position table is of a family without one: "
                    f"pass {choices} (this is a {self.family!r} model)")
        return ""


def dense_pairs(name, dense):
    """``(official name, variable, kind)`` of a Dense layer's kernel (and bias)."""
    pairs = [(name + "/kernel", dense.kernel, "plain")]
    if dense.use_bias:
        pairs.append((name + "/bias", dense.bias, "plain"))
    return pairs


def norm_pairs(name, norm):
    """``(official name, variable, kind)`` of a LayerNorm's gamma and beta (those it has)."""
    pairs = []
    if norm.gamma is not None:
        pairs.append((name + "/gamma", norm.gamma, "plain"))
    if norm.beta is not None:
        pairs.append((name + "/beta", norm.beta, "plain"))
    return pairs


def _listing(words, conjunction):
    """``a``, ``a or b``, ``a, b or c``: words for a message."""
    words = list(words)
    if len(words) < 2:
        return "".join(words)
    return f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


def _named_inputs(**specs):
    """``{name: keras.Input named so}`` from ``{name: (shape, dtype)}``."""
    return {name: keras.Input(shape, dtype=dtype, name=name)
            for name, (shape, dtype) in specs.items()}


def _mask_bias(key_mask):
    """``[batch, M]`` 0/1 key mask -> additive attention bias ``[batch, 1, 1, M]``."""
    return ops.where(ops.cast(key_mask, "bool"), 0.0, _MASK_PENALTY)[:, None, None, :]


def _slot_positions(key_mask):
    """Positions ``0, 1, ...`` of the valid slots in slot order (masked slots: any)."""
    return ops.cast(ops.cumsum(ops.cast(key_mask, "int32"), axis=1) - 1, "int32")
