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


def test_checkpoint_extra_layers_refused_in_safetensors(three_layer_checkpoint, tmp_path):
    """The same rule for Hugging Face names (without the ``bert.`` prefix, as
    ``BertModel`` saves them, plus its ``position_ids`` buffer, which is no weight)."""
    from safetensors.numpy import save_file

    from bert4x.models import build_transformer_model
    _, tensors = three_layer_checkpoint
    hf = {}
    for name, value in tensors.items():
        if name.startswith("bert/") and "pooler" not in name:
            hf_name = name[len("bert/"):].replace("/layer_", "/layer.").replace("/", ".")
            hf_name = hf_name.replace(".gamma", ".weight").replace(".beta", ".bias")
            if hf_name.endswith(".kernel"):
                hf_name, value = hf_name[: -len(".kernel")] + ".weight", value.T
            elif hf_name.endswith("_embeddings"):
                hf_name += ".weight"
            hf[hf_name] = np.ascontiguousarray(value)
    hf["embeddings.position_ids"] = np.arange(64, dtype=np.int64)[None]
    path = str(tmp_path / "model.safetensors")
    save_file(hf, path)
    (tmp_path / "config.json").write_text(json.dumps(dict(TINY_CONFIG, num_hidden_layers=3)))
    build_transformer_model(checkpoint_path=path)
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
    from bert4x.decoding import AutoRegressiveDecoder, Decoder
    with pytest.raises(ValueError, match=message):
        Decoder(unilm, end_id=END, max_length=3).beam_search([[2, 5, 3]], **settings)
    with pytest.raises(ValueError, match=message):  # the bert4keras route too
        AutoRegressiveDecoder(end_id=END).beam_search([np.array([2])], **settings)


def test_decoder_nan_scores_named(nan_unilm):
    from bert4x.decoding import Decoder
    decoder = Decoder(nan_unilm, end_id=END, max_length=3)
    for run in (decoder.greedy, decoder.beam_search, decoder.sample):
        with pytest.raises(ValueError, match="the model produced NaN/inf scores at step 0"):
            run([[2, 5, 3]])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_predict_route_nan_scores_named(bad):
    from bert4x.decoding import AutoRegressiveDecoder

    class Broken(AutoRegressiveDecoder):
        rtype = "logits"

        def predict(self, inputs, output_ids, states):
            scores = np.zeros((len(output_ids), 6))
            scores[:, 4] = bad if output_ids.shape[1] == 1 else 0.0
            return scores

    with pytest.raises(ValueError, match="NaN/inf scores at step 1"):
        Broken(end_id=END, max_length=3, min_length=3).greedy([np.array([2])])


def test_beam_search_constraint_allowing_nothing(unilm):
    from bert4x.decoding import AutoRegressiveDecoder, Decoder
    decoder = Decoder(unilm, end_id=END, max_length=4)
    with pytest.raises(ValueError, match=r"no token is allowed after prefix \[\] of source 0"):
        decoder.beam_search([[2, 5, 3]], beam_size=2, constraint=lambda index, prefix: [])
    with pytest.raises(ValueError, match=r"no token is allowed after prefix \[7\] of source 1"):
        decoder.beam_search([[2, 5, 3], [2, 6, 3]], beam_size=2,
                            constraint=lambda index, prefix: [] if index and prefix
                            else [7, END])

    class Uniform(AutoRegressiveDecoder):
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
