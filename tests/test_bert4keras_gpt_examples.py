"""bert4keras's own GPT example scripts run on ``bert4x.bert4keras``.

``examples/basic_language_model_cpm_lm.py`` (CPM-LM, ``model='gpt2'``, SentencePiece with
jieba, random sampling) and ``examples/basic_language_model_gpt2_ml.py`` (GPT2-ML,
``model='gpt2_ml'``, a 256-to-128-token sampled continuation) are read from a
bert4keras checkout, rewritten (``from bert4keras`` -> ``from bert4x.bert4keras``, and
their checkpoint, config and vocabulary paths to tiny random stand-ins of the same
families) and run to their end. bert4x ships no copy of them: set
``BERT4KERAS_REPO`` to a bert4keras checkout (a work tree or a bare git folder); the
tests skip without one. Slow: the scripts re-run the whole sequence every step.
"""

import os
import subprocess
import sys

import keras
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _sentencepiece import train_sentencepiece  # noqa: E402
from bert4x import checkpoints  # noqa: E402
from bert4x.models import build_transformer_model  # noqa: E402
from bert4x.resources import chinese_vocab_path  # noqa: E402

# Where this machine keeps a bert4keras mirror, if BERT4KERAS_REPO is not set.
DEFAULT_REPO = "/work/.mirror/bojone+bert4keras/repo"
SCRIPTS = {"cpm_lm": "examples/basic_language_model_cpm_lm.py",
           "gpt2_ml": "examples/basic_language_model_gpt2_ml.py"}
# The paths each script hard-codes -> the stand-in file that replaces it.
PATHS = {"cpm_lm": {"/root/kg/bert/CPM_LM_2.6B_TF/config.json": "config",
                    "/root/kg/bert/CPM_LM_2.6B_TF/model.ckpt": "checkpoint",
                    "/root/kg/bert/CPM_LM_2.6B_TF/chinese_vocab.model": "vocab"},
         "gpt2_ml": {"/root/kg/bert/gpt2_ml/config.json": "config",
                     "/root/kg/bert/gpt2_ml/model.ckpt-100000": "checkpoint",
                     "/root/kg/bert/gpt2_ml/vocab.txt": "vocab"}}
CHINESE = ["今天天气不错我们去公园散步吧", "中国的首都是北京", "美国的首都是华盛顿",
           "狗和猫都是人们喜欢的动物", "他在大学里学习数学和物理", "这本书讲了一个很长的故事",
           "小明出生在武汉后来去了北京工作", "姚明的身高是两米多"]
TINY = dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=40,
            hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def read_script(path):
    """A script of the bert4keras checkout (BERT4KERAS_REPO), or None without one."""
    repo = os.environ.get("BERT4KERAS_REPO", DEFAULT_REPO)
    if os.path.isfile(os.path.join(repo, path)):
        with open(os.path.join(repo, path), encoding="utf-8") as file:
            return file.read()
    if not os.path.isdir(repo):
        return None
    shown = subprocess.run(["git", "-C", repo, "show", f"HEAD:{path}"], capture_output=True,
                           text=True)
    return shown.stdout if shown.returncode == 0 else None


def rewritten(source, paths):
    """The script on bert4x: its bert4keras imports and its file paths replaced."""
    source = source.replace("from bert4keras.", "from bert4x.bert4keras.")
    for original, replacement in paths.items():
        assert original in source, original
        source = source.replace(original, replacement)
    return source


def stand_in(kind, folder):
    """A tiny random model of the script's family and its vocabulary: {role: path}."""
    keras.utils.set_random_seed(0)
    if kind == "cpm_lm":
        # CPM's vocabulary ends a line with <cls> (id 3), which the script stops at.
        import sentencepiece

        vocab = train_sentencepiece(folder, CHINESE * 10, vocab_size=120, pad_id=0, unk_id=1,
                                    bos_id=-1, eos_id=-1, hard_vocab_limit=False,
                                    user_defined_symbols=["<sep>", "<cls>"])
        size = sentencepiece.SentencePieceProcessor(model_file=vocab).get_piece_size()
        builder = build_transformer_model(model="gpt2", vocab_size=size,
                                          max_position_embeddings=1024,
                                          return_keras_model=False, **TINY)
    else:
        vocab = chinese_vocab_path()  # 511 is "。", where the script stops
        builder = build_transformer_model(model="gpt2_ml", vocab_size=21128,
                                          max_position_embeddings=512,
                                          return_keras_model=False, **TINY)
    prefix = checkpoints.save_checkpoint(builder, str(folder / "model"))
    return {"config": os.path.join(os.path.dirname(prefix), "bert_config.json"),
            "checkpoint": prefix, "vocab": vocab}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SCRIPTS))
def test_bert4keras_gpt_example_runs(kind, tmp_path):
    source = read_script(SCRIPTS[kind])
    if source is None:
        pytest.skip("no bert4keras checkout: set BERT4KERAS_REPO to run bert4keras's "
                    "own example scripts")
    files = stand_in(kind, tmp_path)
    script = tmp_path / os.path.basename(SCRIPTS[kind])
    script.write_text(rewritten(source, {original: files[role]
                                         for original, role in PATHS[kind].items()}),
                      encoding="utf-8")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(
                   os.path.abspath(__file__)))] + sys.path))
    completed = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                               text=True, timeout=1800, cwd=str(tmp_path))
    assert completed.returncode == 0, completed.stderr[-3000:]
    printed = [line for line in completed.stdout.splitlines() if line.strip()]
    # CPM-LM prints four continuations, GPT2-ML one list of them.
    assert len(printed) >= (4 if kind == "cpm_lm" else 1), completed.stdout[-2000:]


def test_the_rewrite_changes_imports_and_paths_only():
    source = ("from bert4keras.models import build_transformer_model\n"
              "config_path = '/a/config.json'\nprint(np.array([1]))\n")
    assert rewritten(source, {"/a/config.json": "/b/c.json"}) == (
        "from bert4x.bert4keras.models import build_transformer_model\n"
        "config_path = '/b/c.json'\nprint(np.array([1]))\n")
