"""BERT pretraining: corpus to TFRecords, dynamic whole-word masking, distributed
training with crash resume, and export to the official Google checkpoint format.

Entry points: ``python pretraining/make_data.py`` and ``python pretraining/pretrain.py``
(see ``pretraining/README.md``). For a ready small Chinese BERT call
:func:`ensure_pretrained`.

The submodules that need TensorFlow (``pipeline``, ``trainer``) are imported on use,
so ``import bert4x.pretraining`` stays light.
"""

import contextlib
import copy
import hashlib
import json
import os

from bert4x import storage
from bert4x.checkpoint_files import read_pointer

from bert4x.pretraining.config import BUILTIN_CORPUS, PretrainingConfig
from bert4x.pretraining.data import (load_dataset_summary, make_pretraining_data,
                                     read_documents, trimmed_vocabulary)
from bert4x.pretraining.distribute import make_strategy, select_strategy, strategy_kind

# The small real config (also written out as pretraining/configs/tiny_chinese.json;
# a test keeps the two equal). A 4-layer, hidden-128 Chinese BERT trained for about
# 10-16 minutes on 2 CPU cores over the Chinese text of PyPI packages: at this budget the
# smaller width learns as much per step as hidden 256 (held-out MLM accuracy 12.6% vs
# 12.9% after 1000 steps) at a third of the cost, and its fine-tuning is cheaper too.
TINY_CHINESE = {
    "name": "tiny_chinese",
    "vocab": "chinese",
    "do_lower_case": True,
    "vocab_trim_min_count": 1,
    "model": {
        "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
        "intermediate_size": 512, "hidden_act": "gelu", "max_position_embeddings": 512,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    },
    "inputs": [BUILTIN_CORPUS],
    "word_segmenter": "jieba",
    "validation_fraction": 0.01,
    "seq_length": 128,
    "objective": "mlm",
    "max_predictions": 32,
    "batch_size": 32,
    "train_steps": 1000,
    "warmup_steps": 100,
    "learning_rate": 1e-3,
    "weight_decay": 0.01,
    "optimizer": "adamw",
    "checkpoint_every": 250,
    "log_every": 50,
    "eval_batches": 0,
    "seed": 1,
}

BUILTIN_CONFIGS = {"tiny_chinese": TINY_CHINESE}

EXPORT_FILES = ("bert_config.json", "vocab.txt")


