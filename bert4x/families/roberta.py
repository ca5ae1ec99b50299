"""RoBERTa: HFL's RoBERTa-wwm-ext (BERT's math and names) or fairseq's (Hugging Face)."""

from keras import ops

from bert4x import checkpoints
from bert4x.families.bert import BERT

_FAIRSEQ_RENAMES = (("^bert/", "roberta/"),
                    ("^cls/predictions/transform/dense", "lm_head/dense"),
                    ("^cls/predictions/transform/LayerNorm", "lm_head/layer_norm"))
_FAIRSEQ_SPECIAL = {"cls/predictions/output_bias": ["lm_head.bias", "lm_head.decoder.bias"]}


class RoBERTa(BERT):
    """RoBERTa: HFL's RoBERTa-wwm-ext (BERT math and names) or fairseq's (Hugging Face).

    A config whose ``model_type`` is ``"roberta"`` (Hugging Face ``RobertaConfig``)
    gets fairseq's positions: with ``P = pad_token_id`` (1) and ``m_t`` whether
    token ``t`` is not padding, ``position_t = P + m_t * cumsum(m)_t``, so the
    first real token is at ``P + 1``; its MLM head uses the exact (erf) GELU and
    its Hugging Face names are ``roberta.*`` and ``lm_head.*``. Any other config
    (HFL's ``bert_config.json``) builds a BERT, and BERT's exports build as RoBERTa.

    Example:
        >>> from bert4x.configs import BertConfig
        >>> config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
        ...                     num_attention_heads=2, intermediate_size=48,
        ...                     model_type="roberta", pad_token_id=1)
        >>> RoBERTa(config).max_positions  # 512 minus pad_token_id + 1
        510
    """

    family = "roberta"
    model_types = ("roberta", "bert")
    same_weights_as = ("bert",)
    # fairseq's MLM decoder weight is a tied copy of the word embeddings too.
    hf_ignored = BERT.hf_ignored + ("lm_head.decoder.weight",)

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
        return checkpoints.hugging_face_names(official_name, _FAIRSEQ_RENAMES,
                                              _FAIRSEQ_SPECIAL, "roberta")
