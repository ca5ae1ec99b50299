"""BERT: Google's BERT, and the names the families in its layout share."""

from bert4x.transformer import Transformer

#: Official names of a BERT block's weights under its prefix (``bert/encoder/layer_i/``).
BERT_BLOCK_NAMES = dict(
    query="attention/self/query", key="attention/self/key", value="attention/self/value",
    attention_output="attention/output/dense", attention_norm="attention/output/LayerNorm",
    intermediate="intermediate/dense", output="output/dense",
    feed_forward_norm="output/LayerNorm")

#: Hugging Face names of BERT's MLM output bias and NSP head (``cls.*``), which the
#: generic rule does not give.
BERT_HF_SPECIAL = {
    "cls/predictions/output_bias": ["cls.predictions.bias", "cls.predictions.decoder.bias"],
    "cls/seq_relationship/output_weights": ["cls.seq_relationship.weight"],
    "cls/seq_relationship/output_bias": ["cls.seq_relationship.bias"]}

#: Buffers of position and segment ids that Hugging Face files keep beside the
#: embeddings: no weights.
HF_EMBEDDING_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


class BERT(Transformer):
    """Google's BERT (and every checkpoint in its name layout).

    Example:
        >>> from bert4x.configs import BertConfig
        >>> config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
        ...                     num_attention_heads=2, intermediate_size=48)
        >>> BERT(config, with_mlm=True).hugging_face_names("cls/predictions/output_bias")
        (['cls.predictions.bias', 'cls.predictions.decoder.bias'], False)
    """

    family = "bert"
    model_types = ("bert",)
    block_names = BERT_BLOCK_NAMES
    hf_special = BERT_HF_SPECIAL
    hf_prefix = "bert"
    # The MLM decoder's weight is a tied copy of the word embeddings.
    hf_ignored = HF_EMBEDDING_BUFFERS + ("predictions.decoder.weight",)
