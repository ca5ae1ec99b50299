"""The MLM head at given positions (``mlm_positions``, keras-hub's ``mask_positions``):
its logits equal the full MLM head's output gathered at those positions with NumPy."""

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from bert4x.models import build_transformer_model  # noqa: E402
from bert4x.pretraining.run import build_pretraining_model  # noqa: E402

TINY = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=24, max_position_embeddings=32, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)
LENGTH, POSITIONS = 9, 3


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    token_ids = rng.integers(1, TINY["vocab_size"], (2, LENGTH)).astype("int32")
    token_ids[1, -2:] = 0  # padding
    segment_ids = np.zeros_like(token_ids)
    segment_ids[:, 5:] = 1
    positions = np.array([[0, 4, 8], [2, 2, 6]], "int32")  # a repeat; unsorted is fine
    return token_ids, segment_ids, positions


def run(model, inputs):
    """The model's outputs as NumPy, by a direct call (``predict_on_batch`` would trace a
    function per model for its one batch)."""
    outputs = model(inputs, training=False)
    if isinstance(outputs, (list, tuple)):
        return [keras.ops.convert_to_numpy(output) for output in outputs]
    return keras.ops.convert_to_numpy(outputs)


def gathered(full_logits, positions):
    return np.take_along_axis(np.asarray(full_logits), positions[..., None], axis=1)


def copy_weights(source, target):
    """Give ``target`` the weights of ``source``'s layers of the same names."""
    for layer in source.layers:
        if layer.weights:
            target.get_layer(layer.name).set_weights(layer.get_weights())


@pytest.mark.parametrize("model, application", [("bert", "encoder"), ("albert", "unilm")])
def test_mlm_positions_equal_full_head_gathered(batch, model, application):
    token_ids, segment_ids, positions = batch
    extra = dict(embedding_size=8) if model == "albert" else {}
    full = build_transformer_model(model=model, application=application, with_mlm="linear",
                                   **TINY, **extra)
    at_positions = build_transformer_model(model=model, application=application,
                                           with_mlm="linear", mlm_positions=True,
                                           **TINY, **extra)
    assert [tensor.name for tensor in at_positions.inputs][2] == "Input-MLM-Positions"
    copy_weights(full, at_positions)
    full_logits = run(full, [token_ids, segment_ids])
    if application == "encoder":
        full_logits = full_logits[1]
    got = run(at_positions, [token_ids, segment_ids, positions])
    if application == "encoder":
        sequence, got = got
        assert sequence.shape == (2, LENGTH, TINY["hidden_size"])
    assert got.shape == (2, POSITIONS, TINY["vocab_size"])
    np.testing.assert_allclose(got, gathered(full_logits, positions), rtol=1e-5, atol=1e-5)


def test_mlm_positions_with_probabilities(batch):
    token_ids, segment_ids, positions = batch
    builder = build_transformer_model(with_mlm=True, return_keras_model=False, **TINY)
    probabilities = run(builder.model, [token_ids, segment_ids])[1]
    at_positions = build_transformer_model(with_mlm=True, mlm_positions=True, **TINY)
    copy_weights(builder.model, at_positions)
    _, got = run(at_positions, [token_ids, segment_ids, positions])
    np.testing.assert_allclose(got, gathered(probabilities, positions), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)


def test_positions_model_and_pretraining_model_share_the_builders_weights(batch):
    token_ids, segment_ids, positions = batch
    builder = build_transformer_model(with_mlm="linear", return_keras_model=False, **TINY)
    full_logits = run(builder.model, [token_ids, segment_ids])[1]
    expected = gathered(full_logits, positions)
    positions_model = builder.mlm_positions_model()
    pretraining = build_pretraining_model(builder, LENGTH, POSITIONS)
    assert pretraining.name == "bert_pretraining"
    assert tuple(pretraining.inputs[2].shape) == (None, POSITIONS)
    for model in (positions_model, pretraining):
        assert {id(w) for w in model.weights} <= {id(w) for w in builder.model.weights}
        got = run(model, [token_ids, segment_ids, positions])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_conditional_model_takes_positions_before_the_additional_inputs(batch):
    token_ids, segment_ids, positions = batch
    condition = keras.Input((4,), name="Condition")
    model = build_transformer_model(with_mlm="linear", mlm_positions=True,
                                    layer_norm_cond=condition,
                                    additional_input_layers=condition, **TINY)
    assert [tensor.name for tensor in model.inputs][2:] == ["Input-MLM-Positions",
                                                           "Condition"]
    _, logits = run(model, [token_ids, segment_ids, positions,
                            np.ones((2, 4), "float32")])
    assert logits.shape == (2, POSITIONS, TINY["vocab_size"])


def test_mlm_positions_need_the_mlm_head():
    with pytest.raises(ValueError, match="mlm_positions needs the MLM head"):
        build_transformer_model(mlm_positions=True, **TINY)
    builder = build_transformer_model(return_keras_model=False, **TINY)
    with pytest.raises(ValueError, match="needs the MLM head"):
        builder.mlm_positions_model()
