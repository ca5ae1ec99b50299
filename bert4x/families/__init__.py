"""The model families bert4x ships, one module each; importing this package registers them.

Each family is a small subclass of :class:`bert4x.transformer.Transformer` that
declares what it changes in the core (see ``docs/model.md``, "Model families");
defining the class adds it to :data:`bert4x.registry.MODELS`, which maps the
``model=`` names of ``build_transformer_model`` to the classes. A new family is
one module here (and its tests) plus its import line below.

Example:
    >>> from bert4x.families import MODELS, NEZHA
    >>> MODELS["nezha"] is NEZHA
    True
"""

from bert4x.families.bert import BERT, BERT_BLOCK_NAMES, BERT_HF_SPECIAL, HF_EMBEDDING_BUFFERS
from bert4x.families.roberta import RoBERTa
from bert4x.families.albert import ALBERT, ALBERTUnshared
from bert4x.families.electra import ELECTRA
from bert4x.families.roformer import RoFormer
from bert4x.families.nezha import NEZHA
from bert4x.families.roformer_v2 import RoFormerV2
from bert4x.families.gpt import GPT
from bert4x.families.gpt2 import GPT2
from bert4x.families.gpt2_ml import GPT2ML
from bert4x.families.t5 import MT5_1_1, T5, T5_1_0, T5_1_1, T5Config
from bert4x.registry import MODELS, family_of

__all__ = ["BERT", "RoBERTa", "ALBERT", "ALBERTUnshared", "ELECTRA", "RoFormer", "NEZHA",
           "RoFormerV2", "GPT", "GPT2", "GPT2ML", "T5", "T5_1_0", "T5_1_1",
           "MT5_1_1", "T5Config", "MODELS", "family_of", "BERT_BLOCK_NAMES",
           "BERT_HF_SPECIAL",
           "HF_EMBEDDING_BUFFERS"]
