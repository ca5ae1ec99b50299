"""The family registry: families add themselves, declare what they own, and the core
(config checks, checkpoint reading) learns about them from the registry only.

A family of a test's own is written as a module in a temporary folder and imported,
as a new family of bert4x would be; the registry is restored after each test.
"""

import ast
import importlib.util
import json
import os
import re
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bert4x import registry  # noqa: E402
from bert4x.configs import BertConfig  # noqa: E402
from bert4x.families import ALBERT, BERT, MODELS, NEZHA, ALBERTUnshared  # noqa: E402
from bert4x.models import build_transformer_model  # noqa: E402
from bert4x.registry import ConfigField  # noqa: E402
from bert4x.transformer import EMBEDDING_SIZE, Transformer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=32)
BUILT_IN = ["bert", "roberta", "albert", "albert_unshared", "electra", "roformer", "nezha",
            "roformer_v2", "gpt", "gpt2", "gpt2_ml"]

# A family as a new module of bert4x would write it: BERT's math, its own
# Hugging Face names (``toy.*``), BERT's official checkpoints.
TOY_MODULE = '''
from bert4x.families import BERT


class Toy(BERT):
    """BERT under Hugging Face names of its own."""

    family = "toy"
    model_types = ("toy",)
    same_weights_as = ("bert",)
    hf_renames = (("^bert/", "toy/"),)
    hf_prefix = "toy"
'''


@pytest.fixture(autouse=True)
def registry_restored():
    """Each test leaves the registry as it found it (families it defined go)."""
    registered = dict(MODELS)
    yield
    MODELS.clear()
    MODELS.update(registered)


