"""ELECTRA: the discriminator, or the generator, of Google's ELECTRA."""

from bert4x.families.bert import BERT_BLOCK_NAMES, HF_EMBEDDING_BUFFERS
from bert4x.transformer import EMBEDDING_SIZE, Transformer, dense_pairs, norm_pairs


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
    config_fields = {"embedding_size": EMBEDDING_SIZE}
    heads = ("mlm", "discriminator")
    block_names = BERT_BLOCK_NAMES
    hf_prefix = "electra"
    # The generator's MLM decoder weight is a tied copy of the word embeddings.
    hf_ignored = HF_EMBEDDING_BUFFERS + ("generator_lm_head.weight",)
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
