"""The Megatron-style layout map of bert4x.distribution, in process (no devices needed).

Every family is built tiny with every head it has; each of its variables must match
exactly one layout rule (LayoutMap refuses a path that two keys match), and the split
variables get the axes the rules promise. Training on a real mesh is tested in
tests/test_pretraining.py (JAX subprocesses).
"""

import os
import re

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402

from bert4x.distribution import (LAYOUT_RULES, bytes_per_device, layout_map,  # noqa: E402
                                 parse_mesh, variable_layouts)
from bert4x.families import MODELS  # noqa: E402
from bert4x.models import build_transformer_model  # noqa: E402

# vocab 32, hidden 8, feed-forward 16: all divisible by a model axis of 4; one layer
# (ALBERT variants still get their shared block, the others "Transformer-0-").
TINY = dict(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=16, max_position_embeddings=16, type_vocab_size=2)
# (family, config changes, heads): every head and layout variant each family has.
VARIANTS = [
    ("bert", {}, dict(with_pool=True, with_nsp=True, with_mlm=True)),
    ("roberta", {}, dict(with_pool=True, with_mlm=True)),
    ("albert", dict(embedding_size=4), dict(with_pool=True, with_nsp=True, with_mlm=True)),
    ("albert", dict(embedding_size=4, ln_type="postln"), dict(with_mlm=True)),  # brightmart
    ("albert_unshared", dict(embedding_size=4), dict(with_pool=True, with_mlm=True)),
    ("electra", dict(embedding_size=4), dict(with_mlm=True)),  # generator
    ("electra", dict(embedding_size=4), dict(with_discriminator=True)),
    ("roformer", dict(embedding_size=4), dict(with_pool=True, with_nsp=True, with_mlm=True)),
    ("nezha", {}, dict(with_pool=True, with_nsp=True, with_mlm=True)),
    ("roformer_v2", dict(embedding_size=4), dict(with_mlm=True)),  # no biases, no gamma/beta
    ("gpt", {}, {}),  # language models: the tied LM head alone
    ("gpt2", dict(type_vocab_size=0), {}),  # pre-norm blocks, Output-Norm
    ("gpt2_ml", dict(type_vocab_size=0), {}),
] + [(name + part, {}, {})  # T5: encoder-decoders without heads (1.1: gated, untied)
     for name in ("t5", "t5.1.0", "t5.1.1", "mt5.1.1") for part in ("", "_encoder", "_decoder")]
SPLIT = {
    "Embedding-Token/embeddings": ("model", None),
    "MLM-Bias/bias": ("model",),
    "MultiHeadSelfAttention/query/kernel": (None, "model"),
    "MultiHeadSelfAttention/key/kernel": (None, "model"),
    "MultiHeadSelfAttention/value/kernel": (None, "model"),
    "MultiHeadSelfAttention/output/kernel": ("model", None),
    "FeedForward/intermediate/kernel": (None, "model"),
    "FeedForward/output/kernel": ("model", None),
    "MultiHeadCrossAttention/query/kernel": (None, "model"),
    "MultiHeadCrossAttention/key/kernel": (None, "model"),
    "MultiHeadCrossAttention/value/kernel": (None, "model"),
    "MultiHeadCrossAttention/output/kernel": ("model", None),
    "FeedForward/intermediate_1/kernel": (None, "model"),
    "Decoder-Output-LM/kernel": (None, "model"),
}


def _mesh(data, model):
    # Device names only: the mesh is never turned into a backend mesh here.
    return keras.distribution.DeviceMesh((data, model), ["data", "model"],
                                         devices=[f"cpu:{i}" for i in range(data * model)])


def _expected_axes(path):
    for suffix, axes in SPLIT.items():
        if path.endswith(suffix):
            return axes
    return ()  # replicated, whatever the rank


@pytest.fixture(scope="module")
def built_variants():
    return [(family, changes, build_transformer_model(model=family, **heads,
                                                      **dict(TINY, **changes)))
            for family, changes, heads in VARIANTS]


def test_every_family_is_covered_by_the_variants():
    assert {family for family, _, _ in VARIANTS} == set(MODELS)


