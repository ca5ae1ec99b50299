"""Model configuration: read Google ``bert_config.json`` or Hugging Face ``config.json``.

One dataclass holds the fields of every family (BERT, RoBERTa, ALBERT, ELECTRA,
...); the family (:mod:`bert4x.families`) checks the fields that change its
architecture and refuses values it cannot honour.
"""

import dataclasses
import json
import math
import numbers
import typing
import warnings

from bert4x import storage

# Hugging Face and Google configs carry fields that do not change the encoder
# bert4x builds (bookkeeping, generation flags, Google's unused pooler fields).
_INFORMATIONAL_KEYS = {
    "architectures", "torch_dtype", "dtype", "transformers_version",
    "bos_token_id", "eos_token_id", "use_cache", "classifier_dropout",
    "gradient_checkpointing", "directionality", "pooler_fc_size",
    "pooler_num_attention_heads", "pooler_num_fc_layers", "pooler_size_per_head",
    "pooler_type", "output_past", "is_decoder", "add_cross_attention",
    "chunk_size_feed_forward", "tie_word_embeddings", "id2label", "label2id",
    "_name_or_path", "problem_type", "output_attentions", "output_hidden_states",
    "return_dict", "finetuning_task", "tokenizer_class", "prefix", "task_specific_params",
    "num_labels", "torchscript", "use_bfloat16", "pruned_heads",
    # Hugging Face ALBERT/ELECTRA/GPT heads bert4x does not build (sequence summaries).
    "classifier_dropout_prob", "summary_type", "summary_use_proj", "summary_activation",
    "summary_last_dropout", "summary_proj_to_labels", "summary_first_dropout",
}

# Fields of Google's ALBERT configs that would change the model if they left
# these values (they never do in the released checkpoints): refused otherwise.
_NEUTRAL_VALUES = {"down_scale_factor": 1, "gap_size": 0, "net_structure_type": 0,
                   "num_memory_blocks": 0, "layers_to_keep": []}
