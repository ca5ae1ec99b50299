"""Fault tests (issue 11): damaged files and odd settings get an error that names the
culprit, never a silent wrong result.

Each section holds the faults of one area; every test here failed before its fix.
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
