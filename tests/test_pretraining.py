"""Acceptance tests of the pretraining pipeline on TensorFlow (the JAX route is in
test_pretraining_jax.py).

Tiny models (1 layer, hidden 32, seq 32) on tiny corpora; the distributed and
crash-resume tests run in subprocesses (tests/pretraining_worker.py, pretrain.py).
"""

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

from bert4x.pretraining import (TINY_CHINESE, PretrainingConfig, load_config,  # noqa: E402
                                make_pretraining_data, make_strategy, strategy_kind)
from bert4x.pretraining.data import DocumentTokenizer, SequencePacker  # noqa: E402
from bert4x.pretraining.pipeline import (Masker, evaluation_dataset, masked_dataset,  # noqa: E402
                                        parse_features)
from bert4x.resources import chinese_vocab_path  # noqa: E402
from bert4x.tokenizers import Tokenizer  # noqa: E402

from pretraining_helpers import (DOCUMENTS, ROOT, WORKER, corpus,  # noqa: E402,F401
                                 data_dir, free_ports, subprocess_env, tiny_config)


def _records(data_dir, prefix="train"):
    summary = json.load(open(os.path.join(data_dir, "dataset.json")))
    files = [os.path.join(data_dir, s) for s in summary[f"{prefix}_shards"]]
    dataset = tf.data.TFRecordDataset(files).map(lambda r: parse_features(r, 32))
    return [{k: v.numpy() for k, v in x.items()} for x in dataset]


# ------------------------------------------------------------------------- data
def test_round_trip_features_equal_tokenisation(corpus, data_dir):
    tokenizer = Tokenizer(chinese_vocab_path(), do_lower_case=True, token_start=None,
                          token_end=None)
    vocab = tokenizer.token_dict
    cls, sep, pad = vocab["[CLS]"], vocab["[SEP]"], vocab["[PAD]"]
    summary = json.load(open(os.path.join(data_dir, "dataset.json")))
    assert summary["documents"] == len(DOCUMENTS)
    # Per file: train documents are all but every 10th (validation_fraction 0.1).
    expected = {"train": [], "valid": []}
    for path in corpus:
        from bert4x.pretraining.data import read_documents
        for index, doc in enumerate(read_documents(path)):
            name = "valid" if index % 10 == 9 else "train"
            expected[name] += tokenizer.tokens_to_ids(tokenizer.tokenize(doc)) + [sep]
    for name in ("train", "valid"):
        stream = []
        for record in _records(data_dir, name):
            ids = record["input_ids"]
            assert ids[0] == cls and record["word_ids"][0] == -1
            real = ids[1:][ids[1:] != pad]
            assert np.all(ids[1 + len(real):] == pad)  # padding only at the end
            stream += real.tolist()
        assert stream == expected[name]


def test_packing_never_splits_a_word(data_dir):
    for record in _records(data_dir):
        ids, words = record["input_ids"], record["word_ids"]
        real = words[words >= 0]
        # Word indices start at 0 and never decrease or skip.
        assert real[0] == 0 and np.all(np.diff(real) >= 0) and np.all(np.diff(real) <= 1)
    tokenize = DocumentTokenizer(chinese_vocab_path(), True, "jieba")
    packer = SequencePacker(8, cls_id=101, sep_id=102)
    ids, starts = tokenize("我爱北京天安门，天安门上太阳升。")
    sequences = packer.add_document(ids, starts) + packer.flush()
    # Every word is whole in one sequence: concatenating the words per sequence
    # gives back the jieba words in order.
    words_out = []
    for seq_ids, seq_words in sequences:
        for w in range(seq_words.max() + 1):
            words_out.append(seq_ids[seq_words == w].tolist())
    words_in, current = [], []
    for token, start in zip(ids, starts):
        if start and current:
            words_in.append(current)
            current = []
        current.append(token)
    words_in.append(current)
    assert words_out == words_in


def test_word_boundaries_on_chinese_text():
    import jieba
    tokenize = DocumentTokenizer(chinese_vocab_path(), True, "jieba")
    text = "我爱北京天安门，unbelievable!"
    ids, starts = tokenize(text)
    tokens = Tokenizer(chinese_vocab_path(), do_lower_case=True).ids_to_tokens(ids)
    words, current = [], ""
    for token, start in zip(tokens, starts):
        if start and current:
            words.append(current)
            current = ""
        current += token[2:] if token.startswith("##") else token
    words.append(current)
    jieba_words = [w for w in jieba.lcut(text, HMM=False) if w.strip()]
    assert words == [w.lower() for w in jieba_words]
    assert "北京" in words and "天安门" in words and "unbelievable" in words


def test_restartable_shards_are_not_redone(corpus, data_dir, tmp_path):
    folder = tmp_path / "again"
    summary = make_pretraining_data(corpus, str(folder), chinese_vocab_path(), seq_length=32,
                                    word_segmenter="jieba", shard_size=7,
                                    validation_fraction=0.1, num_workers=1, progress=False)
    shard = folder / summary["train_shards"][0]
    mtime = shard.stat().st_mtime_ns
    again = make_pretraining_data(corpus, str(folder), chinese_vocab_path(), seq_length=32,
                                  word_segmenter="jieba", shard_size=7,
                                  validation_fraction=0.1, num_workers=1, progress=False)
    assert again["files_skipped"] == 2 and shard.stat().st_mtime_ns == mtime
    assert again["train_examples"] == summary["train_examples"]
    assert not [name for name in os.listdir(folder) if ".tmp-" in name]
    with pytest.raises(ValueError, match="other settings.*seq_length"):
        make_pretraining_data(corpus, str(folder), chinese_vocab_path(), seq_length=64,
                              word_segmenter="jieba", num_workers=1, progress=False)


