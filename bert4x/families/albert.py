"""ALBERT: factorised embeddings and layers that share their weights, and
``albert_unshared`` (one weight set per layer, each starting from its group's)."""

from bert4x.families.bert import BERT_BLOCK_NAMES, HF_EMBEDDING_BUFFERS
from bert4x.layers import TiedProjection
from bert4x.registry import ConfigField
from bert4x.transformer import EMBEDDING_SIZE, Transformer

# The fields of ALBERT's shared layers; 1 and 1 is BERT (one block per layer).
SHARED_LAYERS = {
    "num_hidden_groups": ConfigField(neutral=(1,), meaning="ALBERT's groups of shared layers"),
    "inner_group_num": ConfigField(neutral=(1,), meaning="blocks per group of ALBERT's "
                                                         "shared layers")}


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
    config_fields = {"embedding_size": EMBEDDING_SIZE, **SHARED_LAYERS,
                     "ln_type": ConfigField(neutral=(None,),
                                            meaning="brightmart's albert_zh layout")}
    hf_prefix = "albert"
    # The MLM decoder's weight is a tied copy of the word embeddings.
    hf_ignored = HF_EMBEDDING_BUFFERS + ("predictions.decoder.weight",)
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
    # brightmart's albert_zh layout (ln_type) builds as ALBERT only.
    config_fields = {"embedding_size": EMBEDDING_SIZE, **SHARED_LAYERS}
    same_weights_as = ("albert",)

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
