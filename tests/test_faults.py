"""Fault tests: damaged files and odd settings get an error that names the
culprit, never a silent wrong result.

Each section holds the faults of one area; every fault test here failed before its
fix. A few companions (``test_config_valid_fields_still_accepted``,
``test_rematch_matches_brute_force``) check that the fixes refuse nothing valid and
change no result.
"""

import json
import math
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bert4x.configs import BertConfig  # noqa: E402

TINY_CONFIG = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                   num_attention_heads=2, intermediate_size=64,
                   max_position_embeddings=64, type_vocab_size=2)


# ------------------------------------------------------------- inputs: config fields
@pytest.mark.parametrize("field, value, expected", [
    ("hidden_act", None, "activation name"),
    ("hidden_act", 5, "activation name"),
    ("hidden_act", "gelu_fancy", "unknown hidden_act 'gelu_fancy'"),
    ("layer_norm_eps", -1e-12, "finite number > 0"),
    ("layer_norm_eps", 0.0, "finite number > 0"),
    ("layer_norm_eps", math.nan, "finite number > 0"),
    ("layer_norm_eps", "1e-12", "finite number > 0"),
    ("initializer_range", math.inf, "finite number > 0"),
    ("initializer_range", -0.02, "finite number > 0"),
    ("hidden_dropout_prob", "x", "number in [0, 1)"),
    ("hidden_dropout_prob", 1.0, "number in [0, 1)"),
    ("attention_probs_dropout_prob", -0.1, "number in [0, 1)"),
    ("attention_probs_dropout_prob", math.nan, "number in [0, 1)"),
    ("hidden_dropout_prob", True, "number in [0, 1)"),
])
def test_config_field_checked(tmp_path, field, value, expected):
    """Each bad field is refused by name, from a dict and from a JSON file."""
    values = dict(TINY_CONFIG, **{field: value})
    with pytest.raises(ValueError, match=f"config field {field}") as error:
        BertConfig.from_dict(values)
    assert expected in str(error.value) and repr(value) in str(error.value)
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps(values))  # NaN and Infinity as Python's json writes them
    with pytest.raises(ValueError, match=f"config field {field}"):
        BertConfig.from_json(str(path))


def test_config_valid_fields_still_accepted():
    config = BertConfig.from_dict(dict(TINY_CONFIG, hidden_act="GELU_new", layer_norm_eps=1e-5,
                                       hidden_dropout_prob=0, initializer_range=1))
    assert config.hidden_act == "GELU_new" and config.hidden_dropout_prob == 0


def test_config_file_not_utf8_names_path(tmp_path):
    path = tmp_path / "bert_config.json"
    path.write_bytes(json.dumps(TINY_CONFIG).encode("utf-16"))
    with pytest.raises(ValueError, match="not UTF-8") as error:
        BertConfig.from_json(str(path))
    assert str(path) in str(error.value)


def test_config_path_is_checkpoint_index(tmp_path):
    """A checkpoint's ``.index`` passed as the config is named, not a UnicodeDecodeError."""
    import tensorflow as tf
    prefix = str(tmp_path / "bert_model.ckpt")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["bert/embeddings/word_embeddings"],
                      shape_and_slices=[""],
                      tensors=[tf.constant(np.ones((100, 32), np.float32))])
    with pytest.raises(ValueError) as error:
        BertConfig.from_json(prefix + ".index")
    assert prefix + ".index" in str(error.value)


# ------------------------------------------ files: save_checkpoint keeps what it did not write
# Each test here failed on the save_checkpoint that replaced the whole destination folder.
@pytest.fixture(scope="module")
def two_models():
    """Two tiny BERTs of one shape with different weights, and their saved arrays."""
    from bert4x.checkpoints import variable_map
    from bert4x.models import build_transformer_model
    builders = [build_transformer_model(**TINY_CONFIG, with_mlm=True, return_keras_model=False)
                for _ in range(2)]
    arrays = [{name: np.asarray(variable.numpy()) for name, variable, _ in variable_map(b)}
              for b in builders]
    assert not np.array_equal(arrays[0]["bert/embeddings/word_embeddings"],
                              arrays[1]["bert/embeddings/word_embeddings"])
    return builders, arrays


def _snapshot(folder):
    """``{relative path: bytes}`` of every file under a local folder."""
    return {os.path.relpath(os.path.join(root, name), folder):
            open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


def _saved_arrays(folder):
    from bert4x.checkpoints import open_checkpoint
    reader = open_checkpoint(folder)
    return {name: reader.get(name) for name in reader.names}


def _which_model(folder, arrays):
    """0 or 1: the model whose weights the folder loads (complete, never mixed)."""
    saved = _saved_arrays(folder)
    for index, expected in enumerate(arrays):
        if saved.keys() == expected.keys() and all(
                np.array_equal(saved[name], value) for name, value in expected.items()):
            return index
    raise AssertionError(f"{folder} loads neither model's weights")


def test_save_checkpoint_keeps_google_download_folder(two_models, tmp_path):
    from bert4x.checkpoints import save_checkpoint
    folder = tmp_path / "chinese_L-12_H-768_A-12"
    folder.mkdir()
    (folder / "bert_config.json").write_text(json.dumps({"vocab_size": 21128}))
    for name in ("bert_model.ckpt.index", "bert_model.ckpt.data-00000-of-00001",
                 "bert_model.ckpt.meta"):
        (folder / name).write_bytes(b"Google's weights")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    before = _snapshot(folder)
    with pytest.raises(FileExistsError, match="bert_config.json"):
        save_checkpoint(two_models[0][0], folder)
    assert _snapshot(folder) == before
    assert os.listdir(tmp_path) == [folder.name]


def test_save_checkpoint_keeps_foreign_files_and_subfolders(two_models, tmp_path):
    from bert4x.checkpoints import save_checkpoint
    folder = tmp_path / "project"
    (folder / "bert_model.ckpt.backup").mkdir(parents=True)
    (folder / "bert_model.ckpt.backup" / "weights.bin").write_bytes(b"keep me")
    (folder / "notes.txt").write_text("keep me too")
    (folder / "vocab.txt").write_text("[PAD]\n")
    before = _snapshot(folder)
    for builder in two_models[0]:
        save_checkpoint(builder, folder)
    after = _snapshot(folder)
    assert {name: after[name] for name in before} == before
    assert _which_model(folder, two_models[1]) == 1


def test_save_checkpoint_refuses_a_foreign_pointer(two_models, tmp_path):
    from bert4x.checkpoints import save_checkpoint
    folder = tmp_path / "training_run"
    folder.mkdir()
    # A tf.train.Saver pointer: the weights it names are someone else's.
    (folder / "checkpoint").write_text('model_checkpoint_path: "bert_model.ckpt"\n')
    (folder / "bert_model.ckpt.index").write_bytes(b"a training run")
    (folder / "bert_model.ckpt.data-00000-of-00001").write_bytes(b"a training run")
    before = _snapshot(folder)
    with pytest.raises(FileExistsError, match="not written by bert4x"):
        save_checkpoint(two_models[0][0], folder)
    assert _snapshot(folder) == before


def test_save_checkpoint_refuses_a_folder_named_checkpoint(two_models, tmp_path):
    """It used to fail on a rename into the folder (IsADirectoryError from the OS)."""
    from bert4x.checkpoints import save_checkpoint
    folder = tmp_path / "export"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "results.txt").write_text("mine")
    before = _snapshot(folder)
    with pytest.raises(FileExistsError, match="checkpoint is a folder"):
        save_checkpoint(two_models[0][0], folder)
    assert _snapshot(folder) == before and os.listdir(folder) == ["checkpoint"]