_POSITIVE_INTEGERS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "intermediate_size", "max_position_embeddings")
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
    positive integers (``type_vocab_size`` may be 0: no segment embeddings; the
    model still takes segment ids, which then only drive a UniLM mask), the dropout probabilities are numbers in ``[0, 1)``,
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

    #: Other names of fields in config files (e.g. Hugging Face's ``n_embd`` for
    #: ``hidden_size``): ``{"name in the file": "field"}``. A family whose configs have
    #: other names or fields of their own declares a subclass (its ``config_class``).
    aliases: typing.ClassVar[dict] = {}
    #: Keys of the family's config files that bert4x builds at one value only
    #: (``{"scale_attn_weights": True}``): another value is refused, the key dropped.
    fixed_values: typing.ClassVar[dict] = {}
    #: Keys of the family's config files that change nothing bert4x builds (heads it
    #: does not build, numerics it always uses): dropped without a warning.
    ignored_keys: typing.ClassVar[frozenset] = frozenset()
    #: Fields of a family's config files that do not change the model bert4x builds
    #: (ignored silently, as Hugging Face's bookkeeping fields are).
    informational: typing.ClassVar[frozenset] = frozenset()

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
    # Fields of the other families: the family that owns one declares it
    # (``config_fields`` in ``bert4x.families``) and refuses values it cannot build;
    # the other families refuse it unless it is neutral.
    embedding_size: int = None  # ALBERT, ELECTRA: None means hidden_size
    pad_token_id: int = 0  # RoBERTa (fairseq): 1
    model_type: str = None  # Hugging Face family name ("bert", "roberta", ...)
    position_embedding_type: str = "absolute"
    num_hidden_groups: int = 1  # ALBERT: groups of shared layers
    inner_group_num: int = 1  # ALBERT: blocks per group
    ln_type: str = None  # brightmart albert_zh: "postln" (its name layout)
    use_relative_position: bool = None  # NEZHA: true (relative positions, no table)
    max_relative_position: int = None  # NEZHA: K of clip(j - i, -K, K); None = 64
    rotary_value: bool = None  # RoFormer (Hugging Face): rotate values too
    # The bert4x family (``model=`` name) the config was saved from; save_checkpoint
    # writes it so that an export reloads without ``model=``.
    family: str = None

    def __post_init__(self):
        for name in _POSITIVE_INTEGERS:
            value = getattr(self, name)
            if not _is_integer(value) or value < 1:
                raise ValueError(f"config field {name} must be a positive integer, got {value!r}")
        if not _is_integer(self.type_vocab_size) or self.type_vocab_size < 0:
            raise ValueError(f"config field type_vocab_size must be an integer >= 0 (0: no "
                             f"segment embeddings), got {self.type_vocab_size!r}")
        for name in ("embedding_size", "num_hidden_groups", "inner_group_num",
                     "max_relative_position"):
            value = getattr(self, name)
            if value is not None and (not _is_integer(value) or value < 1):
                raise ValueError(f"config field {name} must be a positive integer, got {value!r}")
        if self.family is not None and not isinstance(self.family, str):
            raise ValueError(f"config field family must be a model name such as 'bert', "
                             f"got {self.family!r}")
        for name in ("use_relative_position", "rotary_value"):
            if not any(getattr(self, name) is value for value in (None, True, False)):
                raise ValueError(f"config field {name} must be true or false, got "
                                 f"{getattr(self, name)!r}")
        if not _is_integer(self.pad_token_id) or not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"config field pad_token_id must be an id below vocab_size "
                             f"{self.vocab_size}, got {self.pad_token_id!r}")
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
        self._check_head_size()

    def _check_head_size(self):
        """The head size is ``hidden_size / num_attention_heads``: it must divide."""
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

    @property
    def embedding_width(self):
        """Width of the embeddings: ``embedding_size``, or ``hidden_size`` if unset."""
        return self.embedding_size or self.hidden_size

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
        values = cls.apply_aliases(values, source)
        for key, neutral in {**_NEUTRAL_VALUES, **cls.fixed_values}.items():
            if values.pop(key, neutral) != neutral:
                raise NotImplementedError(f"{source}: {key}={neutral!r} is the only value "
                                          "bert4x builds")
        for key in ("embedding_size", "pad_token_id", "model_type", "ln_type",
                    "use_relative_position", "max_relative_position", "rotary_value",
                    "family"):
            if key in values and values[key] is None:
                del values[key]
        known = set(cls.field_names())
        unknown = sorted(set(values) - known - _INFORMATIONAL_KEYS - cls.ignored_keys
                         - cls.informational)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown config fields {unknown}", stacklevel=3)
        if "vocab_size" not in values:
            raise ValueError(f"{source}: the config has no vocab_size")
        return cls(**{key: values[key] for key in known if key in values})

    @classmethod
    def apply_aliases(cls, values, source="config"):
        """A copy of ``values`` with the names of :attr:`aliases` renamed to fields.

        Raises:
            ValueError: the values hold a field under both names, with two values.
        """
        values = dict(values)
        for alias, field in cls.aliases.items():
            if alias not in values:
                continue
            value = values.pop(alias)
            if field in values and values[field] != value:
                raise ValueError(f"{source}: {alias}={value!r} and {field}={values[field]!r} "
                                 f"name the same field with two values")
            values[field] = value
        return values

    @classmethod
    def from_json(cls, path):
        """Read a Google ``bert_config.json`` or a Hugging Face ``config.json``."""
        return cls.from_dict(read_config_file(path), source=path)

    def replace(self, **overrides):
        """A copy with some fields changed; an unknown field is an error."""
        unknown = sorted(set(overrides) - set(self.field_names()))
        if unknown:
            raise TypeError(
                f"unknown config fields {unknown}; known fields: {self.field_names()}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self):
        """The fields as a dict, leaving out family fields that are unset."""
        return {key: value for key, value in dataclasses.asdict(self).items()
                if value is not None}


def read_config_file(path):
    """The JSON object of a config file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not UTF-8 text, not JSON, or not a JSON object.
    """
    storage.check_readable(path, "config file")
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
    return values
