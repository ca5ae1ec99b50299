"""GPT-2: bert4keras's ``gpt2`` (CPM-LM) and Hugging Face ``gpt2``."""

import dataclasses
import typing

from bert4x.configs import BertConfig
from bert4x.families.gpt import (GPT, HF_GPT_ALIASES, HF_GPT_ATTENTION_RENAMES,
                                 HF_GPT_FEED_FORWARD_RENAMES, HF_GPT_FUSED, HF_GPT_IGNORED,
                                 hugging_face_gpt_values)

#: Official names of a GPT-2 block's weights (bert4keras's ``gpt2``): BERT's, with
#: the two norms, which read the sub-blocks' inputs, named ``.../input/LayerNorm``.
GPT2_BLOCK_NAMES = dict(
    query="attention/self/query", key="attention/self/key", value="attention/self/value",
    attention_output="attention/output/dense",
    attention_input_norm="attention/input/LayerNorm", intermediate="intermediate/dense",
    output="output/dense", feed_forward_input_norm="input/LayerNorm")


@dataclasses.dataclass
class GPT2Config(BertConfig):
    """The config of a ``gpt2`` or ``gpt2_ml`` model: BERT's fields (CPM-LM's and
    GPT2-ML's files), or Hugging Face ``gpt2``'s.

    No segment table (``type_vocab_size`` 0) and LayerNorm epsilon 1e-5 unless the
    file says otherwise. A Hugging Face file's ``n_inner`` null means
    ``4 * n_embd``; ``scale_attn_weights`` must be true and
    ``scale_attn_by_inverse_layer_idx`` false (the only attention bert4x builds);
    ``reorder_and_upcast_attn`` changes nothing here (scores are float32 anyway).

    Example:
        >>> config = GPT2Config.from_dict({"model_type": "gpt2", "vocab_size": 50,
        ...                                "n_embd": 12, "n_head": 3, "n_inner": None})
        >>> config.intermediate_size, config.layer_norm_eps
        (48, 1e-05)
    """

    aliases: typing.ClassVar[dict] = dict(HF_GPT_ALIASES, activation_function="hidden_act")
    fixed_values: typing.ClassVar[dict] = {"scale_attn_weights": True,
                                           "scale_attn_by_inverse_layer_idx": False,
                                           "add_cross_attention": False}
    ignored_keys: typing.ClassVar[frozenset] = frozenset({"reorder_and_upcast_attn",
                                                          "n_ctx"})

    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_dict(cls, values, source="config"):
        if values.get("model_type") == "gpt2":
            values = hugging_face_gpt_values(values, source)
        return super().from_dict(values, source)


class GPT2(GPT):
    """GPT-2: bert4keras's ``gpt2`` (CPM-LM) and Hugging Face ``GPT2LMHeadModel``.

    Pre-norm blocks (``h = h + Attention(LayerNorm(h))``, ``h = h +
    FeedForward(LayerNorm(h))``) under a causal mask, a final LayerNorm, the sum
    of token and position embeddings (no segments, no norm) and the tied LM head.
    The model takes token ids only. Official names are bert4keras's: GPT's
    (``gpt/embeddings/...``, ``gpt/transformer/layer_i/...``) with the block norms
    at ``attention/input/LayerNorm`` and ``input/LayerNorm`` and the final norm at
    ``gpt/output/LayerNorm``. Hugging Face files: ``transformer.wte``, ``wpe``,
    ``h.i.ln_1``, ``attn.c_attn`` (query, key and value fused), ``attn.c_proj``,
    ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``, ``ln_f``, kernels ``[in, out]``.

    Example:
        >>> gpt2 = build_transformer_model("gpt2/", return_keras_model=False)  # doctest: +SKIP
        >>> best = Decoder(gpt2, end_id=50256).beam_search([token_ids], beam_size=4)
    """

    family = "gpt2"
    model_types = ("gpt2",)
    config_class = GPT2Config
    applications = ("lm",)
    segment_embeddings = False
    block_names = GPT2_BLOCK_NAMES
    block_norms = ("attention_input_norm", "feed_forward_input_norm")
    final_norm = True
    # Pre-norm: ln_1 on the attention's input, ln_2 on the feed-forward's; ln_f last.
    hf_renames = (HF_GPT_ATTENTION_RENAMES + HF_GPT_FEED_FORWARD_RENAMES
                  + ((r"/attention/input/LayerNorm/", "/ln_1/"),
                     (r"/input/LayerNorm/", "/ln_2/"),
                     (r"^gpt/output/LayerNorm/", "transformer/ln_f/")))
    hf_special = {
        "gpt/embeddings/word_embeddings": ["transformer.wte.weight", "wte.weight"],
        "gpt/embeddings/position_embeddings": ["transformer.wpe.weight", "wpe.weight"]}
    hf_ignored = HF_GPT_IGNORED
    hf_fused = HF_GPT_FUSED

    def final_norm_name(self):
        return f"{self.prefix}/output/LayerNorm"