def test_pointer_to_moved_weights_names_them(two_models, tmp_path):
    """A pointer whose weights are gone: the error names the pointer and the prefix
    (it said the folder had no 'checkpoint' file)."""
    from bert4x.checkpoints import open_checkpoint, save_checkpoint
    folder = tmp_path / "export"
    save_checkpoint(two_models[0][0], folder)
    save_checkpoint(two_models[0][1], folder)  # now bert_model.ckpt-1
    for name in os.listdir(folder):
        if name.startswith("bert_model.ckpt"):
            (folder / name).rename(tmp_path / name)
    with pytest.raises(FileNotFoundError, match=r"pointer .*checkpoint names .*"
                                                r"bert_model\.ckpt(-1)?, but .*\.index is not"):
        open_checkpoint(folder)


def test_save_checkpoint_replaces_a_folder_saved_by_earlier_versions(two_models, tmp_path):
    from bert4x.checkpoints import save_checkpoint
    (builder, other), arrays = two_models
    folder = tmp_path / "export"
    save_checkpoint(builder, folder)
    (folder / "checkpoint").write_text('model_checkpoint_path: "bert_model.ckpt"\n'
                                       'all_model_checkpoint_paths: "bert_model.ckpt"\n')
    (folder / "vocab.txt").write_text("[PAD]\n")  # written by the pretraining export
    save_checkpoint(other, folder)
    assert _which_model(folder, arrays) == 1
    assert (folder / "vocab.txt").read_text() == "[PAD]\n"
    assert not (folder / "bert_model.ckpt.index").exists()  # the old weights were its own


class _Killed(BaseException):
    """The process died: no cleanup code of the save may run afterwards."""


def _kill_at(monkeypatch, step):
    """Make the ``step``-th file change of bert4x.storage (and every later one) fail."""
    from bert4x import storage
    calls = []
    for name in ("rename", "remove", "rmtree", "copy"):
        original = getattr(storage, name)

        def operation(*args, _original=original, **kwargs):
            calls.append(args)
            if step is not None and len(calls) >= step:
                raise _Killed(f"killed at file operation {len(calls)}: {args}")
            return _original(*args, **kwargs)
        monkeypatch.setattr(storage, name, operation)
    return calls


@pytest.mark.parametrize("scheme", ["local", "ram"])
@pytest.mark.parametrize("earlier_save", [True, False], ids=["over-a-save", "new-folder"])
def test_save_checkpoint_killed_at_any_step_leaves_a_loadable_folder(
        two_models, tmp_path, monkeypatch, scheme, earlier_save):
    import uuid

    from bert4x import storage
    from bert4x.checkpoints import save_checkpoint
    (old, new), arrays = two_models
    root = str(tmp_path) if scheme == "local" else f"ram://faults-{uuid.uuid4().hex}"
    storage.makedirs(root)
    vocab = [f"token{i}" for i in range(TINY_CONFIG["vocab_size"])]

    def fresh(name):
        folder = storage.join(root, name)
        if earlier_save:
            save_checkpoint(old, folder, vocab=vocab)
        return folder

    with monkeypatch.context() as patch:  # count the file changes of one save
        folder = fresh("count")
        calls = _kill_at(patch, None)
        save_checkpoint(new, folder, vocab=vocab)
    assert len(calls) >= 6
    for step in range(1, len(calls) + 1):
        folder = fresh(f"step{step}")
        with monkeypatch.context() as patch:
            _kill_at(patch, step)
            with pytest.raises(_Killed):
                save_checkpoint(new, folder, vocab=vocab)
        if earlier_save:
            assert _which_model(folder, arrays) in (0, 1), step
            assert storage.read_text(storage.join(folder, "vocab.txt")) == \
                "\n".join(vocab) + "\n"
        else:  # no checkpoint before: none, or the new one complete
            try:
                assert _which_model(folder, arrays) == 1, step
            except FileNotFoundError:
                pass
        # The next save finishes cleanly and leaves nothing of the killed one behind.
        save_checkpoint(new, folder, vocab=vocab)
        assert _which_model(folder, arrays) == 1
        names = storage.listdir(folder)
        assert [n for n in names if not n.startswith("bert_model.ckpt")] == \
            ["bert_config.json", "checkpoint", "vocab.txt"], (step, names)
        assert len([n for n in names if n.startswith("bert_model.ckpt")]) == 2, (step, names)
        assert not [name for name in storage.listdir(root)
                    if ".tmp-" in name or "staging" in name], step


def test_save_checkpoint_cleans_stale_staging_folders(two_models, tmp_path):
    from bert4x.checkpoints import save_checkpoint
    folder = tmp_path / "export[1]"  # glob characters in the name change nothing
    save_checkpoint(two_models[0][0], folder)
    marked = folder / ".bert4x-staging-1a2b3c4d5e6f"  # a killed save's, with its marker
    (marked).mkdir()
    (marked / "bert4x-staging").write_text(
        "A staging folder of bert4x's save_checkpoint: the next save into the "
        "folder above removes it.\n")
    (marked / "bert_model.ckpt.index").write_bytes(b"half")
    (folder / ".bert4x-staging-0a0b0c0d0e0f").mkdir()  # killed before its marker: empty
    save_checkpoint(two_models[0][1], folder)
    assert not [name for name in os.listdir(folder) if "staging" in name]
    assert _which_model(folder, two_models[1]) == 1


def test_checkpoint_in_a_folder_named_with_glob_characters_loads(two_models, tmp_path):
    """TensorFlow's checkpoint reader globs the prefix: ``export[1]/`` was never found."""
    from bert4x.checkpoints import save_checkpoint
    from bert4x.models import build_transformer_model
    (builder, _), arrays = two_models
    folder = tmp_path / "export[1]*?"
    save_checkpoint(builder, folder)
    assert _which_model(folder, arrays) == 0
    model = build_transformer_model(str(folder), with_mlm=True)
    ids = np.array([[2, 7, 3]], "int32")
    np.testing.assert_array_equal(np.asarray(model([ids, 0 * ids])[0]),
                                  np.asarray(builder.model([ids, 0 * ids])[0]))
    assert not [name for name in os.listdir(tmp_path) if name != folder.name]


def test_save_checkpoint_keeps_folders_named_like_staging(two_models, tmp_path):
    """Only a staging folder with bert4x's marker inside is proven to be its own."""
    from bert4x.checkpoints import save_checkpoint
    folder = tmp_path / "export"
    for name in ("export.tmp-backup", "export.tmp-1a2b3c4d5e6f"):  # beside: a user's
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.txt").write_text("my only copy")
    save_checkpoint(two_models[0][0], folder)
    unmarked = folder / ".bert4x-staging-1a2b3c4d5e6f"  # inside, named alike, no marker
    unmarked.mkdir()
    (unmarked / "results.txt").write_text("my only copy")
    (unmarked / "bert4x-staging").write_text("not the marker's text")
    before = _snapshot(tmp_path)
    save_checkpoint(two_models[0][1], folder)
    after = _snapshot(tmp_path)
    assert {name: after[name] for name in before if "results" in name or "unmarked" in name} \
        == {name: before[name] for name in before if "results" in name}
    assert sorted(os.listdir(tmp_path)) == ["export", "export.tmp-1a2b3c4d5e6f",
                                            "export.tmp-backup"]
    assert (unmarked / "bert4x-staging").read_text() == "not the marker's text"


def _deny_writes(monkeypatch, read_only, writable=None):
    """Make every change of bert4x.storage under ``read_only`` (but not under
    ``writable``) fail with PermissionError, as a read-only mount does.

    The tests run as root, where chmod does not stop writes; so the read-only
    folder is simulated by these fake storage operations.
    """
    from bert4x import storage
    read_only, writable = str(read_only), writable and str(writable)

    def inside(path, folder):
        path = os.fspath(path)
        return path == folder or path.startswith(folder.rstrip("/") + "/")

    def deny(path):
        if inside(path, read_only) and not (writable and inside(path, writable)):
            raise PermissionError(13, "Permission denied (read-only file system)",
                                  os.fspath(path))

    for name, target in (("makedirs", 0), ("remove", 0), ("rmtree", 0), ("rename", 1),
                         ("copy", 1), ("open", 0)):
        original = getattr(storage, name)

        def operation(*args, _original=original, _name=name, _target=target, **kwargs):
            mode = args[1] if len(args) > 1 else kwargs.get("mode", "r")
            if _name != "open" or mode[0] in "wa":
                deny(args[_target])
            if _name == "rename":
                deny(args[0])
            return _original(*args, **kwargs)
        monkeypatch.setattr(storage, name, operation)