def test_every_variable_of_every_family_gets_its_megatron_layout(built_variants):
    mesh = _mesh(2, 4)
    listed = {}
    for family, changes, model in built_variants:
        layouts = layout_map(model, mesh)
        for variable in model.variables:
            # LayoutMap itself resolves the path: None would be Keras's silent default,
            # two matching keys an error.
            layout = layouts[variable.path]
            assert layout is not None, (family, variable.path)
            assert tuple(layout.axes) == _expected_axes(variable.path), (
                family, changes, variable.path, layout.axes)
            listed.setdefault(family, set()).add(re.sub(r"\d+", "N", variable.path))
    # The split rules were exercised by every family (ELECTRA's discriminator has no MLM).
    for family, paths in listed.items():
        assert any(path.endswith("FeedForward/output/kernel") for path in paths), family
        assert "Embedding-Token/embeddings" in paths, family
    # Every rule is used by some family (none is dead).
    used = {rule for _, _, model in built_variants
            for rule, _, _ in variable_layouts(model, 4).values()}
    assert used == {name for name, _, _ in LAYOUT_RULES} - {
        "conditional norm weights (replicated)"}


def test_a_dimension_the_model_axis_does_not_divide_is_replicated():
    model = build_transformer_model(**dict(TINY, vocab_size=30), with_mlm=True)
    layouts = variable_layouts(model, 4)
    assert layouts["Embedding-Token/embeddings"][2] == (None, None)  # 30 % 4
    assert layouts["MLM-Bias/bias"][2] == (None,)
    assert layouts["Transformer-0-FeedForward/intermediate/kernel"][2] == (None, "model")
    assert variable_layouts(model, 3)["Transformer-0-FeedForward/intermediate/kernel"][2] \
        == (None, None)  # 16 % 3


def test_a_variable_no_rule_matches_is_named_and_extra_rules_cover_it():
    label = keras.Input((), dtype="int32", name="Input-Label")
    condition = keras.layers.Embedding(3, 8, name="Label-Embedding")(label)
    builder = build_transformer_model(**dict(TINY, num_hidden_layers=1),
                                      layer_norm_cond=condition, additional_input_layers=label,
                                      return_keras_model=False)
    with pytest.raises(ValueError, match=r"Label-Embedding/embeddings \(3, 8\).*extra_rules"):
        layout_map(builder, _mesh(2, 4))
    layouts = layout_map(builder, _mesh(2, 4),
                         extra_rules={"Label-Embedding/embeddings": None})
    assert tuple(layouts["Embedding-Norm/gamma_dense/kernel"].axes) == ()
    assert tuple(layouts["Label-Embedding/embeddings"].axes) == ()


def test_a_callable_is_built_without_allocating_and_gives_the_same_map():
    mesh = _mesh(1, 2)
    built = layout_map(build_transformer_model(**TINY, with_mlm=True), mesh)
    deferred = layout_map(lambda: build_transformer_model(**TINY, with_mlm=True), mesh)
    assert {key: tuple(value.axes) for key, value in built.items()} == {
        key: tuple(value.axes) for key, value in deferred.items()}


def test_mesh_text_is_read_and_checked():
    assert parse_mesh("data=2,model=4", 8) == (2, 4)
    assert parse_mesh("model=8", 8) == (1, 8)
    assert parse_mesh("data=8", 8) == (8, 1)
    for text, message in (("data=3", "does not divide"), ("data=2,model=2", "has 4 devices"),
                          ("pipe=2", "expected 'data=D,model=M'"),
                          ("data=2,data=4", "twice"), ("model=0", "positive")):
        with pytest.raises(ValueError, match=message):
            parse_mesh(text, 8)
    with pytest.raises(ValueError, match="no 'model' axis"):
        layout_map(build_transformer_model(**TINY),
                   keras.distribution.DeviceMesh((2,), ["data"], devices=["cpu:0", "cpu:1"]))


def test_bytes_per_device_splits_only_the_sharded_variables():
    shapes = {"Embedding-Token/embeddings": (32, 8), "MLM-Bias/bias": (32,),
              "Transformer-0-FeedForward/output/kernel": (16, 8),
              "Transformer-0-FeedForward/output/bias": (8,)}
    assert bytes_per_device(shapes, 1) == 4 * (256 + 32 + 128 + 8)
    assert bytes_per_device(shapes, 4) == 4 * (64 + 8 + 32 + 8)
    assert bytes_per_device(shapes, 3) == 4 * (256 + 32 + 128 + 8)  # nothing divides
