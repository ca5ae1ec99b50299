"""Shared command line: ``--config`` plus one flag per setting, overriding it."""

import argparse
import dataclasses
import json

from bert4x.configs import BertConfig
from bert4x.pretraining import BUILTIN_CONFIGS, PretrainingConfig, load_config


def _parse_value(text):
    """Flag values are JSON when they parse (numbers, true/false, null, lists)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


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
    settings = [f.name for f in dataclasses.fields(PretrainingConfig) if f.name != "model"]
    model_fields = [name for name in BertConfig.field_names() if name not in settings]
    for name in settings + model_fields:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=_parse_value,
                            default=argparse.SUPPRESS, metavar="VALUE",
                            help="model setting" if name in model_fields else None)
    args = parser.parse_args(argv)
    overrides = {name: getattr(args, name) for name in settings if hasattr(args, name)}
    model_overrides = {name: getattr(args, name) for name in model_fields if hasattr(args, name)}
    config = load_config(args.config, **overrides)
    if model_overrides:
        config = config.replace(model={**config.model, **model_overrides})
    return config, args