def test_save_checkpoint_into_a_writable_folder_of_a_read_only_parent(
        two_models, tmp_path, monkeypatch):
    """A mounted volume: the destination is writable, the folder above it is not."""
    from bert4x.checkpoints import save_checkpoint
    (builder, other), arrays = two_models
    folder = tmp_path / "volume"
    folder.mkdir()
    with monkeypatch.context() as patch:
        _deny_writes(patch, tmp_path, writable=folder)
        save_checkpoint(builder, folder)
        save_checkpoint(other, folder)
    assert _which_model(folder, arrays) == 1
    assert os.listdir(tmp_path) == ["volume"]


def test_save_checkpoint_into_a_read_only_folder_leaves_nothing(
        two_models, tmp_path, monkeypatch):
    """A read-only destination holding a save: PermissionError, and no staging copy."""
    from bert4x.checkpoints import save_checkpoint
    (builder, other), arrays = two_models
    folder = tmp_path / "export"
    save_checkpoint(builder, folder)
    before = _snapshot(tmp_path)
    with monkeypatch.context() as patch:
        _deny_writes(patch, folder)
        with pytest.raises(PermissionError, match="export"):
            save_checkpoint(other, folder)
    assert _snapshot(tmp_path) == before
    assert os.listdir(tmp_path) == ["export"]
    assert _which_model(folder, arrays) == 0


def test_save_checkpoint_failing_midway_removes_what_it_wrote(
        two_models, tmp_path, monkeypatch):
    """A save that fails (not killed) removes its staging folder and what it moved in."""
    from bert4x import storage
    from bert4x.checkpoints import save_checkpoint
    (builder, other), arrays = two_models
    folder = tmp_path / "export"
    save_checkpoint(builder, folder, vocab=[f"t{i}" for i in range(100)])
    before = _snapshot(tmp_path)
    original = storage.rename

    def rename(source, destination, overwrite=False):
        if os.path.basename(destination) == "checkpoint":  # the disk fills up there
            raise OSError(28, "No space left on device", destination)
        return original(source, destination, overwrite)
    monkeypatch.setattr(storage, "rename", rename)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(other, folder, vocab=[f"t{i}" for i in range(100)])
    assert _snapshot(tmp_path) == before
    assert _which_model(folder, arrays) == 0


def test_save_checkpoint_writes_the_trimmed_vocabulary(tmp_path):
    from bert4x.checkpoints import save_checkpoint
    from bert4x.models import build_transformer_model
    from bert4x.tokenizers import Tokenizer, load_vocab
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    full = build_transformer_model(**TINY_CONFIG, return_keras_model=False)
    full_prefix = save_checkpoint(full, tmp_path / "full")
    keep_tokens = [0, 1, 2, 3, 4, 17, 42, 99, 8]
    trimmed = build_transformer_model(str(tmp_path / "full" / "bert_config.json"), full_prefix,
                                      keep_tokens=keep_tokens, return_keras_model=False)
    expected = [tokens[index] for index in keep_tokens]
    for name, vocab in [("path", tmp_path / "vocab.txt"), ("list", tokens),
                        ("dict", {t: i for i, t in enumerate(tokens)}),
                        ("trimmed-tokenizer", Tokenizer({t: i for i, t in enumerate(expected)}))]:
        save_checkpoint(trimmed, tmp_path / name, vocab=vocab)
        assert (tmp_path / name / "vocab.txt").read_text(encoding="utf-8").splitlines() == \
            expected, name
    # Line i of the written vocabulary names embedding row i of the written weights.
    written = _saved_arrays(tmp_path / "path")["bert/embeddings/word_embeddings"]
    original = _saved_arrays(tmp_path / "full")["bert/embeddings/word_embeddings"]
    token_dict = load_vocab(tmp_path / "path" / "vocab.txt")
    for token, row in token_dict.items():
        np.testing.assert_array_equal(written[row], original[tokens.index(token)])
    with pytest.raises(ValueError, match="vocab has 5 tokens but the model has 9 embedding"):
        save_checkpoint(trimmed, tmp_path / "bad", vocab=tokens[:5])
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------- files: exports say what they are
FAMILY_CONFIGS = {
    "bert": {},
    "roberta": dict(model_type="roberta", pad_token_id=1, type_vocab_size=1),  # fairseq's
    "albert": dict(embedding_size=16),
    "albert_unshared": dict(embedding_size=16, num_hidden_groups=2),
    "electra": dict(embedding_size=16),
    "roformer": {},
    "nezha": {},
}


@pytest.fixture(scope="module")
def family_exports(tmp_path_factory):
    """``{family: (builder, export folder)}``: a tiny model of each family, saved."""
    from bert4x.checkpoints import save_checkpoint
    from bert4x.models import build_transformer_model
    root = tmp_path_factory.mktemp("family_exports")
    exports = {}
    for family, fields in FAMILY_CONFIGS.items():
        builder = build_transformer_model(**dict(TINY_CONFIG, **fields), model=family,
                                          with_mlm=True, return_keras_model=False)
        save_checkpoint(builder, root / family)
        exports[family] = builder, root / family
    return exports


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_export_reloads_without_naming_its_family(family_exports, family):
    from bert4x.models import build_transformer_model
    builder, folder = family_exports[family]
    reloaded = build_transformer_model(str(folder), with_mlm=True, return_keras_model=False)
    assert reloaded.family == family
    ids = np.array([[2, 7, 9, 3, 5, 0, 0]], "int32")
    inputs = [ids, np.zeros_like(ids)]
    for part, expected in zip(reloaded.model(inputs), builder.model(inputs)):
        np.testing.assert_allclose(np.asarray(part), np.asarray(expected), atol=1e-6)


@pytest.mark.parametrize("saved, asked", [("nezha", "bert"), ("bert", "roformer"),
                                          ("electra", "albert")])
def test_export_built_as_another_family_names_both(family_exports, saved, asked):
    from bert4x.models import build_transformer_model
    _, folder = family_exports[saved]
    with pytest.raises(ValueError, match=f"saved from a '{saved}' model.*as a '{asked}' "
                                         f"model; pass model='{saved}'"):
        build_transformer_model(str(folder), model=asked, with_mlm=True)


def test_export_of_albert_builds_as_albert_unshared(family_exports):
    """Families that read one another's weights unchanged are no mismatch."""
    from bert4x.models import build_transformer_model
    _, folder = family_exports["albert"]
    build_transformer_model(str(folder), model="albert_unshared", with_mlm=True)


def test_checkpoint_without_position_table_points_to_families_without_one(
        family_exports, tmp_path):
    """An export of an earlier version (no family in its config) of a NEZHA model."""
    from bert4x.models import build_transformer_model
    _, folder = family_exports["nezha"]
    config = json.loads((folder / "bert_config.json").read_text())
    del config["family"]
    (tmp_path / "bert_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="position_embeddings.*model='nezha', "
                                         "model='roformer' or model='roformer_v2'"):
        build_transformer_model(str(tmp_path / "bert_config.json"), str(folder),
                                with_mlm=True)


