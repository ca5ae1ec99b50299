"""What the pretraining tests share: a tiny corpus, its TFRecords and a tiny config.

Imported by test_pretraining.py and test_pretraining_jax.py (two files, so that the two
test processes share the pretraining tests); the fixtures are module-scoped in each.
"""

import json
import os
import socket
import sys

import pytest

from bert4x.pretraining import PretrainingConfig, make_pretraining_data
from bert4x.resources import chinese_vocab_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "pretraining_worker.py")
PRETRAIN = os.path.join(ROOT, "pretraining", "pretrain.py")
if ROOT not in sys.path:  # the pretraining/ command-line package
    sys.path.insert(0, ROOT)

DOCUMENTS = [
    "滚滚长江东逝水，浪花淘尽英雄。是非成败转头空。青山依旧在，几度夕阳红。",
    "话说天下大势，分久必合，合久必分。周末七国分争，并入于秦。",
    "这本书写得很好，我非常喜欢，推荐给大家。Unbelievable stories 2024!",
    "小熊宝宝我觉得孩子不喜欢，能换别的吗",
    "我爱北京天安门，天安门上太阳升。",
    "The quick brown fox jumps over the lazy dog; tokenization splits words.",
] * 12


def subprocess_env(**extra):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    text = folder / "docs.txt"
    text.write_text("\n".join(DOCUMENTS[:36]) + "\n\n", encoding="utf-8")
    jsonl = folder / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": d}, ensure_ascii=False)
                               for d in DOCUMENTS[36:]) + "\n", encoding="utf-8")
    return [str(text), str(jsonl)]


@pytest.fixture(scope="module")
def data_dir(corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    make_pretraining_data(corpus, str(folder), chinese_vocab_path(), seq_length=32,
                          word_segmenter="jieba", shard_size=7, validation_fraction=0.1,
                          num_workers=1, progress=False)
    return str(folder)


def tiny_config(tmp_path, data_dir, **overrides):
    values = {
        "name": "tiny", "vocab": "chinese", "vocab_trim_min_count": 1,
        "model": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "intermediate_size": 64, "max_position_embeddings": 64,
                  "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        "data_dir": data_dir, "output_dir": str(tmp_path / "run"), "seq_length": 32,
        "batch_size": 4, "accumulation_steps": 2, "train_steps": 6, "warmup_steps": 2,
        "learning_rate": 1e-3, "checkpoint_every": 3, "log_every": 3, "seed": 3,
        "shuffle_buffer": 5, "max_predictions": 12,
    }
    values.update(overrides)
    return PretrainingConfig.from_dict(values)


def free_ports(count):
    """``count`` free TCP ports on 127.0.0.1."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
