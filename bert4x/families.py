"""The model families: what each one changes in the core :class:`Transformer`.

Each family is a small subclass of :class:`bert4x.transformer.Transformer`;
``MODELS`` maps the ``model=`` names of ``build_transformer_model`` to them.
"""

from keras import ops

from bert4x import checkpoints
from bert4x.layers import RelativePositionEncoding, RotaryPositionEncoding, TiedProjection
from bert4x.transformer import BERT_BLOCK_NAMES, Transformer, dense_pairs, norm_pairs


class BERT(Transformer):
    """Google's BERT (and every checkpoint in its name layout)."""

    family = "bert"
    model_types = ("bert",)


class RoBERTa(BERT):
    """RoBERTa: HFL's RoBERTa-wwm-ext (BERT math and names) or fairseq's (Hugging Face).

    A config whose ``model_type`` is ``"roberta"`` (Hugging Face ``RobertaConfig``)
    gets fairseq's positions: with ``P = pad_token_id`` (1) and ``m_t`` whether
    token ``t`` is not padding, ``position_t = P + m_t * cumsum(m)_t``, so the
    first real token is at ``P + 1``; its MLM head uses the exact (erf) GELU and
    its Hugging Face names are ``roberta.*`` and ``lm_head.*``. Any other config
    (HFL's ``bert_config.json``) builds a BERT.
    """

    family = "roberta"
    model_types = ("roberta", "bert")

    @property
    def fairseq(self):
        return self.config.model_type == "roberta"

    def position_ids(self, token_ids, positions=None):
        if not self.fairseq:
            return positions
        pad = self.config.pad_token_id
        if positions is not None:
            return positions + (pad + 1)
        real = ops.cast(ops.not_equal(token_ids, pad), "int32")
        return pad + real * ops.cumsum(real, axis=1)

    @property
    def max_positions(self):
        offset = self.config.pad_token_id + 1 if self.fairseq else 0
        return self.config.max_position_embeddings - offset

    def position_rule(self):
        if not self.fairseq:
            return super().position_rule()
        return (f"max_position_embeddings {self.config.max_position_embeddings} minus "
                f"pad_token_id + 1: fairseq RoBERTa's positions start at "
                f"{self.config.pad_token_id + 1}")

    def mlm_hidden_act(self):
        return "gelu" if self.fairseq else self.config.hidden_act

    def hugging_face_names(self, official_name):
        if not self.fairseq:
            return super().hugging_face_names(official_name)
        return checkpoints.hugging_face_names(official_name, _ROBERTA_RENAMES,
                                              _ROBERTA_SPECIAL)


_ROBERTA_RENAMES = (("^bert/", "roberta/"),
                    ("^cls/predictions/transform/dense", "lm_head/dense"),
                    ("^cls/predictions/transform/LayerNorm", "lm_head/layer_norm"))
_ROBERTA_SPECIAL = {"cls/predictions/output_bias": ["lm_head.bias", "lm_head.decoder.bias"]}