# ------------------------------------------------- files: loaders read gs:// and ram:// paths
def test_build_transformer_model_from_ram(two_models, tmp_path):
    import uuid

    from bert4x import storage
    from bert4x.checkpoints import open_checkpoint, save_checkpoint
    from bert4x.models import build_transformer_model
    from bert4x.tokenizers import Tokenizer
    builder = two_models[0][0]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    remote = f"ram://faults-load-{uuid.uuid4().hex}/export"
    save_checkpoint(builder, remote + "/", vocab=vocab)
    assert storage.listdir(storage.dirname(remote)) == ["export"]
    save_checkpoint(builder, tmp_path / "export", vocab=vocab)
    ids = np.array([[2, 7, 9, 3, 0]], "int32")
    segments = np.zeros_like(ids)
    outputs = []
    for config, weights in [(str(tmp_path / "export"), None),  # the reference: local disk
                            (storage.join(remote, "bert_config.json"), remote),
                            (None, storage.join(remote, "bert_model.ckpt"))]:
        model = build_transformer_model(config, weights, with_mlm=True)
        outputs.append([np.asarray(part) for part in model([ids, segments])])
    for output in outputs[1:]:
        for part, reference in zip(output, outputs[0]):
            np.testing.assert_array_equal(part, reference)
    tokenizer = Tokenizer(storage.join(remote, "vocab.txt"))
    assert tokenizer.encode("w3 w4")[0] == [2, 8, 9, 3]
    # safetensors from a remote path: read through a local copy.
    from safetensors.numpy import save_file
    arrays = {"bert.embeddings.word_embeddings.weight": np.arange(6, dtype="float32").reshape(3, 2)}
    save_file(arrays, str(tmp_path / "model.safetensors"))
    storage.copy(str(tmp_path / "model.safetensors"), storage.join(remote, "model.safetensors"))
    reader = open_checkpoint(storage.join(remote, "model.safetensors"))
    assert reader.path.startswith("ram://")
    np.testing.assert_array_equal(reader.get("bert.embeddings.word_embeddings.weight"),
                                  arrays["bert.embeddings.word_embeddings.weight"])


def test_bert4keras_layer_reads_config_and_files_from_ram(two_models, tmp_path):
    """The bert4keras layer reads through bert4x.storage as the native builder does
    (it used to open the config with the built-in open())."""
    import uuid

    from bert4x import storage
    from bert4x.bert4keras.models import build_transformer_model
    from bert4x.bert4keras.snippets import open as indexed_open
    from bert4x.checkpoints import save_checkpoint
    remote = f"ram://faults-bert4keras-{uuid.uuid4().hex}/export"
    save_checkpoint(two_models[0][0], remote)
    save_checkpoint(two_models[0][0], tmp_path / "export")
    ids = np.array([[2, 7, 9, 3]], "float32")
    outputs = [np.asarray(build_transformer_model(
        storage.join(folder, "bert_config.json"), storage.join(folder, "bert_model.ckpt"),
        with_mlm=True)([ids, np.zeros_like(ids)])) for folder in (str(tmp_path / "export"),
                                                                  remote)]
    np.testing.assert_array_equal(outputs[1], outputs[0])
    lines = storage.join(remote, "lines.txt")
    storage.atomic_write(lines, "first\nsecond\nthird\n")
    with indexed_open(lines, encoding="utf-8", indexable=lines + ".offsets") as file:
        assert (len(file), file[2], file[0]) == (3, "third\n", "first\n")
    with indexed_open(lines, encoding="utf-8", indexable=lines + ".offsets") as file:
        assert file[1] == "second\n"  # the offsets read back from ram://


# ------------------------------------------------ files: an unreadable file says why
@pytest.fixture(scope="module")
def saved_folder(two_models, tmp_path_factory):
    """A complete export: config, TF checkpoint, vocab.txt and a safetensors copy."""
    from safetensors.numpy import save_file

    from bert4x.checkpoints import save_checkpoint
    folder = tmp_path_factory.mktemp("saved") / "export"
    save_checkpoint(two_models[0][0], folder, vocab=[f"t{i}" for i in range(100)])
    save_file({"bert.embeddings.word_embeddings.weight": np.zeros((100, 32), "float32")},
              str(folder.parent / "model.safetensors"))
    return folder


def _load_each_file(folder):
    from bert4x.checkpoints import open_checkpoint
    from bert4x.configs import BertConfig
    from bert4x.tokenizers import Tokenizer
    return {"bert_config.json": lambda: BertConfig.from_json(folder / "bert_config.json"),
            "bert_model.ckpt.index": lambda: open_checkpoint(folder),
            "bert_model.ckpt.data-00000-of-00001": lambda: open_checkpoint(folder),
            "vocab.txt": lambda: Tokenizer(str(folder / "vocab.txt")),
            "model.safetensors": lambda: open_checkpoint(folder.parent / "model.safetensors")}


@pytest.mark.parametrize("name", ["bert_config.json", "bert_model.ckpt.index",
                                  "bert_model.ckpt.data-00000-of-00001", "vocab.txt",
                                  "model.safetensors"])
def test_unreadable_file_says_permission_denied(saved_folder, monkeypatch, name):
    """Tests run as root, where chmod does not stop reads: the file's permission is
    simulated by a fake bert4x.storage.open that refuses it (PermissionError), as the
    operating system would. Permission is not "missing" and not "corrupt"."""
    from bert4x import storage
    original = storage.open

    def refusing_open(path, mode="r", *args, **kwargs):
        if os.path.basename(os.fspath(path)) == name:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return original(path, mode, *args, **kwargs)
    monkeypatch.setattr(storage, "open", refusing_open)
    with pytest.raises(PermissionError, match=f"{name}' exists but cannot be read: "
                                              "permission denied"):
        _load_each_file(saved_folder)[name]()


def test_checkpoint_refused_by_tensorflow_says_permission_denied(saved_folder, monkeypatch):
    """TensorFlow reads TF checkpoints itself: its PermissionDeniedError (raised here
    by a fake reader, since root reads every file) is a PermissionError, not a
    "cannot read" ValueError or "corrupt"."""
    import tensorflow as tf

    from bert4x.checkpoints import open_checkpoint

    def refusing_reader(prefix):
        raise tf.errors.PermissionDeniedError(None, None, f"{prefix}.index; Permission denied")
    monkeypatch.setattr(tf.compat.v1.train, "NewCheckpointReader", refusing_reader)
    with pytest.raises(PermissionError, match="exists but cannot be read: permission denied"):
        open_checkpoint(saved_folder)


@pytest.mark.parametrize("name", ["bert_config.json", "vocab.txt", "model.safetensors"])
def test_folder_given_for_a_file_says_so(saved_folder, tmp_path, name):
    """A folder where a file is expected is not "not found"."""
    import shutil
    shutil.copytree(saved_folder.parent, tmp_path / "saved")
    folder = tmp_path / "saved" / "export"
    path = (folder.parent if name == "model.safetensors" else folder) / name
    path.unlink()
    path.mkdir()
    with pytest.raises(IsADirectoryError, match=f"{name}' is a folder, not a file"):
        _load_each_file(folder)[name]()


# ------------------------------------------------------------- inputs: checkpoints
def _random_builder(**config):
    """A bert4x builder with every head, whose variables name a full checkpoint."""
    from bert4x.models import build_transformer_model
    return build_transformer_model(**dict(TINY_CONFIG, **config), with_mlm=True,
                                   with_nsp=True, return_keras_model=False)