# ---------------------------------------------------------------------- masking
def _synthetic_examples(count, length=64, seed=0):
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(count):
        word_lengths = rng.integers(1, 4, size=length)
        words = np.repeat(np.arange(length), word_lengths)[:length - 2]
        ids = rng.integers(10, 1000, size=length - 2)
        examples.append((np.concatenate([[2], ids, [3]]).astype(np.int32),
                         np.concatenate([[-1], words, [-1]]).astype(np.int32)))
    return examples


def _mask_all(masker, examples, epoch):
    # One traced graph for every example, as in the input pipeline (the draws are
    # stateless: the numbers eager calls give, for far less than 600 eager runs of
    # the masker's few dozen ops).
    length = len(examples[0][0])
    mask = tf.function(masker, input_signature=[
        tf.TensorSpec([length], tf.int32), tf.TensorSpec([length], tf.int32),
        tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64)])
    outputs = []
    for position, (ids, words) in enumerate(examples):
        features = mask(tf.constant(ids), tf.constant(words), tf.constant(epoch, tf.int64),
                        tf.constant(position, tf.int64))
        outputs.append({k: v.numpy() for k, v in features.items()})
    return outputs


@pytest.fixture(scope="module")
def masked_sample():
    masker = Masker(1000, mask_id=4, pad_id=0, special_ids=[0, 1, 2, 3, 4], seq_length=64,
                    max_predictions=64, seed=5)
    examples = _synthetic_examples(600)
    return masker, examples, _mask_all(masker, examples, epoch=0)


def test_masking_statistics(masked_sample):
    masker, examples, outputs = masked_sample
    words_total = chosen_words = 0
    counts = {"mask": 0, "random": 0, "same": 0}
    for (ids, words), out in zip(examples, outputs):
        selected = out["positions"][out["weights"] > 0]
        assert np.array_equal(out["labels"][out["weights"] > 0], ids[selected])
        words_total += words.max() + 1
        chosen_words += len(set(words[selected].tolist()))
        for position in selected:
            token = out["token_ids"][position]
            if token == 4:
                counts["mask"] += 1
            elif token == ids[position]:
                counts["same"] += 1
            else:
                counts["random"] += 1
        unselected = np.setdiff1d(np.arange(64), selected)
        assert np.array_equal(out["token_ids"][unselected], ids[unselected])
    total = sum(counts.values())
    assert total > 5000
    assert abs(chosen_words / words_total - 0.15) < 0.005
    assert abs(counts["mask"] / total - 0.8) < 0.02
    assert abs(counts["random"] / total - 0.1) < 0.015
    assert abs(counts["same"] / total - 0.1) < 0.015


def test_all_tokens_of_a_masked_word_are_masked_together(masked_sample):
    _, examples, outputs = masked_sample
    for (ids, words), out in zip(examples, outputs):
        selected = np.zeros(64, bool)
        selected[out["positions"][out["weights"] > 0]] = True
        for word in set(words[selected].tolist()):
            assert selected[words == word].all()


def test_fresh_mask_each_epoch_and_deterministic(masked_sample):
    masker, examples, outputs = masked_sample
    again = _mask_all(masker, examples[:50], epoch=0)
    next_epoch = _mask_all(masker, examples[:50], epoch=1)
    differ = 0
    for first, second, third in zip(outputs[:50], again, next_epoch):
        assert all(np.array_equal(first[k], second[k]) for k in first)
        differ += not np.array_equal(first["positions"], third["positions"])
    assert differ >= 45


def test_stream_resumes_at_any_example(data_dir):
    summary = json.load(open(os.path.join(data_dir, "dataset.json")))
    files = [os.path.join(data_dir, s) for s in summary["train_shards"]]
    count = summary["train_examples"]
    masker = Masker(21128, 103, 0, [0, 100, 101, 102, 103], 32, max_predictions=10, seed=1)

    def stream(start, batches):
        dataset = masked_dataset(files, 32, masker, 1, count, start_example=start,
                                 shuffle_buffer=4, seed=2)
        return [x["token_ids"].numpy()[0] for x in dataset.take(batches)]

    full = stream(0, 2 * count + 3)
    assert np.array_equal(stream(count + 3, 5), full[count + 3:count + 8])
    # Untuned: dropping an autotuned iterator at the end of a run waited up to a minute.
    assert masked_dataset(files, 32, masker, 1, count).options().autotune.enabled is False
    assert evaluation_dataset(files, 32, masker, 4).options().autotune.enabled is False
    # A new epoch: another order and other masks.
    assert not all(np.array_equal(a, b) for a, b in zip(full[:count], full[count:2 * count]))