class ALBERT(Transformer):
    """ALBERT: factorised embeddings and layers that share their weights.

    Google's layout: embeddings of width ``embedding_size`` (E), normalised, then
    mapped to ``hidden_size`` (H); layer ``l`` runs the ``inner_group_num`` blocks
    of group ``l * num_hidden_groups // num_hidden_layers``; the MLM head maps H
    to E. brightmart's albert_zh (a config with ``ln_type``) instead projects the
    token embeddings to H before adding the position and segment embeddings
    (``word_embeddings_2``), shares one block under ``layer_shared``, and ties
    the MLM output through that projection. The NSP head is the sentence-order
    (SOP) head: label 0 for the original order.
    """

    family = "albert"
    model_types = ("albert",)
    factorised = True
    shared_layers = True
    hf_renames = (
        (r"^bert/encoder/transformer/group_(\d+)/inner_group_(\d+)/",
         r"albert/encoder/albert_layer_groups/\1/albert_layers/\2/"),
        ("/attention_1/self/", "/attention/"), ("/attention_1/output/dense", "/attention/dense"),
        (r"(albert_layers/\d+)/LayerNorm/", r"\1/attention/LayerNorm/"),
        ("/LayerNorm_1/", "/full_layer_layer_norm/"),
        ("/ffn_1/intermediate/output/dense", "/ffn_output"),
        ("/ffn_1/intermediate/dense", "/ffn"),
        ("^bert/pooler/dense", "albert/pooler"), ("^bert/", "albert/"),
        ("^cls/predictions/transform/", "predictions/"))
    hf_special = {
        "cls/predictions/output_bias": ["predictions.bias", "predictions.decoder.bias"],
        "cls/seq_relationship/output_weights": ["sop_classifier.classifier.weight"],
        "cls/seq_relationship/output_bias": ["sop_classifier.classifier.bias"]}

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        if config.ln_type not in (None, "postln"):
            raise NotImplementedError(f"ln_type {config.ln_type!r}: only brightmart's "
                                      "post-norm ALBERT ('postln') is supported")
        if config.num_hidden_layers % config.num_hidden_groups:
            raise ValueError(f"num_hidden_layers {config.num_hidden_layers} is not a "
                             f"multiple of num_hidden_groups {config.num_hidden_groups}")

    @property
    def brightmart(self):
        return self.config.ln_type is not None

    @property
    def block_names(self):
        if self.brightmart:
            return BERT_BLOCK_NAMES
        return dict(query="attention_1/self/query", key="attention_1/self/key",
                    value="attention_1/self/value",
                    attention_output="attention_1/output/dense", attention_norm="LayerNorm",
                    intermediate="ffn_1/intermediate/dense",
                    output="ffn_1/intermediate/output/dense", feed_forward_norm="LayerNorm_1")

    @property
    def num_blocks(self):
        return self.config.num_hidden_groups * self.config.inner_group_num

    def layer_blocks(self, layer):
        c = self.config
        group = layer * c.num_hidden_groups // c.num_hidden_layers
        return [group * c.inner_group_num + k for k in range(c.inner_group_num)]

    def block_layer_prefix(self, index):
        return "Transformer-" if self.num_blocks == 1 else f"Transformer-{index}-"

    def block_name_prefix(self, index):
        if self.brightmart:
            return "bert/encoder/layer_shared/"
        group, inner = divmod(index, self.config.inner_group_num)
        return f"bert/encoder/transformer/group_{group}/inner_group_{inner}/"

    def embedding_layers_width(self):
        return self.config.hidden_size if self.brightmart else self.config.embedding_width

    def _token_projection(self):
        if not self.brightmart:
            return None
        return TiedProjection(self.config.hidden_size, kernel_initializer=self._initializer(),
                              name="Embedding-Token-Projection", dtype=self.dtype)

    def needs_embedding_mapping(self):
        return not self.brightmart  # Hugging Face always maps, even when E == H

    def embedding_mapping_name(self):
        return "bert/encoder/embedding_hidden_mapping_in"

    def mlm_width(self):
        return self.config.hidden_size if self.brightmart else self.config.embedding_width

    def _embedding_variables(self):
        pairs = super()._embedding_variables()
        if self.brightmart:
            pairs.append(("bert/embeddings/word_embeddings_2", self.token_projection.kernel,
                          "plain"))
        return pairs


class ALBERTUnshared(ALBERT):
    """ALBERT weights with one block per layer, each starting from its group's
    weights (bert4keras's ``albert_unshared``): fine-tuning then moves them apart.
    The official format has one weight set per group, so writing it back needs
    the layers of a group to be equal."""

    family = "albert_unshared"

    @property
    def num_blocks(self):
        return self.config.num_hidden_layers * self.config.inner_group_num

    def layer_blocks(self, layer):
        inner = self.config.inner_group_num
        return [layer * inner + k for k in range(inner)]

    def block_layer_prefix(self, index):
        return f"Transformer-{index}-"

    def block_name_prefix(self, index):
        layer, inner = divmod(index, self.config.inner_group_num)
        shared = ALBERT.layer_blocks(self, layer)[inner]
        return super().block_name_prefix(shared)


class ELECTRA(Transformer):
    """ELECTRA: the discriminator (``with_discriminator``) or the generator (``with_mlm``).

    Embeddings of width ``embedding_size`` are mapped to ``hidden_size`` by
    ``embeddings_project`` when the two differ. The discriminator head is
    ``Dense(H, hidden_act)`` then ``Dense(1)`` (a sigmoid gives the probability
    that a token was replaced; ``"linear"`` gives the logit). With ``with_mlm``
    the model is the generator: give the generator's config; in Google's
    checkpoint its encoder is under ``generator/`` and it shares
    ``electra/embeddings``; its MLM head uses the exact (erf) GELU.
    """

    family = "electra"
    model_types = ("electra",)
    factorised = True
    heads = ("mlm", "discriminator")
    hf_renames = (("^generator/embeddings_project", "electra/embeddings_project"),
                  ("^generator/encoder/", "electra/encoder/"),
                  ("^discriminator_predictions/dense_1/",
                   "discriminator_predictions/dense_prediction/"))
    hf_special = {"generator_predictions/output_bias": ["generator_lm_head.bias"]}

    def _check_heads(self):
        super()._check_heads()
        if self.with_mlm and self.with_discriminator:
            raise ValueError("an ELECTRA model is the generator (with_mlm) or the "
                             "discriminator (with_discriminator), not both")

    @property
    def encoder_prefix(self):
        return "generator" if self.with_mlm else "electra"

    def block_name_prefix(self, index):
        return f"{self.encoder_prefix}/encoder/layer_{index}/"

    def embedding_mapping_name(self):
        return f"{self.encoder_prefix}/embeddings_project"

    prefix = "electra"

    def mlm_hidden_act(self):
        return "gelu"

    def _head_variables(self):
        pairs = []
        if self.mlm_dense is not None:
            pairs += dense_pairs("generator_predictions/dense", self.mlm_dense)
            pairs += norm_pairs("generator_predictions/LayerNorm", self.mlm_norm)
            pairs.append(("generator_predictions/output_bias", self.mlm_bias.bias, "vocab"))
        if self.discriminator_dense is not None:
            pairs += dense_pairs("discriminator_predictions/dense", self.discriminator_dense)
            pairs += dense_pairs("discriminator_predictions/dense_1",
                                  self.discriminator_output)
        return pairs