def _checkpoint_tensors(builder, seed=0):
    """``{google_name: array}`` in the official layout, random values."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, variable, kind in builder.variable_map():
        shape = tuple(variable.shape)[::-1] if kind == "transposed" else tuple(variable.shape)
        tensors[name] = rng.normal(0, 0.1, shape).astype(np.float32)
    return tensors


def _write_tf_checkpoint(folder, tensors, config):
    import tensorflow as tf
    os.makedirs(folder, exist_ok=True)
    names = sorted(tensors)
    prefix = os.path.join(folder, "bert_model.ckpt")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[name]) for name in names])
    with open(os.path.join(folder, "bert_config.json"), "w") as file:
        json.dump(config, file)
    return prefix


@pytest.fixture(scope="module")
def three_layer_checkpoint(tmp_path_factory):
    """A 3-layer checkpoint with pooler, MLM and NSP heads; its config says 3 layers."""
    tensors = _checkpoint_tensors(_random_builder(num_hidden_layers=3))
    folder = str(tmp_path_factory.mktemp("three_layers"))
    _write_tf_checkpoint(folder, tensors, dict(TINY_CONFIG, num_hidden_layers=3))
    return folder, tensors


def test_checkpoint_extra_layers_refused(three_layer_checkpoint):
    from bert4x.models import build_transformer_model
    folder, _ = three_layer_checkpoint
    with pytest.raises(ValueError, match="does not use") as error:
        build_transformer_model(checkpoint_path=folder, num_hidden_layers=2)
    message = str(error.value)
    assert "bert/encoder/layer_2/attention/self/query/kernel" in message
    assert "ignore_unused_weights=True" in message
    assert "cls/" not in message and "pooler" not in message  # heads are not errors


def test_checkpoint_extra_layers_ignored_on_request(three_layer_checkpoint):
    from bert4x.models import build_transformer_model
    folder, tensors = three_layer_checkpoint
    with pytest.warns(UserWarning, match="bert/encoder/layer_2/"):
        builder = build_transformer_model(checkpoint_path=folder, num_hidden_layers=2,
                                          ignore_unused_weights=True,
                                          return_keras_model=False)
    query = builder.blocks[1]["attention"].query_dense.kernel
    np.testing.assert_array_equal(
        np.asarray(query.numpy() if hasattr(query, "numpy") else query),
        tensors["bert/encoder/layer_1/attention/self/query/kernel"])


def _hugging_face_tensors(tensors):
    """The encoder and MLM head of official ``tensors`` under ``BertModel``'s names
    (without the ``bert.`` prefix), computed here by the naming rule."""
    hf = {"cls.predictions.bias": tensors["cls/predictions/output_bias"],
          "cls.predictions.decoder.weight": tensors["bert/embeddings/word_embeddings"]}
    for name, value in tensors.items():
        if name.startswith(("bert/", "cls/predictions/transform")) and "pooler" not in name:
            hf_name = name.replace("bert/", "", 1).replace("/layer_", "/layer.")
            hf_name = hf_name.replace("/", ".")
            hf_name = hf_name.replace(".gamma", ".weight").replace(".beta", ".bias")
            if hf_name.endswith(".kernel"):
                hf_name, value = hf_name[: -len(".kernel")] + ".weight", value.T
            elif hf_name.endswith("_embeddings"):
                hf_name += ".weight"
            hf[hf_name] = np.ascontiguousarray(value)
    return hf


def test_checkpoint_extra_layers_refused_in_safetensors(three_layer_checkpoint, tmp_path):
    """The same rule for Hugging Face names (without the ``bert.`` prefix, as
    ``BertModel`` saves them, plus its ``position_ids`` buffer and a tied copy of the
    word embeddings, which are no weights of their own)."""
    from safetensors.numpy import save_file

    from bert4x.models import build_transformer_model
    _, tensors = three_layer_checkpoint
    hf = _hugging_face_tensors(tensors)
    hf["embeddings.position_ids"] = np.arange(64, dtype=np.int64)[None]
    path = str(tmp_path / "model.safetensors")
    save_file(hf, path)
    (tmp_path / "config.json").write_text(json.dumps(dict(TINY_CONFIG, num_hidden_layers=3)))
    build_transformer_model(checkpoint_path=path)
    build_transformer_model(checkpoint_path=path, with_mlm=True)
    with pytest.raises(ValueError, match="encoder.layer.2.attention.self.query.weight"):
        build_transformer_model(checkpoint_path=path, num_hidden_layers=2)


def test_checkpoint_hidden_size_mismatch_named(three_layer_checkpoint):
    from bert4x.models import build_transformer_model
    folder, _ = three_layer_checkpoint
    with pytest.raises(ValueError) as error:
        build_transformer_model(checkpoint_path=folder, hidden_size=64, num_hidden_layers=3)
    message = str(error.value)
    assert "vocabulary" not in message
    assert "bert/embeddings/word_embeddings" in message
    assert "(100, 32)" in message and "(100, 64)" in message


@pytest.mark.parametrize("bad_value", [
    np.array([b"x"] * 32, dtype=object),
    np.ones(32, np.complex64),
    np.ones(32, np.int32),
])
def test_checkpoint_non_float_variable_refused(three_layer_checkpoint, tmp_path, bad_value):
    from bert4x.models import build_transformer_model
    _, tensors = three_layer_checkpoint
    name = "bert/encoder/layer_1/output/LayerNorm/gamma"
    _write_tf_checkpoint(str(tmp_path), dict(tensors, **{name: bad_value}),
                         dict(TINY_CONFIG, num_hidden_layers=3))
    with pytest.raises(ValueError, match="not a floating-point type") as error:
        build_transformer_model(checkpoint_path=str(tmp_path))
    assert repr(name) in str(error.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("file_format", ["tensorflow", "safetensors"])
def test_checkpoint_nan_or_infinite_weight_named(three_layer_checkpoint, tmp_path, bad,
                                                 file_format):
    from safetensors.numpy import save_file

    from bert4x.models import build_transformer_model
    _, tensors = three_layer_checkpoint
    name = "bert/encoder/layer_1/attention/self/key/kernel"
    damaged = tensors[name].copy()
    damaged[3, 5] = bad
    if file_format == "tensorflow":
        path = _write_tf_checkpoint(str(tmp_path), dict(tensors, **{name: damaged}),
                                    dict(TINY_CONFIG, num_hidden_layers=3))
        expected_name = name
    else:
        path = str(tmp_path / "model.safetensors")
        save_file(_hugging_face_tensors(dict(tensors, **{name: damaged})), path)
        expected_name = "encoder.layer.1.attention.self.key.weight"
    builder = build_transformer_model(**dict(TINY_CONFIG, num_hidden_layers=3),
                                      return_keras_model=False)
    with pytest.raises(ValueError, match="NaN and .* infinite values") as error:
        builder.load_checkpoint(path)
    assert repr(expected_name) in str(error.value)


def test_checkpoint_weight_beyond_the_model_dtype_named(three_layer_checkpoint, tmp_path):
    """1e6 is finite in the file but infinite in a float16 model."""
    from bert4x.models import build_transformer_model
    _, tensors = three_layer_checkpoint
    name = "bert/encoder/layer_0/output/dense/bias"
    path = _write_tf_checkpoint(str(tmp_path), dict(tensors, **{name: tensors[name] + 1e6}),
                                dict(TINY_CONFIG, num_hidden_layers=3))
    builder = build_transformer_model(**dict(TINY_CONFIG, num_hidden_layers=3),
                                      dtype="float16", return_keras_model=False)
    with pytest.raises(ValueError, match=f"'{name}' holds values up to 1e\\+06, beyond "
                                         "the range of the model's float16"):
        builder.load_checkpoint(path)


# ------------------------------------------------------------- inputs: vocabularies
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "中", "国", "你", "好", "a", "##b"]


def test_vocab_byte_order_mark_stripped(tmp_path):
    from bert4x.tokenizers import Tokenizer, load_vocab
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_vocab(str(path)) == {token: index for index, token in enumerate(VOCAB)}
    assert Tokenizer(str(path)).pad_id == 0


def test_vocab_not_utf8_names_path(tmp_path):
    from bert4x.tokenizers import Tokenizer, load_vocab
    path = tmp_path / "vocab.txt"
    path.write_bytes("\n".join(VOCAB[:5] + ["café"]).encode("latin-1"))
    for read in (load_vocab, Tokenizer):
        with pytest.raises(ValueError, match="not utf-8 text") as error:
            read(str(path))
        assert str(path) in str(error.value)


# ------------------------------------------------------------- inputs: tokenizer
@pytest.fixture(scope="module")
def small_tokenizer():
    from bert4x.tokenizers import Tokenizer
    return Tokenizer({token: index for index, token in enumerate(VOCAB)})


@pytest.mark.parametrize("maxlen", [0, 1])
def test_tokenize_with_spans_maxlen_too_small(small_tokenizer, maxlen):
    with pytest.raises(ValueError) as expected:
        small_tokenizer.tokenize("中国", maxlen=maxlen)
    with pytest.raises(ValueError) as error:
        small_tokenizer.tokenize_with_spans("中国", maxlen=maxlen)
    assert str(error.value) == str(expected.value)
    assert f"maxlen={maxlen}" in str(error.value)


class _CountedToken(str):
    """A token that counts its comparisons: ``rematch``'s work per token."""

    comparisons = 0

    def __eq__(self, other):
        type(self).comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def _rematch_comparisons(tokenizer, size):
    text, tokens = "中" * size, [_CountedToken("你")] * size  # no token occurs in text
    _CountedToken.comparisons = 0
    assert tokenizer.rematch(text, tokens) == [None] * size
    return _CountedToken.comparisons


