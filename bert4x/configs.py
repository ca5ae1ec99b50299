"""BERT configuration: read Google ``bert_config.json`` or Hugging Face ``config.json``."""

import dataclasses
import json
import math
import numbers
import warnings

from bert4x import storage

# Hugging Face and Google configs carry fields that do not change the encoder
# bert4x builds (bookkeeping, generation flags, Google's unused pooler fields).
_INFORMATIONAL_KEYS = {
    "architectures", "model_type", "torch_dtype", "dtype", "transformers_version",
    "pad_token_id", "bos_token_id", "eos_token_id", "use_cache", "classifier_dropout",
    "gradient_checkpointing", "directionality", "pooler_fc_size",
    "pooler_num_attention_heads", "pooler_num_fc_layers", "pooler_size_per_head",
    "pooler_type", "output_past", "is_decoder", "add_cross_attention",
    "chunk_size_feed_forward", "tie_word_embeddings", "id2label", "label2id",
    "_name_or_path", "problem_type", "output_attentions", "output_hidden_states",
    "return_dict", "finetuning_task", "tokenizer_class", "prefix", "task_specific_params",
    "num_labels", "torchscript", "use_bfloat16", "pruned_heads", "embedding_size",
}

_POSITIVE_INTEGERS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "intermediate_size", "max_position_embeddings", "type_vocab_size")
_PROBABILITIES = ("hidden_dropout_prob", "attention_probs_dropout_prob")
_POSITIVE_REALS = ("initializer_range", "layer_norm_eps")


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    """An int or float (NaN included: the range checks refuse it), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclasses.dataclass
class BertConfig:
    """Hyper-parameters of a BERT encoder (the fields of ``bert_config.json``).

    Every field is checked when the config is built: sizes and counts are
    positive integers, the dropout probabilities are numbers in ``[0, 1)``,
    ``initializer_range`` and ``layer_norm_eps`` are finite numbers above 0, and
    ``hidden_act`` is an activation name bert4x knows (``"gelu"``,
    ``"gelu_new"``, ``"relu"``, ...).

    Raises:
        ValueError: a field of the wrong type or out of range; the message names
            the field and the value.

    Example:
        >>> config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
        ...                     num_attention_heads=2, intermediate_size=64)
        >>> config.head_size
        16
    """

    vocab_size: int
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12

    def __post_init__(self):
        for name in _POSITIVE_INTEGERS:
            value = getattr(self, name)
            if not _is_integer(value) or value < 1:
                raise ValueError(f"config field {name} must be a positive integer, got {value!r}")
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if not _is_real(value) or not 0 <= value < 1:
                raise ValueError(f"config field {name} must be a number in [0, 1), "
                                 f"got {value!r}")
        for name in _POSITIVE_REALS:
            value = getattr(self, name)
            if not _is_real(value) or not 0 < value < math.inf:
                raise ValueError(f"config field {name} must be a finite number > 0, "
                                 f"got {value!r}")
        self._check_activation()
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}")

    def _check_activation(self):
        if not isinstance(self.hidden_act, str):
            raise ValueError(f"config field hidden_act must be an activation name such as "
                             f"'gelu', got {self.hidden_act!r}")
        from bert4x.layers import get_activation  # imports Keras, so only when needed
        try:
            get_activation(self.hidden_act)
        except ValueError as error:
            raise ValueError(f"config field hidden_act: {error}") from None

    @property
    def head_size(self):
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def field_names(cls):
        return [field.name for field in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values, source="config"):
        """Build from a dict, warning about unknown informational keys.

        Raises:
            ValueError: for a field bert4x cannot honour (e.g. a relative
                position scheme) or a missing ``vocab_size``.
        """
        values = dict(values)
        position_type = values.pop("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise NotImplementedError(
                f"{source}: position_embedding_type={position_type!r} is not supported; "
                "bert4x implements learned absolute positions only")
        known = set(cls.field_names())
        unknown = sorted(set(values) - known - _INFORMATIONAL_KEYS)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown config fields {unknown}", stacklevel=3)
        if "vocab_size" not in values:
            raise ValueError(f"{source}: the config has no vocab_size")
        return cls(**{key: values[key] for key in known if key in values})

    @classmethod
    def from_json(cls, path):
        """Read a Google ``bert_config.json`` or a Hugging Face ``config.json``."""
        if not storage.isfile(path):
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            with storage.open(path, encoding="utf-8") as file:
                values = json.load(file)
        except UnicodeDecodeError as error:
            raise ValueError(f"config file {path} is not UTF-8 text (is it the JSON config? "
                             f"{error})") from error
        except json.JSONDecodeError as error:
            raise ValueError(f"config file {path} is not valid JSON: {error}") from error
        if not isinstance(values, dict):
            raise ValueError(f"config file {path} must hold a JSON object")
        return cls.from_dict(values, source=path)

    def replace(self, **overrides):
        """A copy with some fields changed; an unknown field is an error."""
        unknown = sorted(set(overrides) - set(self.field_names()))
        if unknown:
            raise TypeError(
                f"unknown config fields {unknown}; known fields: {self.field_names()}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self):
        return dataclasses.asdict(self)
