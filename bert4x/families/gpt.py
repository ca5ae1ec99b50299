"""GPT: bert4keras's ``gpt`` (CDial-GPT) and Hugging Face ``openai-gpt``.

Also the pieces the GPT families share: Hugging Face's GPT config names and the
Hugging Face names of a GPT block (``Conv1D`` kernels ``[in, out]``, the query,
key and value fused in ``attn.c_attn``).
"""

import dataclasses
import typing

from bert4x.configs import BertConfig
from bert4x.families.bert import BERT_BLOCK_NAMES
from bert4x.transformer import Transformer

#: Hugging Face's names of GPT config fields (``OpenAIGPTConfig``, ``GPT2Config``).
HF_GPT_ALIASES = {
    "n_embd": "hidden_size", "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads", "n_positions": "max_position_embeddings",
    "layer_norm_epsilon": "layer_norm_eps", "resid_pdrop": "hidden_dropout_prob",
    "embd_pdrop": "hidden_dropout_prob", "attn_pdrop": "attention_probs_dropout_prob"}

#: The Hugging Face names of a GPT block's attention, from the official ones
#: (``gpt/transformer/layer_i/...``): the query, key and value are the parts of the
#: fused ``attn.c_attn`` (see ``hf_fused``).
HF_GPT_ATTENTION_RENAMES = (
    (r"^gpt/transformer/layer_(\d+)/", r"transformer/h/\1/"),
    (r"/attention/self/(query|key|value)/", r"/attn/c_attn/\1/"),
    (r"/attention/output/dense/", "/attn/c_proj/"))
#: ... and of its feed-forward (after the attention's: ``/output/dense/`` would also
#: match the attention's output).
HF_GPT_FEED_FORWARD_RENAMES = ((r"/intermediate/dense/", "/mlp/c_fc/"),
                               (r"/output/dense/", "/mlp/c_proj/"))

#: ``attn.c_attn`` ``[H, 3H]`` holds the query, key and value kernels side by side.
HF_GPT_FUSED = {"attn.c_attn": ("query", "key", "value")}

#: Names Hugging Face GPT files hold that are no weights: the tied LM head and the
#: causal-mask buffers of older files.
HF_GPT_IGNORED = ("lm_head.weight", ".attn.bias", ".attn.masked_bias", "position_ids")


def hugging_face_gpt_values(values, source):
    """A Hugging Face GPT config's values with what its file leaves implicit:
    ``n_inner`` null (or absent) means ``4 * n_embd``."""
    values = dict(values)
    inner = values.pop("n_inner", None)
    if inner is not None:
        values["intermediate_size"] = inner
    if values.get("intermediate_size") is None:
        hidden = values.get("n_embd", values.get("hidden_size", 768))
        if isinstance(hidden, bool) or not isinstance(hidden, int):
            raise ValueError(f"{source}: n_embd must be a positive integer, got {hidden!r}")
        values["intermediate_size"] = 4 * hidden
    return values


@dataclasses.dataclass
class GPTConfig(BertConfig):
    """The config of a ``gpt`` model: BERT's fields, or Hugging Face ``openai-gpt``'s.

    An ``openai-gpt`` file (``n_embd``, ``n_layer``, ``n_head``, ``n_positions``,
    ``afn``, ``layer_norm_epsilon``, ``resid_pdrop``/``embd_pdrop``,
    ``attn_pdrop``) means ``intermediate_size = 4 * n_embd``, no segment table and
    LayerNorm epsilon 1e-5 unless it says otherwise; its ``afn: "gelu"`` is the
    tanh approximation (Hugging Face's ``gelu_new``).

    Example:
        >>> GPTConfig.from_dict({"model_type": "openai-gpt", "vocab_size": 40,
        ...                      "n_embd": 12, "n_head": 3, "afn": "gelu"}).hidden_act
        'gelu_new'
    """

    aliases: typing.ClassVar[dict] = dict(HF_GPT_ALIASES, afn="hidden_act")
    fixed_values: typing.ClassVar[dict] = {"n_special": 0}
    ignored_keys: typing.ClassVar[frozenset] = frozenset({"predict_special_tokens"})

    @classmethod
    def from_dict(cls, values, source="config"):
        if values.get("model_type") == "openai-gpt":
            values = hugging_face_gpt_values(values, source)
            if values.get("afn") == "gelu":  # Hugging Face's ACT_FNS: the tanh form
                values["afn"] = "gelu_new"
            values.setdefault("type_vocab_size", 0)
            if "layer_norm_eps" not in values:
                values.setdefault("layer_norm_epsilon", 1e-5)
        return super().from_dict(values, source)


class GPT(Transformer):
    """GPT: bert4keras's ``gpt`` (CDial-GPT) and Hugging Face ``OpenAIGPTLMHeadModel``.

    BERT's post-norm blocks under a causal mask on the sum of the token, segment
    and position embeddings, with no LayerNorm over that sum; the LM head is the
    tied token embeddings alone (no transform, no bias). Official names are
    bert4keras's: ``gpt/embeddings/{word,token_type,position}_embeddings`` and
    BERT's block names under ``gpt/transformer/layer_i/``. The model takes token
    and segment ids, or token ids alone without a segment table
    (``type_vocab_size`` 0, as Hugging Face's ``openai-gpt`` configs give).
    Hugging Face files (``transformer.tokens_embed``, ``positions_embed``,
    ``h.i.attn.c_attn``, ``c_proj``, ``ln_1``, ``mlp.c_fc``, ``c_proj``,
    ``ln_2``) keep kernels ``[in, out]`` and fuse the query, key and value.

    Example:
        >>> gpt = build_transformer_model(  # doctest: +SKIP
        ...     "CDial-GPT_LCCC-base/config.json", "CDial-GPT_LCCC-base/model.ckpt",
        ...     model="gpt")
        >>> probabilities = gpt.predict([token_ids, segment_ids])  # [batch, L, vocab]
    """

    family = "gpt"
    model_types = ("openai-gpt",)
    config_class = GPTConfig
    applications = ("lm", "unilm")
    heads = ("mlm",)
    norm_embeddings = False
    mlm_transform = False
    prefix = "gpt"
    block_names = BERT_BLOCK_NAMES
    # Post-norm: ln_1 after the attention's sum, ln_2 after the feed-forward's.
    hf_renames = (HF_GPT_ATTENTION_RENAMES + ((r"/attention/output/LayerNorm/", "/ln_1/"),)
                  + HF_GPT_FEED_FORWARD_RENAMES + ((r"/output/LayerNorm/", "/ln_2/"),))
    hf_special = {
        "gpt/embeddings/word_embeddings": ["transformer.tokens_embed.weight",
                                           "tokens_embed.weight"],
        "gpt/embeddings/position_embeddings": ["transformer.positions_embed.weight",
                                               "positions_embed.weight"]}
    hf_prefix = "transformer"
    hf_ignored = HF_GPT_IGNORED
    hf_transposed_kernels = False
    hf_fused = HF_GPT_FUSED

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        if config.model_type == "openai-gpt" and config.type_vocab_size:
            raise ValueError(
                f"an openai-gpt config has no segment table (Hugging Face embeds token "
                f"types with the token table, which bert4x does not build): "
                f"type_vocab_size must be 0, got {config.type_vocab_size}")

    def takes_segment_ids(self):
        return self.config.type_vocab_size > 0

    def block_name_prefix(self, index):
        return f"{self.prefix}/transformer/layer_{index}/"