def test_rematch_linear_when_tokens_do_not_occur(small_tokenizer):
    """Twice the tokens cost twice the comparisons (quadratic search cost four times)."""
    small, large = (_rematch_comparisons(small_tokenizer, size) for size in (300, 600))
    assert large <= 2.2 * small, (small, large)
    assert small <= 10 * 300


def test_rematch_matches_brute_force(small_tokenizer):
    """Token lists with tokens removed, inserted and swapped map as a first-occurrence
    scan from the last matched position says."""
    rng = np.random.default_rng(0)
    text = "你好中国 ab 中a 你好 [MASK] 国中好你 aab " * 3
    own = small_tokenizer.tokenize(text)
    own_spans = small_tokenizer.rematch(text, own)
    for _ in range(200):
        tokens = [token for token in own[1:-1] if rng.random() > 0.3]
        for _ in range(rng.integers(0, 4)):
            tokens.insert(int(rng.integers(0, len(tokens) + 1)), str(rng.choice(VOCAB[4:])))
        expected, position = [], 0
        body, spans = own[1:-1], own_spans[1:-1]
        for token in tokens:
            found = next((i for i in range(position, len(body)) if body[i] == token), None)
            expected.append(None if found is None else spans[found])
            position = position if found is None else found + 1
        assert small_tokenizer.rematch(text, tokens) == expected


# ------------------------------------------------------------- inputs: decoder
END = 3


@pytest.fixture(scope="module")
def unilm():
    """A random 2-layer UniLM with 64 positions and 2 segments."""
    from bert4x.models import build_transformer_model
    return build_transformer_model(**TINY_CONFIG, application="unilm",
                                   return_keras_model=False)


@pytest.fixture(scope="module")
def nan_unilm():
    """The same model with one NaN weight: every score it gives is NaN."""
    from bert4x.models import build_transformer_model
    builder = build_transformer_model(**TINY_CONFIG, application="unilm",
                                      return_keras_model=False)
    gamma = builder.embedding_norm.gamma
    gamma.assign(np.full(tuple(gamma.shape), np.nan, np.float32))
    return builder


@pytest.mark.parametrize("settings, message", [
    (dict(end_id=0), "end_id 0 is the padding id"),
    (dict(end_id=END, target_segment_id=2), r"target_segment_id .*0\.\.1.* got 2"),
    (dict(end_id=END, target_segment_id=-1), "target_segment_id"),
    (dict(end_id=END, target_segment_id=True), "target_segment_id"),
    (dict(end_id=END, max_length=True), "max_length"),
])
def test_decoder_settings_refused(unilm, settings, message):
    from bert4x.decoding import Decoder
    with pytest.raises(ValueError, match=message):
        Decoder(unilm, **settings)


@pytest.mark.parametrize("settings, message", [
    (dict(length_penalty=math.nan), "length_penalty must be a finite number, got nan"),
    (dict(length_penalty=math.inf), "length_penalty must be a finite number, got inf"),
    (dict(beam_size=True), "beam_size must be a positive integer, got True"),
    (dict(beam_size=2, num_return=True), "num_return"),
])
def test_beam_settings_refused(unilm, settings, message):
    from bert4x.decoding import Decoder, RerunDecoder
    with pytest.raises(ValueError, match=message):
        Decoder(unilm, end_id=END, max_length=3).beam_search([[2, 5, 3]], **settings)
    with pytest.raises(ValueError, match=message):  # the bert4keras route too
        RerunDecoder(end_id=END).beam_search([np.array([2])], **settings)


def test_decoder_nan_scores_named(nan_unilm):
    from bert4x.decoding import Decoder
    decoder = Decoder(nan_unilm, end_id=END, max_length=3)
    for run in (decoder.greedy, decoder.beam_search, decoder.sample):
        with pytest.raises(ValueError, match="the model produced NaN/inf scores at step 0"):
            run([[2, 5, 3]])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_predict_route_nan_scores_named(bad):
    from bert4x.decoding import RerunDecoder

    class Broken(RerunDecoder):
        rtype = "logits"

        def predict(self, inputs, output_ids, states):
            scores = np.zeros((len(output_ids), 6))
            scores[:, 4] = bad if output_ids.shape[1] == 1 else 0.0
            return scores

    with pytest.raises(ValueError, match="NaN/inf scores at step 1"):
        Broken(end_id=END, max_length=3, min_length=3).greedy([np.array([2])])


def test_beam_search_constraint_allowing_nothing(unilm):
    from bert4x.decoding import Decoder, RerunDecoder
    decoder = Decoder(unilm, end_id=END, max_length=4)
    with pytest.raises(ValueError, match=r"no token is allowed after prefix \[\] of source 0"):
        decoder.beam_search([[2, 5, 3]], beam_size=2, constraint=lambda index, prefix: [])
    with pytest.raises(ValueError, match=r"no token is allowed after prefix \[7\] of source 1"):
        decoder.beam_search([[2, 5, 3], [2, 6, 3]], beam_size=2,
                            constraint=lambda index, prefix: [] if index and prefix
                            else [7, END])

    class Uniform(RerunDecoder):
        def predict(self, inputs, output_ids, states):
            return np.full((len(output_ids), 6), 1 / 6)

    with pytest.raises(ValueError, match="no token is allowed"):
        Uniform(end_id=END, max_length=3).beam_search(
            [np.array([2])], beam_size=2, constraint=lambda index, prefix: [])


def test_decoder_position_boundary(unilm):
    """57 source tokens and 8 new ones use positions 0..63: the 8th is never fed."""
    from bert4x.decoding import Decoder
    decoder = Decoder(unilm, end_id=END, max_length=8, min_length=8)
    source = [2] + [5] * 55 + [3]
    result = decoder.greedy([source])[0]
    assert len(result.token_ids) == 8 and not result.ended
    assert len(decoder.beam_search([source], beam_size=2)[0][0].token_ids) == 8
    with pytest.raises(ValueError, match="a source of 58 tokens plus max_length 8 new "
                                         r"tokens needs 65 positions .* has 64"):
        decoder.greedy([[2] + [5] * 56 + [3]])


@pytest.mark.parametrize("family", ["roformer", "nezha"])
def test_decoder_without_position_table_has_no_length_limit(family):
    """max_position_embeddings sizes nothing in RoFormer and NEZHA: decoding past it
    runs (it used to be refused as for BERT)."""
    from bert4x.decoding import Decoder
    from bert4x.models import build_transformer_model
    builder = build_transformer_model(**dict(TINY_CONFIG, max_position_embeddings=8),
                                      model=family, application="unilm",
                                      return_keras_model=False)
    decoder = Decoder(builder, end_id=END, max_length=6, min_length=6)
    assert len(decoder.greedy([[2] + [5] * 8 + [3]])[0].token_ids) == 6


def test_decoder_limit_of_fairseq_roberta_names_its_rule():
    from bert4x.decoding import Decoder
    from bert4x.models import build_transformer_model
    builder = build_transformer_model(
        **dict(TINY_CONFIG, model_type="roberta", pad_token_id=1, type_vocab_size=1),
        application="unilm", return_keras_model=False)
    decoder = Decoder(builder, end_id=END, max_length=4)
    decoder.greedy([[2] + [5] * 57 + [3]])  # 59 + 3 = 62 positions: the most there are
    with pytest.raises(ValueError, match=r"needs 63 positions .* has 62 usable positions "
                                         r"\(max_position_embeddings 64 minus pad_token_id"):
        decoder.greedy([[2] + [5] * 58 + [3]])


