"""RoFormer-V2: RoFormer without biases, with scale-free RMS norms and a bare MLM head."""

import keras
from keras import ops

from bert4x.families.roformer import RoFormer
from bert4x.layers import Dropout, FanTruncatedNormal
from bert4x.transformer import dense_pairs


class RoFormerV2(RoFormer):
    """RoFormer-V2 (Zhuiyi), as bert4keras's ``RoFormerV2`` builds it.

    RoFormer's rotary attention, simplified: no Dense layer has a bias, and every
    norm is an RMS norm without gamma or beta, ``x / sqrt(mean(x^2) + eps)``. The
    embeddings are ``E_token[x] + E_segment[s]``, then dropout, then the norm (then
    ``Embedding-Mapping`` to ``hidden_size`` when ``embedding_size`` differs). The
    MLM head has no transform and no output bias: ``Output-Mapping`` back to
    ``embedding_size`` when it differs from ``hidden_size``, dropout, then the
    logits ``h E_token^T``. It has no pooler and no NSP head. New weights are drawn
    by :class:`bert4x.layers.FanTruncatedNormal` with gain ``num_hidden_layers **
    -0.5``, as bert4keras draws them.

    Official names are bert4keras's: BERT's without the biases, the LayerNorms and
    ``bert/embeddings/position_embeddings``; with E != H the embedding mapping is
    ``bert/encoder/embedding_hidden_mapping_in/kernel``. bert4keras has no name for
    ``Output-Mapping`` (it neither loads nor saves it): bert4x calls it
    ``cls/predictions/output_mapping/kernel``, a head weight that a checkpoint may
    lack with ``allow_missing_heads=True``.

    Example:
        >>> roformer_v2 = build_transformer_model(  # doctest: +SKIP
        ...     "chinese_roformer-v2-char_L-12_H-768_A-12/bert_config.json",
        ...     "chinese_roformer-v2-char_L-12_H-768_A-12/bert_model.ckpt",
        ...     model="roformer_v2", with_mlm=True)
    """

    family = "roformer_v2"
    model_types = ()  # transformers has no RoFormer-V2
    heads = ("mlm",)
    dense_bias = False
    norm_options = dict(zero_mean=False, scale=False, offset=False)
    embedding_dropout_before_norm = True

    def _initializer(self):
        return FanTruncatedNormal(gain=self.config.num_hidden_layers ** -0.5)

    def embedding_mapping_name(self):
        return "bert/encoder/embedding_hidden_mapping_in"

    def _create_mlm_head(self):
        c = self.config
        self.output_mapping = None
        if c.embedding_width != c.hidden_size:
            self.output_mapping = self._dense(c.embedding_width, "Output-Mapping",
                                              use_bias=False)
        self.mlm_dropout = Dropout(c.hidden_dropout_prob, name="Output-MLM-Dropout",
                                   dtype=self.dtype)
        self.mlm_activation = keras.layers.Activation(
            self.mlm_output_activation(), name="Output-MLM-Activation", dtype="float32")

    def mlm_logits(self, x, condition=None):
        """The MLM head: ``Output-Mapping`` (E != H), dropout, the tied embeddings."""
        if self.output_mapping is not None:
            x = self.output_mapping(x)
        x = self.mlm_dropout(x)
        # float32 logits, as the other families' MLM-Bias gives them
        return ops.cast(self.token_embedding(x, reverse=True), "float32")

    def _head_variables(self):
        pairs = super()._head_variables()
        if self.with_mlm and self.output_mapping is not None:
            pairs += dense_pairs(self.mlm_prefix() + "output_mapping", self.output_mapping)
        return pairs
