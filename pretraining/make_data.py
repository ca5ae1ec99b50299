"""Turn text files into packed TFRecord shards for pretraining.

Usage:
    python pretraining/make_data.py --config pretraining/configs/tiny_chinese.json
    python pretraining/make_data.py --config CONFIG --inputs 'corpus/*.txt' --data-dir data/x

Flags override the config's settings (any setting: ``--seq-length 256``). Rerunning
resumes: finished files are skipped and finished shards are not rewritten.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pretraining.cli import parse_config  # noqa: E402


def main(argv=None):
    config, _ = parse_config(argv, description=__doc__)
    from bert4x.pretraining.run import prepare_data
    summary = prepare_data(config)
    print(f"{summary['documents']:,} documents, {summary['tokens']:,} tokens -> "
          f"{summary['train_examples']:,} training and {summary['valid_examples']:,} held-out "
          f"sequences of {summary['seq_length']} in {config.resolved_data_dir()} "
          f"({summary['files_skipped']} input files already done)")


if __name__ == "__main__":
    main()
