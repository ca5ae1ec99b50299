"""The documentation runs: every fenced code block of README.md, docs/*.md,
pretraining/README.md and examples/README.md is executed as written.

How a block is treated:

- ```` ```python ````: run with ``exec``. The blocks of one ``##`` section run in
  order in one fresh namespace (a later block may use a name an earlier one
  defined), in a temporary folder that holds tiny stand-ins under the names the
  snippets use (``chinese_L-12_H-768_A-12/bert_config.json``, ``vocab.txt``, ...),
  written with bert4x's own ``save_checkpoint`` (Hugging Face folders: the same
  weights under ``builder.hugging_face_names``, in ``model.safetensors``).
- ```` ```bash ```` and unlabelled blocks: one command a line (``\\`` continues a
  line, ``&&`` chains). ``pip install`` lines are not run (installing is not the
  test's business). ``python pretraining/make_data.py`` runs for real on a tiny
  corpus: the settings a command does not give itself are made tiny (``--inputs
  corpus/*.txt``, a local ``--data-dir``; ``gs://BUCKET`` becomes a local folder).
  ``python pretraining/pretrain.py`` and the demos (``python examples/X.py``) have
  their flags and config read and checked by the scripts' own parsers, without
  training (``test_pretraining.py`` and ``test_examples.py`` train). Any other
  command fails the test, so a new kind of command needs a rule here.
- ```` ```text ````: output shown to the reader, not run.
- A section that defines a family (``docs/model.md``, "Add a family") registers it for
  that section only: the registry is restored after each section.
- A block that is only an illustration (code that needs something the test cannot
  have, such as bert4keras's own Keras 2 imports) is marked by the line
  ``<!-- illustration: why -->`` right before its fence, and skipped by that mark.
"""

import json
import os
import re
import shlex
import shutil
import sys

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
DOCUMENTS = (["README.md"] + sorted(os.path.join("docs", name) for name in
                                    os.listdir(os.path.join(ROOT, "docs"))
                                    if name.endswith(".md"))
             + [os.path.join("pretraining", "README.md"), os.path.join("examples", "README.md")])
ILLUSTRATION = re.compile(r"^<!-- illustration\b.*-->$")
SHELL_INFOS = ("", "bash", "sh", "shell")


def code_blocks(document):
    """``(section, line, info, code, illustration)`` of each fenced block."""
    blocks, section, fence, previous = [], "(top)", None, ""
    with open(os.path.join(ROOT, document), encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            stripped = line.rstrip("\n")
            if fence is None:
                opening = re.match(r"^```(\S*)\s*$", stripped)
                if opening:
                    fence = {"info": opening.group(1), "line": number, "code": [],
                             "illustration": bool(ILLUSTRATION.match(previous))}
                elif stripped.startswith("## "):
                    section = stripped[3:].strip()
                if stripped.strip():
                    previous = stripped.strip()
            elif stripped.startswith("```"):
                blocks.append((section, fence["line"], fence["info"],
                               "\n".join(fence["code"]) + "\n", fence["illustration"]))
                fence, previous = None, ""
            else:
                fence["code"].append(stripped)
    assert fence is None, f"{document}: the block opened on line {fence['line']} never closes"
    return blocks


def _sections(kind):
    sections = {}
    for document in DOCUMENTS:
        for section, line, info, code, illustration in code_blocks(document):
            if illustration or (info == "python") != (kind == "python"):
                continue
            if kind == "shell" and info not in SHELL_INFOS:
                continue
            sections.setdefault(f"{document}: {section}", []).append((line, code))
    return sections


PYTHON_SECTIONS = _sections("python")
SHELL_SECTIONS = _sections("shell")


def test_every_block_is_run_or_marked():
    known = ("python", "text") + SHELL_INFOS
    for document in DOCUMENTS:
        for section, line, info, _, illustration in code_blocks(document):
            assert illustration or info in known, (
                f"{document}:{line}: a ```{info} block is neither run nor marked "
                "<!-- illustration: ... -->")
    # The marker is honoured, and only where it is written.
    marked = [block for block in code_blocks(os.path.join("docs", "migrating_from_bert4keras.md"))
              if block[4]]
    assert len(marked) == 1 and "from bert4keras.backend" in marked[0][3]
    assert sum(len(blocks) for blocks in PYTHON_SECTIONS.values()) >= 11


# ----------------------------------------------------------------- the stand-ins
VOCAB = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "!", ",", ".", "?", "，", "。"]
         + list("今天气不错北京好非常质量很太差了问题答案我们你的是在有一个中国人")
         + ["hello", "world", "question", "passage", "the", "a", "##s", "##ing"]
         + list("abcdefghijklmnopqrstuvwxyz")))
