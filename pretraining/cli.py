"""Shared command line: ``--config`` plus one flag per setting, overriding it.

Each flag's value is read as the type of its setting: a list setting (``--inputs``)
takes a path or glob, a comma-separated list of them, or a JSON list; numbers and
booleans (``true``/``false``) are checked, and a value of the wrong type stops with
an error naming the flag.
"""

import argparse
import dataclasses
import json
import math

from bert4x.configs import BertConfig
from bert4x.pretraining import BUILTIN_CONFIGS, PretrainingConfig, load_config

_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _read_list(text):
    """A JSON list, or paths/globs separated by commas: ``'corpus/*.txt'``."""
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise argparse.ArgumentTypeError(f"{text!r} is not a JSON list "
                                             f"({error})") from None
        if not all(isinstance(value, str) for value in values):
            raise argparse.ArgumentTypeError(f"expected a list of strings, got {text!r}")
        return values
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected a path, a glob or a "
                                         f"comma-separated list of them, got {text!r}")
    return values


def _read_number(text, kind, optional):
    if optional and text.lower() in ("null", "none"):
        return None
    try:
        value = kind(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def flag_reader(kind, optional=False):
    """The argparse ``type`` that reads a flag's text as ``kind`` (argparse puts
    the flag's name in front of the error).

    Example:
        >>> flag_reader(list)("a.txt,corpus/*.txt")
        ['a.txt', 'corpus/*.txt']
        >>> flag_reader(int)("5000")
        5000
    """
    def read(text):
        if kind is list:
            return _read_list(text)
        if kind is bool:
            if text.lower() not in _BOOLEANS:
                raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
            return _BOOLEANS[text.lower()]
        if kind in (int, float):
            return _read_number(text, kind, optional)
        if kind is dict:
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = None
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
            return value
        return text
    return read


def _flag_fields(config_class, skip=()):
    """``(name, type, optional)`` of each dataclass field not in ``skip``."""
    return [(field.name, field.type, field.default is None)
            for field in dataclasses.fields(config_class) if field.name not in skip]


def parse_config(argv=None, description=None, export_only=False):
    """Return ``(PretrainingConfig, extra_args)`` from ``--config`` and overrides."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True,
                        help=f"a JSON config or a built-in name {sorted(BUILTIN_CONFIGS)}")
    if export_only:
        parser.add_argument("--export-only", action="store_true",
                            help="export the latest checkpoint without training")
        parser.add_argument("--start-over", action="store_true",
                            help="train from step 0 although the output folder holds "
                                 "checkpoints (they are moved aside, not deleted)")
    settings = _flag_fields(PretrainingConfig, skip=("model",))
    setting_names = [name for name, _, _ in settings]
    model_fields = _flag_fields(BertConfig, skip=setting_names)
    for (name, kind, optional), is_model in ([(field, False) for field in settings]
                                             + [(field, True) for field in model_fields]):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, type=flag_reader(kind, optional),
                            default=argparse.SUPPRESS, metavar="VALUE",
                            help="model setting" if is_model else None)
    args = parser.parse_args(argv)
    overrides = {name: getattr(args, name) for name in setting_names if hasattr(args, name)}
    model_overrides = {name: getattr(args, name) for name, _, _ in model_fields
                       if hasattr(args, name)}
    config = load_config(args.config, **overrides)
    if model_overrides:
        config = config.replace(model={**config.model, **model_overrides})
    return config, args
