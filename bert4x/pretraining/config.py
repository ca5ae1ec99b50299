"""The settings of a pretraining run, read from JSON and overridden by flags."""

import dataclasses
import json
import os

from bert4x import storage
from bert4x.configs import BertConfig

BUILTIN_CORPUS = "builtin:chinese_packages"


@dataclasses.dataclass
class PretrainingConfig:
    """Every setting of data preparation, training and export.

    Paths are relative to the working directory. ``model`` holds
    :class:`bert4x.configs.BertConfig` fields (``vocab_size`` comes from the
    vocabulary when omitted); ``model_config`` may name a ``bert_config.json``
    instead.

    ``mesh`` (``"data=D,model=M"``, JAX only) shapes the device mesh over the devices
    of all processes: ``model > 1`` splits the weights as
    :func:`bert4x.distribution.layout_map` says; unset, every device holds a replica.

    ``deterministic: true`` asks for bit-identical reruns and resumes: ``pretrain.py``
    then switches on TensorFlow's op determinism
    (``tf.config.experimental.enable_op_determinism()``). Library callers make that
    call themselves: it holds for the whole process and cannot be undone, so
    :class:`~bert4x.pretraining.trainer.Pretrainer` does not make it for them.

    Example:
        >>> config = PretrainingConfig.from_dict({"name": "demo", "vocab": "chinese",
        ...     "model": {"hidden_size": 32, "num_hidden_layers": 2,
        ...               "num_attention_heads": 2, "intermediate_size": 64}})
        >>> config.objective
        'mlm'
    """

    name: str = "bert"
    # vocabulary and model
    vocab: str = "chinese"
    do_lower_case: bool = True
    model: dict = dataclasses.field(default_factory=dict)
    model_config: str = None
    init_checkpoint: str = None
    vocab_trim_min_count: int = 0
    # corpus -> TFRecords
    inputs: list = dataclasses.field(default_factory=list)
    input_format: str = "auto"
    word_segmenter: str = "wordpiece"
    validation_fraction: float = 0.0
    shard_size: int = 10000
    num_workers: int = 0
    data_dir: str = None
    # objective and masking
    seq_length: int = 128
    objective: str = "mlm"
    mask_rate: float = 0.15
    max_predictions: int = None
    # training
    output_dir: str = None
    batch_size: int = 32
    accumulation_steps: int = 1
    train_steps: int = 1000
    warmup_steps: int = 100
    learning_rate: float = 1e-4
    end_learning_rate: float = 0.0
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    clip_norm: float = None
    mixed_precision: bool = False
    seed: int = 0
    shuffle_buffer: int = 10000
    deterministic: bool = False
    jit_compile: bool = False
    steps_per_loop: int = 1
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 50
    eval_batches: int = 50
    tpu: str = None
    backend: str = "tensorflow"
    mesh: str = None

    @classmethod
    def field_names(cls):
        return [field.name for field in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values, source="config"):
        """Build from a dict; an unknown key is an error that lists the known ones."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: a pretraining config must be a JSON object")
        values = {key: value for key, value in values.items() if not key.startswith("_")}
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"{source}: unknown config key(s) {unknown}; known keys: "
                             f"{cls.field_names()}")
        config = cls(**values)
        config.validate(source)
        return config

    @classmethod
    def from_json(cls, path, **overrides):
        """Read a JSON config, then apply ``overrides`` (unknown ones are errors)."""
        storage.check_readable(path, "pretraining config")
        try:
            values = json.loads(storage.read_text(path))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a pretraining config must be a JSON object")
        values.update(overrides)
        return cls.from_dict(values, source=path)

    def replace(self, **overrides):
        """A copy with some settings changed (validated)."""
        return self.from_dict({**self.to_dict(), **overrides}, source="overrides")

    def to_dict(self):
        return dataclasses.asdict(self)

    def validate(self, source="config"):
        """Check values and the ``model`` keys.

        Raises:
            ValueError: naming the setting and what was expected.
        """
        self._check_types(source)
        known_model = BertConfig.field_names()
        if not isinstance(self.model, dict):
            raise ValueError(f"{source}: 'model' must be an object of BertConfig fields")
        unknown = sorted(set(self.model) - set(known_model))
        if unknown:
            raise ValueError(f"{source}: unknown model key(s) {unknown}; known model keys: "
                             f"{known_model}")
        checks = [
            (self.objective in ("mlm", "lm", "unilm"), "objective must be 'mlm', 'lm' or 'unilm'"),
            (self.optimizer in ("adamw", "lamb"), "optimizer must be 'adamw' or 'lamb'"),
            (self.backend in ("tensorflow", "jax"), "backend must be 'tensorflow' or 'jax'"),
            (not self.mesh or self.backend == "jax",
             "mesh (keras.distribution's device mesh) needs backend 'jax'"),
            (self.seq_length >= 4, "seq_length must be at least 4"),
            (self.batch_size >= 1, "batch_size must be positive"),
            (self.accumulation_steps >= 1, "accumulation_steps must be positive"),
            (self.train_steps >= 1, "train_steps must be positive"),
            (0 <= self.warmup_steps <= self.train_steps,
             "warmup_steps must be between 0 and train_steps"),
            (self.checkpoint_every >= 1, "checkpoint_every must be positive"),
            (self.steps_per_loop >= 1, "steps_per_loop must be positive"),
            (0 < self.mask_rate < 1, "mask_rate must be in (0, 1)"),
            (self.max_predictions is None or 1 <= self.max_predictions <= self.seq_length,
             "max_predictions must be between 1 and seq_length"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{source}: {message}")

    def _check_types(self, source):
        """Each setting holds its field's type (a number may be given for a float;
        ``None`` where the default is ``None``); a list holds paths or globs, so
        ``"inputs": "corpus/*.txt"`` is refused instead of read letter by letter."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and field.default is None:
                continue
            if field.type is list:
                ok = isinstance(value, list) and all(
                    isinstance(item, (str, os.PathLike)) for item in value)
                expected = "a list of paths or glob patterns"
            elif field.type is bool:
                ok, expected = isinstance(value, bool), "true or false"
            elif field.type is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
                expected = "an integer"
            elif field.type is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                expected = "a number"
            elif field.type is str:
                ok, expected = isinstance(value, (str, os.PathLike)), "a string"
            else:
                continue
            if not ok:
                raise ValueError(f"{source}: setting {field.name!r} must be {expected}, "
                                 f"got {value!r}")

    # ------------------------------------------------------------ resolved paths
    def vocab_path(self):
        """The vocabulary file (``"chinese"`` is Google's Chinese vocab from cn-clip)."""
        if self.vocab == "chinese":
            from bert4x.resources import chinese_vocab_path
            return chinese_vocab_path()
        if not storage.isfile(self.vocab):
            raise FileNotFoundError(f"vocabulary file not found: {self.vocab!r} "
                                    "(setting 'vocab')")
        return self.vocab

    def resolved_output_dir(self):
        return self.output_dir or storage.join("runs", self.name)

    def resolved_data_dir(self):
        return self.data_dir or storage.join(self.resolved_output_dir(), "data")

    def export_dir(self):
        return storage.join(self.resolved_output_dir(), "export")