TINY = {"vocab_size": len(VOCAB), "hidden_size": 16, "num_hidden_layers": 3,
        "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 66,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def _official(folder, model="bert", prefix="bert_model.ckpt", config_name="bert_config.json",
              heads=None, **fields):
    """A tiny random checkpoint in Google's format, under the names given."""
    from bert4x.checkpoints import save_checkpoint
    from bert4x.models import build_transformer_model
    heads = {"with_mlm": True} if heads is None else heads
    builder = build_transformer_model(model=model, return_keras_model=False, **heads,
                                      **{**TINY, **fields})
    save_checkpoint(builder, str(folder), vocab=VOCAB)
    if (prefix, config_name) != ("bert_model.ckpt", "bert_config.json"):
        os.remove(folder / "checkpoint")  # the pointer names bert_model.ckpt
        os.rename(folder / "bert_config.json", folder / config_name)
        for name in os.listdir(folder):
            if name.startswith("bert_model.ckpt"):
                os.rename(folder / name, folder / name.replace("bert_model.ckpt", prefix))
    return builder


def _hugging_face(folder, model, model_type, heads=(), **fields):
    """A tiny random Hugging Face folder: config.json, model.safetensors, vocab.txt."""
    from safetensors.numpy import save_file
    from bert4x.checkpoints import hugging_face_tensors
    from bert4x.models import build_transformer_model
    config = {**TINY, "model_type": model_type, **fields}
    builder = build_transformer_model(model=model, return_keras_model=False,
                                      **dict.fromkeys(heads, True), **config)
    folder.mkdir()
    save_file(hugging_face_tensors(builder), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")


def _electra(folder):
    """Google's ELECTRA layout: discriminator and generator in one checkpoint."""
    import tensorflow as tf
    parts = folder.parent / "electra_parts"
    _official(parts / "discriminator", model="electra", heads={"with_discriminator": True},
              embedding_size=16)
    _official(parts / "generator", model="electra", embedding_size=16, hidden_size=64,
              num_attention_heads=1, intermediate_size=256)
    tensors = {}
    for part in ("generator", "discriminator"):  # the discriminator's embeddings win
        reader = tf.train.load_checkpoint(str(parts / part / "bert_model.ckpt"))
        tensors.update({name: reader.get_tensor(name)
                        for name in reader.get_variable_to_shape_map()})
    folder.mkdir()
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=str(folder / "electra_small"), tensor_names=names,
                      shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[name]) for name in names])
    shutil.copy(parts / "discriminator" / "bert_config.json", folder / "config.json")


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """The files the snippets name, tiny, in a folder; the pretrained cache too."""
    folder = tmp_path_factory.mktemp("docs")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    chinese = folder / "chinese_L-12_H-768_A-12"
    _official(chinese, heads={"with_mlm": True, "with_nsp": True})
    _official(folder / "chinese_roberta_wwm_ext", heads={"with_mlm": True})
    _official(folder / "albert_tiny_zh", model="albert", prefix="albert_model.ckpt",
              config_name="albert_config_tiny.json", embedding_size=8)
    _official(folder / "chinese_roformer_L-12_H-768_A-12", model="roformer")
    _official(folder / "chinese_roformer-v2-char_L-12_H-768_A-12", model="roformer_v2")
    _official(folder / "nezha_base", model="nezha", prefix="model.ckpt")
    _electra(folder / "electra_small")
    _hugging_face(folder / "all-MiniLM-L6-v2", "bert", "bert")
    _hugging_face(folder / "roberta-base", "roberta", "roberta", heads=["with_mlm"],
                  pad_token_id=1, type_vocab_size=1)
    _hugging_face(folder / "gpt2", "gpt2", "gpt2")
    _hugging_face(folder / "mt5-small", "mt5.1.1", "mt5")
    _official(folder / "chinese_t5_pegasus_base", model="mt5.1.1", prefix="model.ckpt",
              config_name="config.json", heads={}, hidden_act=["gelu", "linear"])
    # The cache ensure_pretrained("tiny_chinese") reads, already filled.
    from bert4x.pretraining import pretrained_dir
    os.environ["BERT4X_CACHE"], saved = str(folder / "cache"), os.environ.get("BERT4X_CACHE")
    try:
        run = pretrained_dir("tiny_chinese")
    finally:
        if saved is None:
            del os.environ["BERT4X_CACHE"]
        else:
            os.environ["BERT4X_CACHE"] = saved
    shutil.copytree(chinese, os.path.join(run, "export"))
    with open(os.path.join(run, "result.json"), "w") as file:
        json.dump({"export_dir": os.path.join(run, "export")}, file)
    # What the commands read: the repository's scripts and configs, a corpus.
    for name in ("pretraining", "examples"):
        os.symlink(os.path.join(ROOT, name), folder / name)
    (folder / "corpus").mkdir()
    (folder / "corpus" / "part.txt").write_text(
        "\n\n".join(["今天天气不错，我们在北京。", "质量很好，非常好。"] * 20), encoding="utf-8")
    return folder


