"""NEZHA (Huawei): BERT with functional relative positions on keys and values."""

from bert4x.families.bert import BERT_BLOCK_NAMES, BERT_HF_SPECIAL, HF_EMBEDDING_BUFFERS
from bert4x.layers import RelativePositionEncoding
from bert4x.registry import ConfigField
from bert4x.transformer import Transformer


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
    config_fields = {
        "use_relative_position": ConfigField(neutral=(None, False),
                                             meaning="NEZHA's relative positions"),
        "max_relative_position": ConfigField(neutral=(None,), meaning="the clipping "
                                             "distance of NEZHA's relative positions")}
    block_names = BERT_BLOCK_NAMES
    hf_renames = (("^bert/", "nezha/"),)
    hf_special = BERT_HF_SPECIAL
    hf_prefix = "nezha"
    hf_ignored = HF_EMBEDDING_BUFFERS + ("predictions.decoder.weight",)

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        if config.use_relative_position is False:
            raise ValueError("use_relative_position is false: NEZHA without relative "
                             "positions has no position information at all")

    def position_encoding(self):
        return RelativePositionEncoding(self.config.max_relative_position or 64)