def default_cache_dir():
    """``$BERT4X_CACHE`` (read when called) or ``~/.cache/bert4x``."""
    return os.environ.get("BERT4X_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "bert4x")


def load_config(config_or_name, **overrides):
    """A :class:`PretrainingConfig` from a built-in name, a JSON path or a dict."""
    if isinstance(config_or_name, PretrainingConfig):
        return config_or_name.replace(**overrides) if overrides else config_or_name
    if isinstance(config_or_name, dict):
        return PretrainingConfig.from_dict({**copy.deepcopy(config_or_name), **overrides})
    if config_or_name in BUILTIN_CONFIGS:
        return PretrainingConfig.from_dict({**copy.deepcopy(BUILTIN_CONFIGS[config_or_name]),
                                            **overrides}, source=config_or_name)
    return PretrainingConfig.from_json(config_or_name, **overrides)


def is_exported(directory):
    """True when ``directory`` holds a complete export: config, vocabulary, and the
    weights its ``checkpoint`` pointer names (``bert_model.ckpt`` without one)."""
    if not all(storage.isfile(storage.join(directory, name)) for name in EXPORT_FILES):
        return False
    try:
        prefix = read_pointer(directory)[0]
    except FileExistsError:  # a pointer bert4x did not write
        prefix = None
    return storage.isfile(storage.join(directory, (prefix or "bert_model.ckpt") + ".index"))


def pretrained_dir(config="tiny_chinese", **overrides):
    """The run folder :func:`ensure_pretrained` uses by default for these settings:
    ``<cache>/pretrained/<name>-<digest of the settings>`` (its export is in
    ``export/``).

    Example:
        >>> pretrained_dir("tiny_chinese")  # doctest: +SKIP
        '/home/me/.cache/bert4x/pretrained/tiny_chinese-3f2a9c01d4'
    """
    config = load_config(config, **overrides)
    # Only the settings that differ from the defaults: a setting added in a later
    # version (at its default) leaves the folder, and the pretrained model in it, as is.
    defaults = PretrainingConfig().to_dict()
    settings = json.dumps({key: value for key, value in config.to_dict().items()
                           if value != defaults.get(key)}, sort_keys=True, default=str)
    digest = hashlib.sha256(settings.encode("utf-8")).hexdigest()[:10]
    return os.path.join(default_cache_dir(), "pretrained", f"{config.name}-{digest}")


def ensure_pretrained(config="tiny_chinese", output_dir=None, log=print, **overrides):
    """Return a folder with a pretrained BERT, pretraining it first if needed.

    The first call prepares the data and trains (about 5 minutes on 2 CPU cores for
    ``"tiny_chinese"``); a killed run resumes from its last checkpoint; later calls
    return at once. Runs on the TensorFlow backend.

    Several processes may call it together (demos, test workers): they take a lock
    file beside the run folder (``<output_dir>.lock``), so one trains while the
    others wait and then return its export. The export counts as finished once
    ``result.json`` is written (atomically, last), so a caller never gets a half
    written folder. Object stores (``gs://``) have no lock: there, start one
    process per ``output_dir`` (a second one would train into the same folder).

    Args:
        config: a built-in name (``"tiny_chinese"``), a JSON config path, a dict
            or a :class:`PretrainingConfig`.
        output_dir: the run folder (default ``<cache>/pretrained/<name>-<digest>``,
            see :func:`default_cache_dir`; the digest of the settings keeps a model
            pretrained under other settings from being returned).
        log: progress-line callable (``None`` for silence).
        **overrides: config settings to change.

    Returns:
        The export folder, holding ``bert_config.json``, the checkpoint and the
        (trimmed) ``vocab.txt``: pass it to
        ``build_transformer_model(folder, folder, ...)`` and
        ``Tokenizer(os.path.join(folder, "vocab.txt"), do_lower_case=True)``.

    Example:
        >>> folder = ensure_pretrained("tiny_chinese")  # doctest: +SKIP
        >>> model = build_transformer_model(folder, folder, with_mlm=True)  # doctest: +SKIP
    """
    log = log or (lambda line: None)
    config = load_config(config, **overrides)
    config = config.replace(output_dir=output_dir or pretrained_dir(config))
    published = storage.join(config.resolved_output_dir(), "result.json")
    if storage.exists(published) and is_exported(config.export_dir()):
        return config.export_dir()
    with _run_lock(config.resolved_output_dir(), log):
        # Another process may have finished while this one waited.
        if is_exported(config.export_dir()):
            return config.export_dir()
        from bert4x.pretraining.trainer import run_pretraining
        result = run_pretraining(config, log=log)
        storage.atomic_write(published, json.dumps(result, indent=1))
    return result["export_dir"]


def _run_lock(run_dir, log):
    """The lock that lets one process at a time pretrain into ``run_dir``."""
    if not storage.can_lock(run_dir):
        log(f"no file lock for {run_dir}: run one process per output folder there")
        return contextlib.nullcontext()
    lock = run_dir.rstrip("/" + os.sep) + ".lock"
    return storage.file_lock(
        lock, on_wait=lambda: log(f"waiting for another process pretraining into {run_dir} "
                                  f"(it holds {lock})"))


# Names of the TensorFlow trainer, importable from here but loaded on first use (PEP 562),
# so that ``import bert4x.pretraining`` does not start TensorFlow.
_TRAINER_NAMES = ("Pretrainer", "run_pretraining")


def __getattr__(name):
    if name in _TRAINER_NAMES:
        from bert4x.pretraining import trainer
        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BUILTIN_CONFIGS", "Pretrainer", "PretrainingConfig", "TINY_CHINESE",
           "ensure_pretrained", "run_pretraining",
           "is_exported", "load_config", "load_dataset_summary", "make_pretraining_data",
           "make_strategy", "pretrained_dir", "read_documents", "select_strategy", "strategy_kind",
           "trimmed_vocabulary"]
