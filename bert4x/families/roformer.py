"""RoFormer: BERT with rotary positions in every attention layer, no position table."""

from bert4x.families.bert import BERT_BLOCK_NAMES, BERT_HF_SPECIAL, HF_EMBEDDING_BUFFERS
from bert4x.layers import RotaryPositionEncoding
from bert4x.registry import ConfigField
from bert4x.transformer import EMBEDDING_SIZE, Transformer


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
    config_fields = {"embedding_size": EMBEDDING_SIZE,
                     "rotary_value": ConfigField(neutral=(None, False),
                                                 meaning="RoFormer's rotation of the values")}
    block_names = BERT_BLOCK_NAMES
    hf_renames = (("^bert/", "roformer/"),)
    hf_special = BERT_HF_SPECIAL
    hf_prefix = "roformer"
    # The frozen sinusoid table is recomputed, never loaded.
    hf_ignored = HF_EMBEDDING_BUFFERS + ("predictions.decoder.weight",
                                         "encoder.embed_positions.weight")

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