@pytest.mark.parametrize("family", ["bert", "albert", "roformer", "nezha"])
def test_over_long_input_names_the_position_limit(family):
    """70 tokens into a model of 64 positions: an error naming the limit (it used to
    be a broadcast error of TensorFlow); families without a position table run."""
    from bert4x.models import build_transformer_model
    fields = dict(embedding_size=16) if family == "albert" else {}
    model = build_transformer_model(**dict(TINY_CONFIG, **fields), model=family)
    ids = np.full((2, 70), 5, "int32")
    if family in ("roformer", "nezha"):
        assert model.predict([ids, np.zeros_like(ids)], verbose=0).shape == (2, 70, 32)
        return
    for run in (lambda: model([ids, np.zeros_like(ids)]),
                lambda: model.predict([ids, np.zeros_like(ids)], verbose=0)):
        with pytest.raises(ValueError, match="an input of 70 tokens is longer than this "
                                             "model can take: its position table has 64 "
                                             "positions"):
            run()


# ------------------------------------------------ files: ensure_pretrained trains once
_ENSURE_WORKER = r"""
import json, os, sys, time, types
shared, name, real = sys.argv[1], sys.argv[2], sys.argv[3] == "real"
config = {"name": "tiny", "vocab": "chinese", "train_steps": 1, "warmup_steps": 0}


def record(config):
    with open(os.path.join(shared, "trainings"), "a") as file:
        file.write(name + "\n")


def fake_run_pretraining(config, log):
    # Stands in for the trainer: records that it ran, writes the export slowly so
    # that a caller that did not wait would see it half written.
    record(config)
    export = config.export_dir()
    os.makedirs(export, exist_ok=True)
    for file_name in ("bert_config.json", "bert_model.ckpt.index", "vocab.txt"):
        time.sleep(0.7)
        with open(os.path.join(export, file_name), "w") as file:
            file.write(name)
    return {"export_dir": export}


if real:  # the real trainer on a tiny model and corpus, counted
    import bert4x.pretraining.trainer as trainer
    run_pretraining = trainer.run_pretraining
    trainer.run_pretraining = lambda config, log: record(config) or run_pretraining(config, log=log)
    config.update(json.load(open(os.path.join(shared, "config.json"))))
else:
    sys.modules["bert4x.pretraining.trainer"] = types.SimpleNamespace(
        run_pretraining=fake_run_pretraining)
from bert4x.pretraining import ensure_pretrained

open(os.path.join(shared, name + ".ready"), "w").close()
while not all(os.path.exists(os.path.join(shared, n + ".ready")) for n in ("a", "b")):
    time.sleep(0.01)  # start both calls together
folder = ensure_pretrained(config, output_dir=os.path.join(shared, "run"), log=print)
print("folder:", folder, open(os.path.join(folder, "vocab.txt")).read().split()[-1])
"""


def _ensure_pretrained_twice(tmp_path, mode):
    """Run two processes calling ensure_pretrained together; return their outputs."""
    import subprocess
    import sys
    workers = [subprocess.Popen([sys.executable, "-c", _ENSURE_WORKER, str(tmp_path), name,
                                 mode],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for name in ("a", "b")]
    outputs = [worker.communicate(timeout=900)[0] for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), outputs
    trainings = (tmp_path / "trainings").read_text().split()
    assert len(trainings) == 1, outputs
    # Both return the same complete export, and the other one really waited.
    results = [output.strip().splitlines()[-1] for output in outputs]
    assert results[0] == results[1] and results[0].startswith(
        f"folder: {tmp_path / 'run' / 'export'} "), outputs
    assert sum("waiting for another process" in output for output in outputs) == 1, outputs
    assert (tmp_path / "run" / "result.json").exists()
    return str(tmp_path / "run" / "export")


def test_ensure_pretrained_concurrent_calls_train_once(tmp_path):
    _ensure_pretrained_twice(tmp_path, "fake")


@pytest.mark.slow
def test_ensure_pretrained_concurrent_calls_train_once_for_real(tmp_path):
    from bert4x.models import build_transformer_model
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(["滚滚长江东逝水，浪花淘尽英雄。是非成败转头空。",
                                    "话说天下大势，分久必合，合久必分。",
                                    "我爱北京天安门，天安门上太阳升。"] * 12), encoding="utf-8")
    (tmp_path / "config.json").write_text(json.dumps({
        "inputs": [str(corpus)], "vocab_trim_min_count": 1, "seq_length": 32,
        "batch_size": 4, "max_predictions": 8, "train_steps": 2, "checkpoint_every": 2,
        "log_every": 1, "eval_batches": 0, "validation_fraction": 0.0,
        "model": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "intermediate_size": 64, "max_position_embeddings": 64}}))
    folder = _ensure_pretrained_twice(tmp_path, "real")
    build_transformer_model(folder, folder, with_mlm=True)


# A user's script as users write them: no ``if __name__ == "__main__":`` guard. The
# trainer is stood in for by one that prepares the data for real (two files, two
# worker processes) and writes a stand-in export.
_GUARDLESS_SCRIPT = r"""
import json, os, sys, types
shared = sys.argv[1]


def run_pretraining(config, log):
    from bert4x.pretraining.run import prepare_data
    summary = prepare_data(config, progress=False)
    export = config.export_dir()
    os.makedirs(export, exist_ok=True)
    for file_name in ("bert_config.json", "bert_model.ckpt.index", "vocab.txt"):
        with open(os.path.join(export, file_name), "w") as file:
            file.write(str(summary["train_examples"]))
    return {"export_dir": export}


sys.modules["bert4x.pretraining.trainer"] = types.SimpleNamespace(
    run_pretraining=run_pretraining)
from bert4x.pretraining import ensure_pretrained

with open(os.path.join(shared, "script_runs"), "a") as file:
    file.write("run\n")
config = json.load(open(os.path.join(shared, "config.json")))
folder = ensure_pretrained(config, output_dir=os.path.join(shared, "run"), log=None)
print("examples:", open(os.path.join(folder, "vocab.txt")).read())
"""


def test_ensure_pretrained_from_a_script_without_main_guard_returns(tmp_path):
    """Data preparation's worker processes used to run the script again (spawn), whose
    ensure_pretrained call then waited forever for the lock its parent held."""
    import subprocess
    import sys
    from bert4x.pretraining import make_pretraining_data
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                               + list("天下大势分久必合长江东逝水。，")) + "\n", encoding="utf-8")
    inputs = []
    for index, text in enumerate(["天下大势，分久必合。", "长江东逝水。"]):
        inputs.append(str(tmp_path / f"part{index}.txt"))
        with open(inputs[-1], "w", encoding="utf-8") as file:
            file.write("\n\n".join([text * 3] * 20))
    (tmp_path / "config.json").write_text(json.dumps({
        "name": "guardless", "vocab": str(vocab), "inputs": inputs, "num_workers": 2,
        "seq_length": 16, "shard_size": 8}))
    script = tmp_path / "user_script.py"
    script.write_text(_GUARDLESS_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(tmp_path)],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "script_runs").read_text() == "run\n"  # no worker ran the script
    # The two worker processes wrote the records one process writes.
    import tensorflow as tf
    alone = make_pretraining_data(inputs, str(tmp_path / "alone"), str(vocab), seq_length=16,
                                  shard_size=8, num_workers=1, progress=False)
    assert result.stdout.strip() == f"examples: {alone['train_examples']}"
    for shard in alone["train_shards"]:
        records = [[tf.train.Example.FromString(record.numpy())
                    for record in tf.data.TFRecordDataset(str(folder / shard))]
                   for folder in (tmp_path / "run" / "data", tmp_path / "alone")]
        assert records[0] == records[1] and records[0], shard


