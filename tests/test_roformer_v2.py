"""RoFormer-V2 beyond its parity: left-to-right decoding, its heads, its initializer.

Parity with bert4keras 0.11.5 is in ``test_bert4keras.py``; parity with a NumPy
reference on every backend, the official checkpoint names written back bit for bit,
``.keras`` files and ``keep_tokens`` in ``test_families.py``; UniLM cached decoding
on every backend in ``test_generation.py``.
"""

import os
import sys

import keras
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _generation_worker as worker  # noqa: E402
from bert4x.checkpoints import save_checkpoint  # noqa: E402
from bert4x.layers import FanTruncatedNormal  # noqa: E402
from bert4x.models import build_transformer_model  # noqa: E402

TINY = dict(vocab_size=50, hidden_size=12, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=20, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def test_lm_cache_matches_full_reruns():
    """UniLM caches are checked on every backend in ``test_generation.py``; here LM."""
    builder = worker.build_family("roformer_v2", application="lm")
    assert worker.check_cache(builder) < 1e-4


def test_its_layers_have_no_biases_and_its_norms_no_weights():
    builder = build_transformer_model(model="roformer_v2", embedding_size=8, with_mlm=True,
                                      return_keras_model=False, **TINY)
    paths = [variable.path for variable in builder.model.trainable_weights]
    assert not [path for path in paths if path.endswith(("/bias", "/gamma", "/beta"))]
    assert "Output-Mapping/kernel" in paths
    # bert4keras's order: the embeddings' dropout comes before their norm.
    norm = builder.model.get_layer("Embedding-Norm")
    assert norm.input._keras_history.operation.name == "Embedding-Dropout"
    assert builder.model.get_layer("Transformer-1-FeedForward-Norm").get_config()[
        "zero_mean"] is False


def test_heads_and_conditions_it_has_not_are_refused():
    with pytest.raises(ValueError, match="no \\['pool'\\] head"):
        build_transformer_model(model="roformer_v2", with_pool=True, **TINY)
    condition = keras.Input((3,), name="condition")
    with pytest.raises(ValueError, match="norms of 'roformer_v2' have neither"):
        build_transformer_model(model="roformer_v2", layer_norm_cond=condition,
                                additional_input_layers=condition, **TINY)


def test_a_checkpoint_without_the_output_mapping_loads_with_allow_missing_heads(tmp_path):
    """bert4keras neither saves nor loads the output mapping (E != H): its checkpoints
    lack it, and bert4x's name for it is a head weight."""
    encoder = build_transformer_model(model="roformer_v2", embedding_size=8,
                                      return_keras_model=False, **TINY)
    save_checkpoint(encoder, str(tmp_path))
    with pytest.raises(ValueError, match="cls/predictions/output_mapping/kernel.*"
                                         "allow_missing_heads=True"):
        build_transformer_model(checkpoint_path=str(tmp_path), with_mlm=True)
    with pytest.warns(UserWarning, match="output_mapping"):
        model = build_transformer_model(checkpoint_path=str(tmp_path), with_mlm=True,
                                        allow_missing_heads=True)
    assert model.name == "roformer_v2"


def test_its_initializer_draws_as_bert4keras():
    """Standard deviation ``num_hidden_layers ** -0.5 / sqrt(fan)``, cut at two of them;
    the fan of a table under 10 or over 10000 rows is its width."""
    builder = build_transformer_model(model="roformer_v2", return_keras_model=False,
                                      **dict(TINY, hidden_size=64, num_attention_heads=4,
                                             intermediate_size=256, num_hidden_layers=4))
    for name, fan in (("Transformer-0-FeedForward/output/kernel", 256),
                      ("Transformer-3-MultiHeadSelfAttention/query/kernel", 64),
                      ("Embedding-Token/embeddings", 50),
                      ("Embedding-Segment/embeddings", 64)):
        values = next(keras.ops.convert_to_numpy(variable) for variable
                      in builder.model.weights if variable.path == name)
        stddev = 0.5 / np.sqrt(fan)
        assert abs(values.std() / stddev - 1) < 0.15, name
        assert np.abs(values).max() <= 2 * 1.13684723 * stddev + 1e-6, name
    restored = FanTruncatedNormal.from_config(FanTruncatedNormal(gain=0.5).get_config())
    assert restored.gain == 0.5