# -------------------------------------------------------------------- strategies
def test_strategy_selection_without_a_tpu():
    workers = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
               "task": {"type": "worker", "index": 1}}
    assert strategy_kind(tpu="grpc://10.1.2.3:8470", num_gpus=8) == "tpu"
    assert strategy_kind(tf_config=json.dumps(workers), num_gpus=8) == "multi_worker"
    assert strategy_kind(tf_config={"cluster": {"worker": ["a:1"]}}, num_gpus=2) == "mirrored"
    assert strategy_kind(num_gpus=1) == "default"
    calls = []

    class FakeResolver:
        def __init__(self, tpu):
            calls.append(("resolver", tpu))

    def fake_strategy(resolver):
        calls.append(("strategy", type(resolver).__name__))
        return "tpu-strategy"

    strategy = make_strategy(
        "tpu", tpu="grpc://10.1.2.3:8470", tpu_resolver_factory=FakeResolver,
        tpu_strategy_factory=fake_strategy,
        connect=lambda r: calls.append(("connect", type(r).__name__)),
        initialize_tpu_system=lambda r: calls.append(("init", type(r).__name__)))
    assert strategy == "tpu-strategy"
    assert calls == [("resolver", "grpc://10.1.2.3:8470"), ("connect", "FakeResolver"),
                     ("init", "FakeResolver"), ("strategy", "FakeResolver")]
    with pytest.raises(ValueError, match="TPU address"):
        make_strategy("tpu")


# ----------------------------------------------------------- training and export
def test_train_and_export_round_trip(tmp_path, data_dir):
    from bert4x.models import build_transformer_model
    from bert4x.pretraining.trainer import Pretrainer
    lines = []
    trainer = Pretrainer(tiny_config(tmp_path, data_dir), log=lines.append)
    result = trainer.train()
    assert result["step"] == 6 and np.isfinite(result["loss"])
    assert any("tokens/s" in line and "mlm_acc" in line for line in lines)
    assert result["eval"]["targets"] > 0
    export = result["export_dir"]
    logs = os.path.join(str(tmp_path), "run", "logs")
    scalars = {value.tag: value.metadata.plugin_data.plugin_name
               for name in os.listdir(logs)
               for event in tf.compat.v1.train.summary_iterator(os.path.join(logs, name))
               for value in event.summary.value}
    assert scalars.get("loss") == scalars.get("learning_rate") == "scalars", scalars
    model = build_transformer_model(export, export, with_mlm=True)
    vocab = open(os.path.join(export, "vocab.txt"), encoding="utf-8").read().splitlines()
    assert len(vocab) == trainer.builder.config.vocab_size < 21128
    token_ids = np.zeros((1, 32), "int32")
    token_ids[0, :6] = [2, 10, 11, 4, 12, 3]
    segment_ids = np.zeros_like(token_ids)
    # Direct calls (inference: dropout off): predict would trace a function per model.
    exported = np.asarray(model([token_ids, segment_ids])[-1])
    trained = np.asarray(trainer.builder.model([token_ids, segment_ids])[-1])
    np.testing.assert_allclose(exported, tf.nn.softmax(trained).numpy(), atol=1e-6)
    # The training model (MLM head at gathered positions) agrees with the full one.
    positions = np.array([[1, 3, 4, 30] * 3], "int32")
    gathered = np.asarray(trainer.train_model([token_ids, segment_ids, positions]))
    np.testing.assert_allclose(gathered, trained[:, positions[0]], atol=1e-5)


# MLM runs by default; UniLM (bfloat16) and LM (checked against the plain update)
# compile the model again and are slow on 2 cores.
@pytest.mark.parametrize("objective", ["mlm", pytest.param("unilm", marks=pytest.mark.slow),
                                       pytest.param("lm", marks=pytest.mark.slow)])
def test_whole_update_compiles_with_xla(tmp_path, data_dir, objective):
    """What a TPU demands: the whole update (2 accumulated micro-batches and the
    optimizer's apply) as one jit_compile=True program, 2 updates per host-loop call;
    bfloat16 for UniLM; for LM the weights equal those of the uncompiled update."""
    from bert4x.pretraining.trainer import Pretrainer
    weights = {}
    for jit in (True, False) if objective == "lm" else (True,):
        config = tiny_config(tmp_path / str(jit), data_dir, objective=objective,
                             train_steps=2, warmup_steps=1, accumulation_steps=2,
                             steps_per_loop=2, log_every=2, checkpoint_every=2,
                             eval_batches=1, jit_compile=jit,
                             mixed_precision=objective == "unilm")
        trainer = Pretrainer(config, log=lambda line: None)
        result = trainer.train()
        assert result["step"] == 2 and np.isfinite(result["loss"])
        assert int(trainer.optimizer.iterations.numpy()) == 2
        weights[jit] = trainer.builder.model.get_weights()
    if len(weights) == 2:  # LM: the compiled update computes what the plain one does
        for compiled, plain in zip(weights[True], weights[False]):
            np.testing.assert_allclose(compiled, plain, atol=1e-5)


def test_mirrored_two_devices_equals_single_device(tmp_path, data_dir):
    config = tiny_config(tmp_path, data_dir, train_steps=4, eval_batches=1)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    out = tmp_path / "weights.npz"
    subprocess.run([sys.executable, WORKER, "mirrored", str(path), str(out)], check=True,
                   env=subprocess_env(), timeout=300)
    arrays = np.load(out)
    names = sorted(k[len("single_"):] for k in arrays if k.startswith("single_"))
    assert names
    moved = 0
    for name in names:
        np.testing.assert_allclose(arrays["mirrored_" + name], arrays["single_" + name],
                                   atol=1e-5, rtol=0)
    # Training really changed the weights (against the initial ones, not against zero).
    for name in names:
        moved += not np.allclose(arrays["single_" + name], arrays["initial_" + name],
                                 atol=1e-4, rtol=0)
    assert moved >= 0.8 * len(names), (moved, len(names))