def test_checkpoint_tied_decoder_copy_is_not_unused(tmp_path):
    """A RoBERTa safetensors file that keeps ``lm_head.decoder.weight`` (the tied
    copy of the word embeddings) loads; a fourth layer in it does not."""
    from safetensors.numpy import save_file

    from bert4x.models import build_transformer_model
    config = dict(TINY_CONFIG, max_position_embeddings=66, model_type="roberta",
                  pad_token_id=1)
    builder = build_transformer_model(model="roberta", **config, with_mlm=True,
                                      return_keras_model=False)
    hf = {}
    for name, value in _checkpoint_tensors(builder).items():
        hf_names, transpose = builder.hugging_face_names(name)
        hf[hf_names[0]] = np.ascontiguousarray(value.T if transpose else value)
    hf["lm_head.decoder.weight"] = hf["roberta.embeddings.word_embeddings.weight"]
    path = str(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(hf, path)
    build_transformer_model(checkpoint_path=path, model="roberta", with_mlm=True)
    hf["roberta.encoder.layer.3.output.dense.bias"] = np.zeros(32, np.float32)
    save_file(hf, path)
    with pytest.raises(ValueError, match=r"\['roberta.encoder.layer.3.output.dense.bias'\]"):
        build_transformer_model(checkpoint_path=path, model="roberta", with_mlm=True)


# ------------------------------------------------------------- the bert4keras layer
B4K_CONFIG = dict(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=16, max_position=16, type_vocab_size=2)
PADDED_IDS = np.array([[2, 3, 4, 0, 0], [5, 6, 7, 8, 9]])


def test_bert4keras_mask_survives_a_keras_reload(tmp_path):
    """Masked average pooling on a reloaded bert4keras model skips the padding (it used
    to average it: the reloaded layers no longer passed the mask on)."""
    import keras

    from bert4x.bert4keras.models import build_transformer_model
    bert = build_transformer_model(**B4K_CONFIG)
    path = str(tmp_path / "bert.keras")
    bert.save(path)
    loaded = keras.saving.load_model(path)
    pooled = keras.layers.GlobalAveragePooling1D()(loaded.output)
    inputs = [PADDED_IDS, np.zeros_like(PADDED_IDS)]
    found = keras.Model(loaded.inputs, pooled).predict(inputs, verbose=0)
    sequence = bert.predict(inputs, verbose=0)
    real = (PADDED_IDS > 0)[..., None]
    expected = (sequence * real).sum(1) / real.sum(1)  # NumPy masked mean
    np.testing.assert_allclose(found, expected, atol=1e-5)


def _keras_warnings(run):
    """The warnings and log records ``run()`` emits, but TensorFlow's retracing
    warning: it counts the traces of every model this process built before (the
    other tests'), not anything of ``run()``."""
    import logging
    import warnings

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        logging.getLogger().removeHandler(handler)
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in records]
    return [message for message in messages if "triggered tf.function retracing" not in message]


def test_bert4keras_lambda_on_masked_output_is_quiet():
    """bert4keras's ``Lambda`` drops the mask quietly, as in Keras 2 (Keras 3's warned
    on every run)."""
    import keras

    from bert4x.bert4keras.layers import Lambda
    from bert4x.bert4keras.models import build_transformer_model
    inputs = [PADDED_IDS, np.zeros_like(PADDED_IDS)]

    def run():
        bert = build_transformer_model(**B4K_CONFIG)
        first = Lambda(lambda x: x[:, 0], name="CLS-token")(bert.output)
        model = keras.Model(bert.inputs, first)
        model(inputs)
        model.predict(inputs, verbose=0)

    assert _keras_warnings(run) == []


def test_native_decoder_on_a_bert4keras_model_is_quiet():
    from bert4x.bert4keras.models import build_transformer_model
    from bert4x.decoding import Decoder

    def run():
        builder = build_transformer_model(application="unilm", return_keras_model=False,
                                          **B4K_CONFIG)
        assert len(Decoder(builder, end_id=3, max_length=3).greedy([[2, 5, 3]])) == 1

    assert _keras_warnings(run) == []


def test_forfit_feeds_labels_whose_size_one_axis_grows():
    """Labels ``[batch, n_spans, 2]`` with one span in the first batch and three later
    train (``fit`` used to die in TensorFlow with a TypeError on the later batch)."""
    import keras

    from bert4x.bert4keras import snippets

    class Spans(snippets.DataGenerator):
        def __iter__(self, random=False):
            for is_end, spans in self.sample(random):
                yield np.ones((1, 4)), np.full((1, spans, 2), 0.5)

    features = keras.Input((4,))
    model = keras.Model(features, keras.layers.Dense(2)(features))
    model.compile(loss=lambda y_true, y_pred: keras.ops.mean(
        keras.ops.square(keras.ops.mean(y_true, axis=1) - y_pred)), optimizer="sgd")
    batches = Spans([1, 1, 3], batch_size=1)
    history = model.fit(batches.forfit(random=False), steps_per_epoch=len(batches),
                        epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2


# ------------------------------------------------------------------ model inputs
@pytest.fixture(scope="module")
def tiny_encoder():
    from bert4x.models import build_transformer_model
    return build_transformer_model(**dict(TINY_CONFIG, num_hidden_layers=1))


@pytest.mark.parametrize("tokens, segments, message", [
    ([2, -1, 4], [0, 0, 0], r"Embedding-Token id -1 at position \(0, 1\) is outside 0\.\.99"),
    ([2, 100, 4], [0, 0, 0], r"Embedding-Token id 100 at position \(0, 1\) is outside 0\.\.99"),
    ([2, 3, 4], [0, 0, -1], r"Embedding-Segment id -1 at position \(0, 2\) is outside 0\.\.1"),
    ([2, 3, 4], [0, 2, 0], r"Embedding-Segment id 2 at position \(0, 1\) is outside 0\.\.1"),
])
def test_model_refuses_ids_outside_the_tables(tiny_encoder, tokens, segments, message):
    """-1 used to read the table's last row (Keras's take wraps); a traced predict
    now fails as for an id past the end instead."""
    inputs = [np.array([tokens]), np.array([segments])]
    with pytest.raises(ValueError, match=message):
        tiny_encoder(inputs)
    with pytest.raises(Exception, match="not in \\[0, "):  # TensorFlow's traced lookup
        tiny_encoder.predict(inputs, verbose=0)


def test_decoder_refuses_negative_source_ids(unilm):
    from bert4x.decoding import Decoder
    with pytest.raises(ValueError, match=r"outside 0\.\.99 .*\[-1\]"):
        Decoder(unilm, end_id=3).greedy([[2, -1, 3]])


def test_bert4keras_K_random_functions_and_refusals():
    import keras

    from bert4x.bert4keras.backend import K
    x = np.ones((200, 50), np.float32)
    dropped = keras.ops.convert_to_numpy(K.dropout(x, 0.5, seed=1))
    assert set(np.unique(dropped)) <= {0.0, 2.0} and 0.4 < (dropped == 0).mean() < 0.6
    uniform = keras.ops.convert_to_numpy(K.random_uniform((1000,), -1.0, 3.0, seed=2))
    assert uniform.min() >= -1 and uniform.max() < 3 and abs(uniform.mean() - 1) < 0.2
    normal = keras.ops.convert_to_numpy(K.random_normal((1000,), 5.0, 0.5, seed=3))
    assert abs(normal.mean() - 5) < 0.1 and abs(normal.std() - 0.5) < 0.1
    bits = keras.ops.convert_to_numpy(K.random_bernoulli((1000,), p=0.3, seed=4))
    assert set(np.unique(bits)) <= {0.0, 1.0} and 0.25 < bits.mean() < 0.35
    variable = K.variable(np.zeros(3, np.float32))
    K.update_add(variable, np.ones(3, np.float32))
    K.batch_set_value([(variable, K.get_value(variable) * 4)])
    np.testing.assert_array_equal(K.batch_get_value([variable])[0], [4.0, 4.0, 4.0])
    with pytest.raises(AttributeError, match="K.learning_phase is not offered .*training="):
        K.learning_phase()
