"""The bert4keras-style scripts of ``examples/bert4keras`` run and learn.

Each script imports only ``bert4x.bert4keras`` (and keras/numpy), reads tiny
stand-in data in the format bert4keras's own examples read, trains a tiny random
BERT for a few epochs and prints ``loss: first -> last``; the test checks that
the loss fell. Two run in the default suite, all of them with ``-m slow``.
"""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from bert4x import checkpoints
from bert4x.models import build_transformer_model

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples", "bert4keras")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
GOOD, BAD = "好棒赞美妙喜欢开心满意", "差烂糟坏讨厌难过失望"
FILLER = "这个电影手机饭店服务质量价格东西我们觉得非常真的有点还是"
PLACES, PEOPLE = ["北京", "上海", "广州"], ["张三", "李四", "王五"]
DEFAULT = {"sentiment_classification.py", "ner_crf.py"}


def _sentences(rng, count):
    rows = []
    for _ in range(count):
        label = int(rng.integers(0, 2))
        words = [FILLER[i] for i in rng.integers(0, len(FILLER), 6)]
        words.insert(int(rng.integers(0, 6)), (GOOD if label else BAD)[rng.integers(0, 10)])
        rows.append(("".join(words), label))
    return rows


def _write_data(folder, rng):
    sentiment = _sentences(rng, 48)
    with open(os.path.join(folder, "sentiment.tsv"), "w", encoding="utf-8") as f:
        f.writelines(f"{text}\t{label}\n" for text, label in sentiment)
    with open(os.path.join(folder, "ner.txt"), "w", encoding="utf-8") as f:
        for index in range(40):
            person, place = PEOPLE[index % 3], PLACES[(index // 3) % 3]
            tagged = ([(c, "O") for c in "昨天"] + _bio(person, "PER")
                      + [(c, "O") for c in "去了"] + _bio(place, "LOC")
                      + [(c, "O") for c in "旅游"])
            f.write("\n".join(f"{c} {t}" for c, t in tagged) + "\n\n")
    with open(os.path.join(folder, "similarity.tsv"), "w", encoding="utf-8") as f:
        for (a, la), (b, lb) in zip(sentiment[::2], sentiment[1::2]):
            f.write(f"{a}\t{b}\t{int(la == lb)}\n")
    with open(os.path.join(folder, "titles.tsv"), "w", encoding="utf-8") as f:
        for text, label in sentiment[:24]:
            f.write(f"{'好评' if label else '差评'}\t{text}\n")
    with open(os.path.join(folder, "qa.json"), "w", encoding="utf-8") as f:
        records = [{"question": f"{p}去了哪里", "passage": f"昨天{p}去了{q}旅游", "answer": q}
                   for p in PEOPLE for q in PLACES]
        json.dump(records * 2, f, ensure_ascii=False)
    with open(os.path.join(folder, "relations.json"), "w", encoding="utf-8") as f:
        for p in PEOPLE:
            for q in PLACES:
                f.write(json.dumps({"text": f"昨天{p}去了{q}旅游", "spo_list": [
                    {"subject": p, "predicate": "去了", "object": q}]},
                    ensure_ascii=False) + "\n")
    with open(os.path.join(folder, "schema.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps({"predicate": "去了"}, ensure_ascii=False) + "\n")
    return sentiment


def _bio(word, kind):
    return [(c, ("B-" if i == 0 else "I-") + kind) for i, c in enumerate(word)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny random Chinese BERT (vocabulary: the characters of the data) and the data."""
    rng = np.random.default_rng(0)
    data_dir = str(tmp_path_factory.mktemp("data"))
    _write_data(data_dir, rng)
    chars = set()
    for name in os.listdir(data_dir):
        with open(os.path.join(data_dir, name), encoding="utf-8") as f:
            chars.update(c for c in f.read() if "\u4e00" <= c <= "\u9fff")
    vocab = SPECIALS + sorted(chars)
    keras.utils.set_random_seed(0)
    builder = build_transformer_model(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=48, hidden_act="gelu", max_position_embeddings=64,
        type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        with_pool=True, with_mlm=True, return_keras_model=False)
    bert_dir = str(tmp_path_factory.mktemp("bert") / "tiny")
    checkpoints.save_checkpoint(builder, bert_dir, vocab=vocab)
    return bert_dir, data_dir


def _t5_dir(folders):
    """A tiny random mT5 on the BERT's vocabulary (T5-PEGASUS is an mT5 on BERT's),
    written beside it when a script first needs it (no default script does)."""
    bert_dir, _ = folders
    t5_dir = bert_dir + "_t5"
    if not os.path.exists(t5_dir):
        with open(os.path.join(bert_dir, "vocab.txt"), encoding="utf-8") as f:
            vocab = [token for token in f.read().split("\n") if token]
        t5 = build_transformer_model(
            model="mt5.1.1", vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=48, hidden_dropout_prob=0.0,
            return_keras_model=False)
        checkpoints.save_checkpoint(t5, t5_dir, vocab=vocab)
    return t5_dir


def _env(folders, script):
    bert_dir, data_dir = folders
    env = dict(os.environ, BERT_DIR=bert_dir, DATA_DIR=data_dir, TF_CPP_MIN_LOG_LEVEL="2")
    with open(os.path.join(EXAMPLES, script), encoding="utf-8") as f:
        if "T5_DIR" in f.read():
            env["T5_DIR"] = _t5_dir(folders)
    return env


def _check(returncode, stdout, stderr):
    """The script ran and printed ``loss: first -> last`` with the loss fallen."""
    assert returncode == 0, stderr[-3000:]
    found = re.findall(r"loss: ([\d.]+) -> ([\d.]+)", stdout)
    assert found, stdout[-2000:]
    first, last = map(float, found[-1])
    assert last < first, stdout[-2000:]
    return stdout


def _run(script, folders):
    completed = subprocess.run([sys.executable, os.path.join(EXAMPLES, script)],
                               env=_env(folders, script), capture_output=True, text=True,
                               timeout=900)
    return _check(completed.returncode, completed.stdout, completed.stderr)


# Runs scripts one after another in one Python process (one TensorFlow start for
# all): ``python -c RUN_IN_TURN results.json script...``; each script's stdout and
# its traceback, if it failed, go to results.json.
RUN_IN_TURN = """
import contextlib, io, json, runpy, sys, traceback
results = {}
for script in sys.argv[2:]:
    stdout, error = io.StringIO(), ""
    try:
        with contextlib.redirect_stdout(stdout):
            runpy.run_path(script, run_name="__main__")
    except BaseException:
        error = traceback.format_exc()
    results[script] = dict(stdout=stdout.getvalue(), error=error)
with open(sys.argv[1], "w") as file:
    json.dump(results, file)
"""


@pytest.fixture(scope="module")
def default_runs(folders, tmp_path_factory):
    """``{script: (returncode, stdout, stderr)}`` of the default scripts, run in turn by
    one subprocess."""
    scripts = sorted(DEFAULT)
    results_path = str(tmp_path_factory.mktemp("runs") / "results.json")
    env = {}
    for script in scripts:
        env.update(_env(folders, script))
    completed = subprocess.run(
        [sys.executable, "-c", RUN_IN_TURN, results_path]
        + [os.path.join(EXAMPLES, script) for script in scripts],
        env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0 and os.path.exists(results_path), \
        completed.stderr[-3000:]
    with open(results_path, encoding="utf-8") as file:
        results = json.load(file)
    return {script: (1 if found["error"] else 0, found["stdout"],
                     completed.stderr + found["error"])
            for script, found in ((s, results[os.path.join(EXAMPLES, s)]) for s in scripts)}


def _scripts():
    return sorted(name for name in os.listdir(EXAMPLES) if name.endswith(".py"))


@pytest.mark.parametrize("script", sorted(DEFAULT))
def test_default_examples_learn(default_runs, script):
    _check(*default_runs[script])


@pytest.mark.slow
@pytest.mark.parametrize("script", [s for s in _scripts() if s not in DEFAULT])
def test_every_example_learns(folders, script):
    _run(script, folders)


def test_examples_import_only_the_compatibility_layer():
    for script in _scripts():
        with open(os.path.join(EXAMPLES, script), encoding="utf-8") as f:
            source = f.read()
        imports = re.findall(r"^(?:from|import) ([\w.]+)", source, flags=re.M)
        outside = [m for m in imports if m.split(".")[0] not in ("os", "json", "numpy", "keras")
                   and not m.startswith("bert4x.bert4keras")]
        assert not outside, (script, outside)