def test_multi_worker_two_processes_identical_weights(tmp_path, data_dir):
    config = tiny_config(tmp_path, data_dir, train_steps=3, checkpoint_every=2,
                         eval_batches=1)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers},
                                "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen(
            [sys.executable, WORKER, "multiworker", str(path), str(tmp_path / f"w{index}.npz")],
            env=subprocess_env(TF_CONFIG=tf_config), stderr=subprocess.PIPE))
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr.decode()[-3000:]
    first, second = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert int(first["steps"]) == 3 == int(second["steps"])
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    # The chief alone kept checkpoints and exported.
    run = tmp_path / "run"
    assert (run / "export" / "bert_model.ckpt.index").exists()
    assert not [n for n in os.listdir(run) if n.startswith("worker_")]


def _exported_weights(folder):
    reader = tf.train.load_checkpoint(os.path.join(folder, "bert_model.ckpt"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def test_crash_resume_matches_uninterrupted_run(tmp_path, data_dir):
    # 12 updates of 8 examples: the resume (at step 4) is inside the first epoch of the
    # 58 training examples and runs past its end.
    common = dict(train_steps=12, checkpoint_every=2, log_every=2, deterministic=True,
                  accumulation_steps=2, eval_batches=1,
                  model={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "intermediate_size": 64, "max_position_embeddings": 64,
                         "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1})
    paths = {}
    for name in ("straight", "crashed"):
        config = tiny_config(tmp_path, data_dir, output_dir=str(tmp_path / name), **common)
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(config.to_dict()))
    env = subprocess_env()
    # Killed (SIGKILL, by itself) when it reports step 6, before that step's checkpoint.
    killed = subprocess.run([sys.executable, WORKER, "killed", str(paths["crashed"]),
                             str(tmp_path / "unused.npz"), "6"],
                            env=env, timeout=300, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert killed.stdout.splitlines()[-1].startswith("step 6/12")
    assert not (tmp_path / "crashed" / "export").exists()
    checkpoints = tmp_path / "crashed" / "checkpoints"
    assert sorted(n for n in os.listdir(checkpoints) if n.endswith(".index")) == [
        "ckpt-2.index", "ckpt-4.index"]

    # pretrain.py's main resumes it; then the same process (one TensorFlow start for
    # both) runs the uninterrupted run.
    resumed = subprocess.run([sys.executable, WORKER, "pretrain_then_uninterrupted",
                              str(paths["crashed"]), str(tmp_path / "unused.npz"),
                              str(paths["straight"])],
                             env=env, timeout=300, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(r"resumed from .*ckpt-4 at step 4", resumed.stdout), resumed.stdout
    straight = _exported_weights(tmp_path / "straight" / "export")
    crashed = _exported_weights(tmp_path / "crashed" / "export")
    assert sorted(straight) == sorted(crashed)
    for name in straight:
        np.testing.assert_array_equal(crashed[name], straight[name], err_msg=name)


# --------------------------------------------------------------------- bad input
def test_clear_errors(tmp_path, data_dir, corpus):
    from bert4x.pretraining.trainer import Pretrainer
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['learning_rat'\].*"
                                         r"known keys.*learning_rate"):
        PretrainingConfig.from_dict({"learning_rat": 1e-4})
    with pytest.raises(ValueError, match=r"unknown model key\(s\) \['hiden_size'\]"):
        PretrainingConfig.from_dict({"model": {"hiden_size": 4}})
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="corpus is empty"):
        make_pretraining_data([str(empty)], str(tmp_path / "e"), chinese_vocab_path(),
                              num_workers=1, progress=False)
    with pytest.raises(FileNotFoundError, match="vocabulary file not found.*nowhere.txt"):
        make_pretraining_data(corpus, str(tmp_path / "v"), str(tmp_path / "nowhere.txt"),
                              num_workers=1, progress=False)
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        tiny_config(tmp_path, data_dir, vocab=str(tmp_path / "nowhere.txt")).vocab_path()
    # A checkpoint folder written for another model size.
    small = tiny_config(tmp_path, data_dir, train_steps=1, warmup_steps=0, checkpoint_every=1,
                        eval_batches=1)
    Pretrainer(small, log=lambda line: None).train()
    bigger = small.replace(train_steps=2, model={**small.model, "hidden_size": 48})
    with pytest.raises(ValueError, match=r"another model.*hidden_size: 32 there, 48 here.*"
                                         r"word_embeddings: \[\d+, 32\] there, \[\d+, 48\] here"):
        Pretrainer(bigger, log=lambda line: None).restore()



def test_a_run_resumes_whatever_the_process_built_before(tmp_path, data_dir):
    """Keras numbers dropout seed generators across the process: a run started after
    other models were built must still resume (in a fresh process it resumes with
    fresh numbers)."""
    from bert4x.pretraining.trainer import Pretrainer
    config = tiny_config(tmp_path, data_dir, train_steps=1, warmup_steps=0,
                         checkpoint_every=1, eval_batches=0)
    config = config.replace(model={**config.model, "hidden_dropout_prob": 0.1})
    first = Pretrainer(config, log=lambda line: None)
    assert any("seed_generator" in key for key in first.model_variables)
    first.train()
    resumed = Pretrainer(config.replace(train_steps=2), log=lambda line: None)
    assert list(resumed.model_variables) == list(first.model_variables)
    assert resumed.restore() == 1



def test_devices_are_refused_on_tensorflow(tmp_path, data_dir):
    from bert4x.pretraining.trainer import run_pretraining
    with pytest.raises(ValueError, match=r"devices= picks the mesh of the JAX backend.*"
                                         r"tf.distribute strategy"):
        run_pretraining(tiny_config(tmp_path, data_dir), devices=["cpu:0"])
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_builtin_config_matches_json_file():
    with open(os.path.join(ROOT, "pretraining", "configs", "tiny_chinese.json"),
              encoding="utf-8") as file:
        assert json.load(file) == TINY_CHINESE
    config = load_config("tiny_chinese")
    assert config.model["num_hidden_layers"] == 4 and config.word_segmenter == "jieba"
    for name in os.listdir(os.path.join(ROOT, "pretraining", "configs")):
        load_config(os.path.join(ROOT, "pretraining", "configs", name))


def test_trainer_names_are_importable_from_the_package():
    from bert4x.pretraining import Pretrainer, run_pretraining
    from bert4x.pretraining import trainer
    assert (Pretrainer, run_pretraining) == (trainer.Pretrainer, trainer.run_pretraining)
    code = "import sys, bert4x.pretraining; print('tensorflow' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=subprocess_env(), check=True).stdout
    assert output.strip() == "False"  # loaded on first use only


def test_list_flags_take_a_glob_a_comma_list_or_json():
    from pretraining.cli import parse_config
    bert_base = os.path.join(ROOT, "pretraining", "configs", "bert_base.json")
    for text, expected in [("corpus/*.txt", ["corpus/*.txt"]),
                           ("a.txt, more/*.jsonl", ["a.txt", "more/*.jsonl"]),
                           ('["x.txt", "y.txt"]', ["x.txt", "y.txt"])]:
        config, _ = parse_config(["--config", bert_base, "--inputs", text, "--data-dir", "d"])
        assert config.inputs == expected and config.data_dir == "d"
    config, _ = parse_config(["--config", "tiny_chinese", "--clip-norm", "null",
                              "--mixed-precision", "true", "--learning-rate", "5e-4",
                              "--hidden-size", "64"])
    assert (config.clip_norm, config.mixed_precision, config.learning_rate) == (None, True, 5e-4)
    assert config.model["hidden_size"] == 64


@pytest.mark.parametrize("flag, value, expected", [
    ("--train-steps", "many", "expected an integer, got 'many'"),
    ("--learning-rate", "fast", "expected a number, got 'fast'"),
    ("--mixed-precision", "maybe", "expected true or false, got 'maybe'"),
    ("--inputs", "[1, 2]", "expected a list of strings"),
    ("--inputs", ",", "expected a path, a glob or a comma-separated list"),
    ("--hidden-size", "wide", "expected an integer, got 'wide'")])
def test_flag_of_the_wrong_type_is_an_error_naming_the_flag(capsys, flag, value, expected):
    from pretraining.cli import parse_config
    with pytest.raises(SystemExit):
        parse_config(["--config", "tiny_chinese", flag, value])
    assert f"argument {flag}: {expected}" in capsys.readouterr().err


def test_config_setting_of_the_wrong_type_is_named():
    with pytest.raises(ValueError, match=r"setting 'inputs' must be a list of paths or glob "
                                         r"patterns, got 'corpus/\*\.txt'"):
        load_config("tiny_chinese", inputs="corpus/*.txt")
    with pytest.raises(ValueError, match=r"setting 'train_steps' must be an integer, got '5'"):
        load_config("tiny_chinese", train_steps="5")


# ------------------------------------------------- damaged checkpoints and data
@pytest.fixture(scope="module")
def checkpointed_run(data_dir, tmp_path_factory):
    """A run with checkpoints at steps 2, 4 and 6, and one trainer of its model that
    the damage tests point at copies of its checkpoint folder."""
    from bert4x.pretraining.trainer import Pretrainer
    root = tmp_path_factory.mktemp("checkpointed")
    config = tiny_config(root, data_dir, train_steps=6, checkpoint_every=2, eval_batches=1)
    Pretrainer(config, log=lambda line: None).train()
    checkpoints = root / "run" / "checkpoints"
    assert sorted(n for n in os.listdir(checkpoints) if n.endswith(".index")) == [
        "ckpt-2.index", "ckpt-4.index", "ckpt-6.index"]
    return config, checkpoints, Pretrainer(config, log=lambda line: None)


def _damaged_copy(checkpoints, tmp_path, damage):
    import shutil
    copy = tmp_path / "checkpoints"
    shutil.copytree(checkpoints, copy)
    damage(copy)
    return copy


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


DAMAGES = {
    "missing index": (lambda d: (d / "ckpt-6.index").unlink(), 4,
                      r"ckpt-6 is damaged: ckpt-6\.index is missing"),
    "truncated data": (lambda d: _truncate(d / "ckpt-6.data-00000-of-00001"), 4,
                       r"ckpt-6\.data-00000-of-00001 is truncated"),
    "truncated index": (lambda d: _truncate(d / "ckpt-6.index", 0.3), 4,
                        r"ckpt-6\.index is unreadable"),
    "missing data": (lambda d: (d / "ckpt-6.data-00000-of-00001").unlink(), 4,
                     r"ckpt-6\.data-00000-of-00001 is missing"),
    "garbage pointer": (lambda d: (d / "checkpoint").write_text("garbage ]["), 6, None),
    "empty pointer": (lambda d: (d / "checkpoint").write_text(""), 6, None),
    "corrupt signature": (lambda d: (d / "model_signature.json").write_text('{"model": '), 6,
                          r"run signature .*model_signature\.json is damaged"),
    "empty signature": (lambda d: (d / "model_signature.json").write_text(""), 6,
                        r"run signature .*model_signature\.json is damaged"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_resume_from_a_damaged_checkpoint_takes_the_newest_intact(checkpointed_run, tmp_path,
                                                                  damage):
    import warnings
    _, checkpoints, trainer = checkpointed_run
    action, expected_step, message = DAMAGES[damage]
    trainer.checkpoint_dir = str(_damaged_copy(checkpoints, tmp_path, action))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step = trainer.restore()
    assert step == expected_step
    assert int(trainer.examples_seen.numpy()) == expected_step * 8
    texts = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if message:
        assert any(re.search(message, text) for text in texts), texts
    else:
        assert not texts
    # The restored weights are those of the checkpoint of that step.
    reader = tf.train.load_checkpoint(os.path.join(trainer.checkpoint_dir,
                                                   f"ckpt-{expected_step}"))
    embeddings = trainer.builder.model.get_layer("Embedding-Token").embeddings
    stored = reader.get_tensor("model_variables/Embedding-Token.Sembeddings/.ATTRIBUTES/"
                               "VARIABLE_VALUE")
    np.testing.assert_array_equal(np.asarray(embeddings), stored)


def test_pruning_keeps_intact_checkpoints_when_a_newer_one_is_damaged(checkpointed_run,
                                                                      tmp_path):
    _, checkpoints, trainer = checkpointed_run
    copy = _damaged_copy(checkpoints, tmp_path, lambda d: (d / "ckpt-6.index").unlink())
    trainer.checkpoint_dir = str(copy)
    folder = trainer._checkpoint_folder()
    folder.keep = 2
    folder.prune(6)  # 6 is damaged: 4 and 2 are the two intact ones to keep
    assert (copy / "ckpt-2.index").exists() and (copy / "ckpt-4.index").exists()
    folder.keep = 1
    folder.prune(6)
    assert not (copy / "ckpt-2.index").exists() and (copy / "ckpt-4.index").exists()


def test_stale_staging_of_killed_saves_is_removed_at_start_and_after_a_save(
        checkpointed_run, tmp_path):
    """A save killed with kill -9 leaves TensorFlow's ``ckpt-N_temp/`` (and the JAX
    route's temporary files); the next start and the next save remove them, and
    nothing of that name that holds anything else."""
    _, checkpoints, trainer = checkpointed_run

    def killed_saves(folder):
        staging = folder / "ckpt-8_temp"  # killed while TensorFlow wrote its shard
        staging.mkdir()
        (staging / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half")
        (staging / "part-00000-of-00001.index.tempstate1234567").write_bytes(b"half")
        (folder / "ckpt-8.tmp-4242.weights.h5").write_bytes(b"half")
        (folder / "ckpt-8.optimizer.npz.tmp-0123456789ab").write_bytes(b"half")
        users = folder / "ckpt-9_temp"  # named alike, but holds a user's file
        users.mkdir()
        (users / "notes.txt").write_text("keep me")

    copy = _damaged_copy(checkpoints, tmp_path, killed_saves)
    trainer.checkpoint_dir = str(copy)
    assert trainer.restore() == 6
    names = sorted(os.listdir(copy))
    assert "ckpt-9_temp" in names and (copy / "ckpt-9_temp" / "notes.txt").exists()
    assert not [n for n in names if n.startswith("ckpt-8")], names
    killed_saves_again = copy / "ckpt-10_temp"
    killed_saves_again.mkdir()
    (killed_saves_again / "part-00000-of-00001.index").write_bytes(b"half")
    trainer._checkpoint_folder().prune(6)  # what every save runs after writing
    assert not killed_saves_again.exists()
    assert (copy / "ckpt-9_temp" / "notes.txt").exists()


def test_resume_in_a_folder_named_with_glob_characters(checkpointed_run, tmp_path):
    """TensorFlow globs the prefixes it reads: checkpoints under ``run[1]/`` were all
    reported missing or unreadable ("damaged") although they were intact."""
    import shutil
    _, checkpoints, trainer = checkpointed_run
    copy = tmp_path / "run[1]" / "checkpoints"
    shutil.copytree(checkpoints, copy)
    trainer.checkpoint_dir = str(copy)
    assert trainer.restore() == 6
    assert int(trainer.examples_seen.numpy()) == 6 * 8


def test_no_intact_checkpoint_stops_unless_starting_over(checkpointed_run, tmp_path):
    from bert4x.pretraining.resume import DamagedCheckpointError
    from bert4x.pretraining.trainer import Pretrainer, run_pretraining
    from pretraining.cli import parse_config
    config, checkpoints, _ = checkpointed_run
    run = tmp_path / "run"

    def damage(folder):
        for step in (2, 4, 6):
            _truncate(folder / f"ckpt-{step}.data-00000-of-00001")

    _damaged_copy(checkpoints, run, damage)
    config = config.replace(output_dir=str(run))
    pattern = (r"no intact checkpoint in .*run/checkpoints: ckpt-6: .*truncated.*ckpt-4: .*"
               r"ckpt-2: .*--start-over")
    with pytest.warns(RuntimeWarning, match="ckpt-6 is damaged"):
        with pytest.raises(DamagedCheckpointError, match=pattern):
            Pretrainer(config, log=lambda line: None).restore()
    with pytest.warns(RuntimeWarning):
        with pytest.raises(DamagedCheckpointError, match=pattern):
            run_pretraining(config, export_only=True, log=lambda line: None)
    before = sorted(os.listdir(run / "checkpoints"))
    lines = []
    trainer = Pretrainer(config, log=lines.append, start_over=True)
    assert trainer.restore() == 0
    aside = [n for n in os.listdir(run) if n.startswith("checkpoints-set-aside-")]
    assert len(aside) == 1 and any("moved" in line for line in lines)
    moved = sorted(os.listdir(run / aside[0]))
    assert moved == [n for n in before if n != "model_signature.json"]
    assert not [n for n in os.listdir(run / "checkpoints") if n.startswith("ckpt-")]
    _, args = parse_config(["--config", "tiny_chinese", "--start-over"], export_only=True)
    assert args.start_over


def test_export_only_exports_the_newest_intact_checkpoint(checkpointed_run, tmp_path):
    from bert4x.pretraining.trainer import run_pretraining
    config, checkpoints, _ = checkpointed_run
    run = tmp_path / "run"
    _damaged_copy(checkpoints, run, lambda d: (d / "ckpt-6.index").unlink())
    with pytest.warns(RuntimeWarning, match=r"ckpt-6\.index is missing"):
        result = run_pretraining(config.replace(output_dir=str(run)), export_only=True,
                                 log=lambda line: None)
    assert result["step"] == 4
    exported = _exported_weights(result["export_dir"])
    stored = tf.train.load_checkpoint(str(run / "checkpoints" / "ckpt-4")).get_tensor(
        "model_variables/Embedding-Token.Sembeddings/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_array_equal(exported["bert/embeddings/word_embeddings"], stored)


def test_truncated_data_shard_is_named(data_dir, tmp_path):
    import shutil
    from bert4x.pretraining.pipeline import numpy_batches
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    summary = json.load(open(copy / "dataset.json"))
    files = [str(copy / s) for s in summary["train_shards"]]
    _truncate(copy / summary["train_shards"][3], 0.6)
    masker = Masker(21128, 103, 0, [0, 100, 101, 102, 103], 32, max_predictions=10, seed=1)
    dataset = masked_dataset(files, 32, masker, 4, summary["train_examples"], shuffle_buffer=0,
                             repeat=False)
    with pytest.raises(ValueError, match=re.escape(files[3]) + r" is damaged \(.*truncated"):
        list(numpy_batches(dataset, files))


# ----------------------------------------------------- no process-wide side effects
def _process_state():
    import random
    import keras
    from tensorflow.python.framework import config as tf_framework_config
    numpy_state = np.random.get_state()
    return {"python random": random.getstate(),
            "numpy random": (numpy_state[0], numpy_state[1].tolist()) + numpy_state[2:],
            "tf global seed": tf.compat.v1.random.get_seed(None)[0],
            # No public getter: the test reads TensorFlow's internal flag.
            "op determinism": tf_framework_config.is_op_determinism_enabled(),
            "keras distribution": keras.distribution.distribution(),
            "environment": dict(os.environ)}


def test_library_calls_leave_the_process_as_they_found_it(tmp_path, corpus):
    from bert4x.pretraining import ensure_pretrained
    from bert4x.pretraining.trainer import Pretrainer
    before = _process_state()
    values = tiny_config(tmp_path, None, train_steps=2, warmup_steps=0, eval_batches=1,
                         accumulation_steps=1).to_dict()
    values.update(inputs=corpus, data_dir=None, word_segmenter="jieba", shard_size=20,
                  validation_fraction=0.1, num_workers=1)
    export = ensure_pretrained(values, output_dir=str(tmp_path / "cached"), log=None)
    assert os.path.isfile(os.path.join(export, "bert_model.ckpt.index"))
    trainer = Pretrainer(load_config(values, output_dir=str(tmp_path / "again"),
                                     data_dir=str(tmp_path / "cached" / "data")),
                         log=lambda line: None)
    trainer.train()
    after = _process_state()
    for key in before:
        assert after[key] == before[key], key


# ------------------------------------------------------ storage other than local disk
def test_end_to_end_on_tensorflow_ram_filesystem(tmp_path, corpus):
    """make_data to ram:// shards, a run with output on ram:// that is interrupted and
    resumed, the export, and build_transformer_model from the ram:// export: the same
    weights as the same run on local disk. ram:// lives inside one process, so every
    step runs in this process (make_data without worker processes; the interruption
    is an exception raised from the progress callback when step 4 is reported, before
    that step's checkpoint is written)."""
    import uuid
    from bert4x.models import build_transformer_model
    from bert4x.pretraining.trainer import run_pretraining

    class Interrupted(Exception):
        pass

    def interrupt_at_step_4(line):
        if line.startswith("step 4/"):
            raise Interrupted(line)

    roots = {"ram": f"ram://bert4x-test-{uuid.uuid4().hex[:8]}", "disk": str(tmp_path)}
    weights = {}
    for kind, root in roots.items():
        config = tiny_config(tmp_path, f"{root}/data", output_dir=f"{root}/run",
                             inputs=corpus, word_segmenter="jieba", shard_size=7,
                             validation_fraction=0.1, num_workers=1, train_steps=6,
                             checkpoint_every=2, log_every=2, eval_batches=1,
                             accumulation_steps=1)
        with pytest.raises(Interrupted):
            run_pretraining(config, log=interrupt_at_step_4)
        assert tf.io.gfile.exists(f"{root}/run/checkpoints/ckpt-2.index")
        assert not tf.io.gfile.exists(f"{root}/run/checkpoints/ckpt-4.index")
        lines = []
        result = run_pretraining(config, log=lines.append)
        assert any("resumed from" in line and "ckpt-2" in line for line in lines), lines
        assert result["step"] == 6 and result["export_dir"] == f"{root}/run/export"
        shards = tf.io.gfile.glob(f"{root}/data/train-*.tfrecord")
        assert shards and all(s.startswith(root) for s in shards)
        model = build_transformer_model(result["export_dir"], result["export_dir"],
                                        with_mlm=True)
        weights[kind] = model.get_weights()
    assert not os.path.exists("ram:")  # nothing went to a local folder named "ram:"
    for on_ram, on_disk in zip(weights["ram"], weights["disk"]):
        np.testing.assert_allclose(on_ram, on_disk, atol=1e-6, rtol=0)


def test_make_data_reads_corpus_and_vocab_from_ram(corpus, data_dir):
    """Corpus files (by a glob pattern) and the vocabulary on ram:// (standing in for
    gs://) give the shards the same files give from local disk; they used to be read
    with the built-in open(), os.path and glob."""
    import uuid

    from bert4x import storage
    from bert4x.pretraining.data import DATASET_FILE
    root = f"ram://bert4x-make-data-{uuid.uuid4().hex[:8]}"
    remote_corpus = []
    for path in corpus:
        remote_corpus.append(storage.join(root, "corpus", os.path.basename(path)))
        storage.copy(path, remote_corpus[-1])
    storage.copy(chinese_vocab_path(), storage.join(root, "vocab.txt"))
    make_pretraining_data([remote_corpus[0], storage.join(root, "corpus", "docs.j*")],
                          f"{root}/data",
                          storage.join(root, "vocab.txt"), seq_length=32,
                          word_segmenter="jieba", shard_size=7, validation_fraction=0.1,
                          num_workers=1, progress=True)
    on_ram = json.loads(storage.read_text(f"{root}/data/{DATASET_FILE}"))
    on_disk = json.loads(storage.read_text(os.path.join(data_dir, DATASET_FILE)))
    assert on_ram["inputs"] == remote_corpus
    for key in ("documents", "tokens", "train_examples", "valid_examples"):
        assert on_ram[key] == on_disk[key], key
    for summary, folder in ((on_ram, f"{root}/data"), (on_disk, data_dir)):
        records = [record.numpy() for record in tf.data.TFRecordDataset(
            [storage.join(folder, shard) for shard in summary["train_shards"]])]
        summary["records"] = records
    assert on_ram["records"] == on_disk["records"]


def test_pretraining_modules_import_no_cycle():
    """No module of bert4x.pretraining imports (at the top or inside a function) a
    module that imports it back, directly or through others."""
    import ast
    package = os.path.join(ROOT, "bert4x", "pretraining")
    graph = {}
    for name in os.listdir(package):
        if name.endswith(".py"):
            module = "bert4x.pretraining" + ("" if name == "__init__.py" else "." + name[:-3])
            tree = ast.parse(open(os.path.join(package, name), encoding="utf-8").read())
            graph[module] = {node.module for node in ast.walk(tree)
                             if isinstance(node, ast.ImportFrom) and node.module
                             and node.module.startswith("bert4x.pretraining.")}
    assert {"bert4x.pretraining.trainer", "bert4x.pretraining.jax_trainer",
            "bert4x.pretraining.run"} <= set(graph)

    def reaches(start, target, seen):
        for successor in graph.get(start, ()):
            if successor == target or (successor not in seen and
                                       reaches(successor, target, seen | {successor})):
                return True
        return False

    cycles = sorted(module for module in graph if module != "bert4x.pretraining"
                    and reaches(module, module, {module}))
    assert not cycles, cycles


def test_cache_folder_depends_only_on_settings_that_differ_from_the_defaults(monkeypatch):
    """A setting added to PretrainingConfig later (at its default) must not move the
    cache folder: the tiny base pretrained by an earlier version is found again."""
    from bert4x.pretraining import PretrainingConfig, pretrained_dir
    monkeypatch.setenv("BERT4X_CACHE", "/cache")
    plain = pretrained_dir("tiny_chinese")
    # A later version's config: one more setting, at its default.
    to_dict = PretrainingConfig.to_dict
    monkeypatch.setattr(PretrainingConfig, "to_dict",
                        lambda self: {**to_dict(self), "a_later_setting": None})
    assert pretrained_dir("tiny_chinese") == plain
    default_loop = PretrainingConfig().steps_per_loop
    assert pretrained_dir("tiny_chinese", steps_per_loop=default_loop) == plain
    assert pretrained_dir("tiny_chinese", steps_per_loop=default_loop + 1) != plain
    assert pretrained_dir("tiny_chinese", train_steps=999) != plain
    assert plain.startswith("/cache") and "tiny_chinese-" in plain


def test_data_worker_whose_parent_is_gone_exits_quietly():
    """A killed run leaves its data workers behind: the reply pipe is closed, and the
    worker must end without printing a BrokenPipeError traceback into the user's log."""
    import io
    import pickle

    from bert4x.pretraining import data_worker
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "wb", buffering=0) as replies:  # as the worker opens it
        data_worker.serve(io.BytesIO(pickle.dumps("not a job")), replies)