class RoFormer(Transformer):
    """RoFormer: Zhuiyi's RoFormer and Hugging Face ``RoFormerForMaskedLM``.

    BERT without the position table: every attention layer rotates its queries
    and keys by their absolute positions (interleaved pairs, ``theta_m =
    10000^(-2m/d)``; see ``bert4x.layers.RotaryPositionEncoding``), so attention
    scores depend on relative positions; values are not rotated. Official names
    are BERT's minus ``bert/embeddings/position_embeddings``; Hugging Face's are
    ``roformer.*`` and ``cls.predictions.*``. When ``embedding_size`` differs from
    ``hidden_size`` the embeddings go through ``embeddings_project``
    (``bert/embeddings_project`` in the official layout, which Hugging Face's
    converter renames to ``roformer.embeddings_project``). Hugging Face's frozen
    sinusoid table (``embed_positions``) is never loaded: it is recomputed.
    ``max_position_embeddings`` sizes nothing. A decoding cache holds keys already
    rotated; each new token is rotated at its absolute position.

    Example:
        >>> roformer = build_transformer_model(  # doctest: +SKIP
        ...     "chinese_roformer_L-12_H-768_A-12/bert_config.json",
        ...     "chinese_roformer_L-12_H-768_A-12/bert_model.ckpt", model="roformer")
    """

    family = "roformer"
    model_types = ("roformer",)
    absolute_positions = False
    factorised = True
    hf_renames = (("^bert/", "roformer/"),)

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        if config.rotary_value:
            raise NotImplementedError("rotary_value=true (rotating the values too) is not "
                                      "supported; RoFormer's checkpoints leave it false")
        if config.head_size % 2:
            raise ValueError(f"rotary positions rotate pairs of dimensions: the head size "
                             f"hidden_size / num_attention_heads = {config.head_size} must "
                             f"be even")

    def position_encoding(self):
        return RotaryPositionEncoding()

    def embedding_mapping_name(self):
        return "bert/embeddings_project"


class NEZHA(Transformer):
    """NEZHA (Huawei): BERT with functional relative positions on keys and values.

    No position table: with ``K = max_relative_position`` (64) each attention
    layer adds ``a_ij = T[clip(j - i, -K, K) + K]`` of a fixed sinusoid table to
    the keys in the scores and to the values in the context (see
    ``bert4x.layers.RelativePositionEncoding``). Official names are BERT's minus
    ``bert/embeddings/position_embeddings``; files of the Hugging Face port use
    ``nezha.*`` and ``cls.*``. A decoding cache holds raw keys and values; each
    step pairs the new token's absolute position with every cached key's.

    Example:
        >>> nezha = build_transformer_model(  # doctest: +SKIP
        ...     "nezha_base/bert_config.json", "nezha_base/model.ckpt", model="nezha")
    """

    family = "nezha"
    model_types = ("nezha",)
    absolute_positions = False
    hf_renames = (("^bert/", "nezha/"),)

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        if config.use_relative_position is False:
            raise ValueError("use_relative_position is false: NEZHA without relative "
                             "positions has no position information at all")

    def position_encoding(self):
        return RelativePositionEncoding(self.config.max_relative_position or 64)


MODELS = {family.family: family for family in (BERT, RoBERTa, ALBERT, ALBERTUnshared,
                                               ELECTRA, RoFormer, NEZHA)}


def family_of(model_type):
    """The ``model=`` name for a Hugging Face ``model_type``."""
    for name, family in MODELS.items():
        if model_type in family.model_types[:1]:
            return name
    return model_type