# ------------------------------------------------------------------ python blocks
@pytest.mark.parametrize("section", sorted(PYTHON_SECTIONS))
def test_python_blocks_run(section, stand_ins, monkeypatch):
    monkeypatch.chdir(stand_ins)
    monkeypatch.setenv("BERT4X_CACHE", str(stand_ins / "cache"))
    from bert4x.registry import MODELS
    document = section.split(":")[0]
    namespace = {"__name__": "__docs__"}
    # A section may define a family, which registers itself: it goes with the section.
    registered = dict(MODELS)
    try:
        for line, code in PYTHON_SECTIONS[section]:
            exec(compile(code, f"{document}, block at line {line}", "exec"), namespace)
    finally:
        MODELS.clear()
        MODELS.update(registered)


# ------------------------------------------------------------------- shell blocks
def _commands(code):
    text = re.sub(r"\\\n", " ", code)
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        while words:
            end = words.index("&&") if "&&" in words else len(words)
            yield words[:end]
            words = words[end + 1:]


def _script_module(path):
    import importlib.util
    name = "docs_" + re.sub(r"\W", "_", path)
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_make_data(args, folder, number):
    given = {arg for arg in args if arg.startswith("--")}
    tiny = {"--inputs": "corpus/*.txt", "--data-dir": str(folder / f"data-{number}"),
            "--seq-length": "32", "--max-predictions": "8"}
    return args + [word for flag, value in tiny.items() if flag not in given
                   for word in (flag, value)]


def _run_command(words, folder, number):
    if words[:2] == ["pip", "install"]:
        return "not run (installation)"
    assert words[0] == "python" and len(words) >= 2, f"no rule for the command {words}"
    script = words[1]
    args = [word.replace("gs://BUCKET", str(folder / "bucket")) for word in words[2:]]
    if script == "pretraining/make_data.py":
        module = _script_module(script)
        if "--help" in args:
            with pytest.raises(SystemExit) as exit_:
                module.main(args)
            assert exit_.value.code == 0
            return "help"
        module.main(_tiny_make_data(args, folder, number))
        return "ran on a tiny corpus"
    if script == "pretraining/pretrain.py":
        sys.path.insert(0, ROOT)
        from pretraining.cli import parse_config
        parse_config(args, export_only=True)
        return "flags and config read"
    if script.startswith("examples/") and script.endswith(".py"):
        if EXAMPLES not in sys.path:
            sys.path.insert(0, EXAMPLES)
        module = __import__(os.path.basename(script)[:-3])
        module.parse_args(args)
        return "flags read"
    raise AssertionError(f"no rule for the command {words}")


@pytest.mark.parametrize("section", sorted(SHELL_SECTIONS))
def test_shell_commands_run(section, stand_ins, monkeypatch, capsys):
    monkeypatch.chdir(stand_ins)
    for index, (line, code) in enumerate(SHELL_SECTIONS[section]):
        for number, words in enumerate(_commands(code)):
            _run_command(words, stand_ins, f"{index}-{number}")
