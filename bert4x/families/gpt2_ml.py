"""GPT2-ML (imcaspar/gpt2-ml): bert4keras's ``gpt2_ml``."""

from bert4x.families.gpt2 import GPT2Config
from bert4x.transformer import Transformer, norm_pairs

#: Official names of a GPT2-ML block's weights under ``newslm/layerNN/``.
GPT2_ML_BLOCK_NAMES = dict(
    query="query_layer", key="key_layer", value="value_layer",
    attention_output="context_projection_layer",
    feed_forward_input_norm="LayerNorm_mlp_ln0", intermediate="intermediate",
    output="output", feed_forward_norm="LayerNorm_mlp_ln1")


class GPT2ML(Transformer):
    """GPT2-ML: a GPT in its own block order, bert4keras's ``gpt2_ml``.

    The sum of token and position embeddings is normalised; each block then
    computes ``a = h + Attention(h)`` (no norm around the attention) and ``h =
    LayerNorm_1(a + FeedForward(LayerNorm_0(a)))``, under a causal mask; the LM
    head is the tied token embeddings alone. The model takes token ids only.
    Official names (the released TF checkpoint's): ``newslm/embeddings/word_embed``,
    ``pos_embed``, ``LayerNorm_embed_norm``, and under ``newslm/layer00/``
    ``{query,key,value}_layer``, ``context_projection_layer``,
    ``LayerNorm_mlp_ln0``, ``intermediate``, ``output``, ``LayerNorm_mlp_ln1``.
    LayerNorm epsilon 1e-5 unless the config says otherwise.

    Example:
        >>> gpt2_ml = build_transformer_model(  # doctest: +SKIP
        ...     "gpt2_ml/config.json", "gpt2_ml/model.ckpt-100000", model="gpt2_ml")
        >>> probabilities = gpt2_ml.predict(token_ids)  # [batch, L, vocab]
    """

    family = "gpt2_ml"
    config_class = GPT2Config
    applications = ("lm",)
    heads = ("mlm",)
    segment_embeddings = False
    mlm_transform = False
    prefix = "newslm"
    block_names = GPT2_ML_BLOCK_NAMES
    block_norms = ("feed_forward_input_norm", "feed_forward_norm")

    def block_name_prefix(self, index):
        return f"{self.prefix}/layer{index:02d}/"

    def _embedding_variables(self):
        p = f"{self.prefix}/embeddings/"
        return ([(p + "word_embed", self.token_embedding.embeddings, "vocab"),
                 (p + "pos_embed", self.position_embedding.embeddings, "plain")]
                + norm_pairs(p + "LayerNorm_embed_norm", self.embedding_norm))