@pytest.fixture
def toy(tmp_path):
    """The toy family, imported from a module file of its own."""
    path = tmp_path / "toy_family.py"
    path.write_text(TOY_MODULE)
    spec = importlib.util.spec_from_file_location("toy_family", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_family"] = module
    try:
        spec.loader.exec_module(module)
        yield module.Toy
    finally:
        del sys.modules["toy_family"]


def test_built_in_families_are_registered_in_order():
    assert list(MODELS)[:len(BUILT_IN)] == BUILT_IN
    assert registry.family_of("albert") == "albert" and registry.family_of("gpt9") == "gpt9"


def test_a_family_module_registers_itself(toy, tmp_path):
    assert MODELS["toy"] is toy and registry.family_of("toy") == "toy"
    builder = build_transformer_model(model="toy", with_mlm=True, return_keras_model=False,
                                      **TINY)
    assert type(builder) is toy and builder.model.name == "toy"
    # A config of its model_type picks it; another family is told to pass it.
    assert build_transformer_model(model_type="toy", return_keras_model=False,
                                   **TINY).family == "toy"
    with pytest.raises(ValueError, match="model_type 'toy' is not a 'bert' model; pass "
                                         "model='toy'"):
        build_transformer_model(model="bert", model_type="toy", **TINY)
    assert builder.hugging_face_names("bert/encoder/layer_1/output/dense/kernel") == (
        ["toy.encoder.layer.1.output.dense.weight", "encoder.layer.1.output.dense.weight"],
        True)


def test_a_new_family_is_read_and_written_by_the_generic_reader(toy, tmp_path):
    """Its Hugging Face names (with and without its base prefix) load; its exports
    reload as itself and, as it declares, as BERT."""
    from safetensors.numpy import save_file

    from bert4x.checkpoints import keras_value, save_checkpoint
    builder = build_transformer_model(model="toy", with_mlm=True, return_keras_model=False,
                                      **TINY)
    (tmp_path / "config.json").write_text(json.dumps(dict(TINY, model_type="toy")))
    ids = np.array([[2, 7, 9, 3, 5, 0]], "int32")

    def mlm(model):
        return np.asarray(model([ids, np.zeros_like(ids)])[1])

    expected = mlm(builder.model)
    for strip in (False, True):
        tensors = {}
        for name, variable, kind in builder.variable_map():
            value = np.asarray(keras_value(variable), np.float32)
            value = value.T if kind == "transposed" else value
            names, transpose = builder.hugging_face_names(name)
            key = names[1] if strip and names[0].startswith("toy.") else names[0]
            tensors[key] = np.ascontiguousarray(value.T if transpose else value)
        tensors["toy.embeddings.position_ids"] = np.arange(32)[None]  # a buffer, ignored
        path = str(tmp_path / f"toy_{strip}.safetensors")
        save_file(tensors, path)
        loaded = build_transformer_model(checkpoint_path=path, with_mlm=True)  # model_type
        np.testing.assert_allclose(mlm(loaded), expected, atol=1e-6)
    save_checkpoint(builder, str(tmp_path / "export"))
    for family in ("toy", "bert"):
        reloaded = build_transformer_model(str(tmp_path / "export"), model=family,
                                           with_mlm=True)
        np.testing.assert_allclose(mlm(reloaded), expected, atol=1e-6)
    with pytest.raises(ValueError, match="saved from a 'toy' model.*as a 'nezha' model"):
        build_transformer_model(str(tmp_path / "export"), model="nezha", with_mlm=True)


def _choices(owners):
    """``model='a', model='b' or model='c'``, as the errors list the owners."""
    choices = [f"model='{owner}'" for owner in owners]
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


@pytest.mark.parametrize("family, fields, shown, owners", [
    ("bert", dict(ln_type="postln"), "ln_type='postln'", ["albert"]),
    ("albert_unshared", dict(embedding_size=8, ln_type="postln"), "ln_type='postln'",
     ["albert"]),
    ("roberta", dict(num_hidden_groups=2), "num_hidden_groups=2",
     ["albert", "albert_unshared"]),
    ("electra", dict(embedding_size=8, use_relative_position=True),
     "use_relative_position=True", ["nezha"]),
    ("bert", dict(max_relative_position=3), "max_relative_position=3", ["nezha"]),
    ("nezha", dict(rotary_value=True), "rotary_value=True", ["roformer", "roformer_v2"]),
    ("nezha", dict(embedding_size=8), "embedding_size 8 != hidden_size 16",
     ["albert", "albert_unshared", "electra", "roformer", "roformer_v2"]),
])
def test_a_field_of_other_families_is_refused_naming_its_owners(family, fields, shown,
                                                                 owners):
    with pytest.raises(ValueError, match=re.escape(f"config field {shown} (") + ".*"
                       + re.escape(f") belongs to {', '.join(map(repr, owners[:-1]))}")
                       + ".*" + re.escape(f": pass {_choices(owners)}, not '{family}'")):
        build_transformer_model(model=family, **dict(TINY, **fields))


def test_neutral_values_of_other_families_fields_are_accepted():
    for fields in (dict(embedding_size=16), dict(use_relative_position=False),
                   dict(rotary_value=False), dict(num_hidden_groups=1, inner_group_num=1)):
        build_transformer_model(model="bert", **dict(TINY, **fields))


def test_a_family_refuses_values_of_its_own_fields_it_cannot_build():
    with pytest.raises(ValueError, match="use_relative_position is false"):
        build_transformer_model(model="nezha", use_relative_position=False, **TINY)
    with pytest.raises(NotImplementedError, match="only brightmart's post-norm"):
        build_transformer_model(model="albert", ln_type="preln", **TINY)


def test_a_family_declares_the_fields_it_owns():
    assert set(NEZHA.config_fields) == {"use_relative_position", "max_relative_position"}
    assert "ln_type" in ALBERT.config_fields and "ln_type" not in ALBERTUnshared.config_fields
    assert registry.owners("embedding_size") == ["albert", "albert_unshared", "electra",
                                                 "roformer", "roformer_v2"]
    assert BERT.config_fields == {}
    for family in MODELS.values():
        assert set(family.config_fields) <= set(BertConfig.field_names())


def test_families_that_read_one_anothers_weights():
    assert registry.read_same_weights("bert", "roberta")
    assert registry.read_same_weights("roberta", "bert")
    assert registry.read_same_weights("albert_unshared", "albert")
    assert registry.read_same_weights("electra", "electra")
    assert not registry.read_same_weights("bert", "albert")
    assert not registry.read_same_weights("nezha", "gpt9")


def test_a_family_name_is_taken_once():
    with pytest.raises(ValueError, match="'nezha' is taken by bert4x.families.nezha.NEZHA"):
        type("Impostor", (BERT,), {"family": "nezha", "__module__": __name__})
    assert MODELS["nezha"] is NEZHA

    def define():
        class Again(BERT):
            family = "again"
        return Again

    first, second = define(), define()  # a class defined again replaces itself
    assert first is not second and MODELS["again"] is second
    registry.unregister("again")
    assert "again" not in MODELS
    with pytest.raises(KeyError, match="no family 'again'"):
        registry.unregister("again")


def test_variants_of_a_family_are_not_registered():
    """A subclass that keeps its family's name (bert4keras's masking builder) is a
    variant: the family stays registered as itself."""
    class Variant(NEZHA):
        pass

    assert MODELS["nezha"] is NEZHA and Variant.family == "nezha"


@pytest.mark.parametrize("attributes, message", [
    (dict(config_fields={"ln_typ": ConfigField()}), r"names \['ln_typ'\], which are not"),
    (dict(factorised=True), "a factorised family owns embedding_size"),
    (dict(config_fields={"embedding_size": EMBEDDING_SIZE}),
     "a factorised family owns embedding_size"),
    (dict(config_fields={"ln_type": ConfigField(neutral=("postln",))}),
     "'albert' at \\(None,\\)"),
])
def test_a_declaration_that_cannot_work_is_refused_when_defined(attributes, message):
    attributes = dict(attributes, family="broken", block_names=BERT.block_names,
                      __module__=__name__)
    with pytest.raises(TypeError, match=message):
        type("Broken", (Transformer,), attributes)
    assert "broken" not in MODELS


def test_a_family_without_block_names_is_refused():
    with pytest.raises(TypeError, match="declares no block_names"):
        type("Nameless", (Transformer,), {"family": "nameless", "__module__": __name__})


def test_checkpoints_knows_no_family():
    """The reader and writer take every family rule from the builder: no family name,
    base prefix or head prefix is written in checkpoints.py outside its docstrings."""
    with open(os.path.join(ROOT, "bert4x", "checkpoints.py"), encoding="utf-8") as file:
        tree = ast.parse(file.read())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    texts = [node.value for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and id(node) not in docstrings]
    words = {name for family in MODELS.values() for name in (family.family, family.hf_prefix)
             if name is not None}  # a family without Hugging Face files (or T5, whose names
             # have no base prefix) has no hf_prefix
    pattern = re.compile(r"(?<!\w)(" + "|".join(sorted(words)) + r"|cls)(?!\w)",
                         re.IGNORECASE)
    found = sorted({match.group(0) for text in texts for match in pattern.finditer(text)})
    assert not found, f"family names in checkpoints.py: {found}"


def test_missing_position_table_names_the_registered_families_without_one(toy, tmp_path):
    """The hint lists the registered families without a position table, whichever
    they are."""
    from bert4x.checkpoints import save_checkpoint

    class Rotary(NEZHA):
        family = "rotary_toy"
        model_types = ("rotary_toy",)

    nezha = build_transformer_model(model="nezha", return_keras_model=False, **TINY)
    save_checkpoint(nezha, str(tmp_path / "nezha"))
    with pytest.raises(ValueError, match="pass model='nezha', model='roformer', "
                                         "model='roformer_v2' or model='rotary_toy' "
                                         "\\(this is a 'toy' model\\)"):
        build_transformer_model(checkpoint_path=str(tmp_path / "nezha"), model="toy",
                                family=None, **TINY)


# ------------------------------------------------------- a family's own config class
def test_a_family_with_its_own_config_class_reads_its_fields_and_file_names(tmp_path):
    """A family declares a BertConfig subclass: its fields, and other names for fields
    in its config files (aliases); build_transformer_model reads the file with it."""
    import dataclasses
    import typing

    @dataclasses.dataclass
    class WideConfig(BertConfig):
        aliases: typing.ClassVar[dict] = {"n_embd": "hidden_size"}
        extra_width: int = 0

    class Wide(BERT):
        family = "wide_test"
        model_types = ("wide_test",)
        config_class = WideConfig

    path = tmp_path / "config.json"
    fields = {key: value for key, value in TINY.items() if key != "hidden_size"}
    path.write_text(json.dumps(dict(fields, model_type="wide_test", n_embd=24,
                                    extra_width=3)))
    model = build_transformer_model(str(path), return_keras_model=False)
    assert type(model) is Wide
    assert model.config.hidden_size == 24 and model.config.extra_width == 3
    path.write_text(json.dumps(dict(fields, model_type="wide_test", n_embd=24,
                                    hidden_size=32)))
    with pytest.raises(ValueError, match="n_embd=24 and hidden_size=32"):
        build_transformer_model(str(path))
    with pytest.raises(TypeError, match="needs a WideConfig, got a BertConfig"):
        Wide(BertConfig(**TINY))


def test_a_config_class_that_is_not_a_bert_config_is_refused():
    with pytest.raises(TypeError, match="config_class must be BertConfig or a subclass"):
        class Odd(BERT):  # noqa: F841
            family = "odd_test"
            config_class = dict
