"""T5 and mT5: configs, the bert4keras interface, checkpoints in both formats, cached
decoding. Parity with transformers on every backend is in ``test_families.py``; here the
TensorFlow backend is compared on log-probabilities, the tighter check.

References are tiny random transformers models (``_t5_cases.py``): T5.1.0 (ReLU,
tied, scaled output), T5.1.1 (gated GELU, untied) and mT5, saved as Hugging Face
folders and under the official names by the test's own rules.
"""

import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from bert4x.decoding import Decoder  # noqa: E402
from bert4x.families import T5Config  # noqa: E402
from bert4x.models import MODELS, build_transformer_model  # noqa: E402
from _oracle import import_oracle  # noqa: E402
import _generation_worker  # noqa: E402
import _t5_cases  # noqa: E402
from test_generation import assert_same_ranking, enumerate_sequences, rank  # noqa: E402

torch = import_oracle("torch")
transformers = import_oracle("transformers")

TOL = 1e-4
TINY = dict(vocab_size=30, hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=16)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """``{version: dict(hf=folder, official=prefix, model=transformers model, ...)}``."""
    root = tmp_path_factory.mktemp("t5")
    encoder_ids, decoder_ids = _t5_cases.inputs()
    found = {}
    for version in _t5_cases.VERSIONS:
        hf_folder = str(root / version / "hf")
        model = _t5_cases.hf_model(version, hf_folder, seed=3)
        weights = _t5_cases.official_weights(model, version)
        prefix = _t5_cases.write_official(str(root / version / "official"), weights,
                                          _t5_cases.bert4keras_config(version))
        probabilities, encoded = _t5_cases.hf_outputs(model, encoder_ids, decoder_ids)
        found[version] = dict(hf=hf_folder, official=prefix, model=model, weights=weights,
                              probabilities=probabilities, encoded=encoded)
    return found


def run(model, inputs):
    """A model's output on one small batch as NumPy, by an eager call: what ``predict``
    gives, without tracing a ``tf.function`` for each model."""
    return keras.ops.convert_to_numpy(model(inputs))


def log_probabilities(probabilities, decoder_ids):
    """Log-probabilities at the decoder's real positions."""
    return np.log(np.asarray(probabilities, np.float64))[_t5_cases.decoder_positions(
        decoder_ids)]


def assert_matches(builder, reference, what):
    encoder_ids, decoder_ids = _t5_cases.inputs()
    probabilities = run(builder.model, [encoder_ids, decoder_ids])
    error = np.abs(log_probabilities(probabilities, decoder_ids)
                   - log_probabilities(reference["probabilities"], decoder_ids)).max()
    assert error < TOL, f"{what}: log-probabilities differ by {error:.3g}"
    encoded = run(builder.encoder, encoder_ids)
    real = encoder_ids != 0
    assert np.abs(encoded - reference["encoded"])[real].max() < TOL, what
    assert not encoded[~real].any(), "the encoder's output is zero at the padding"


# ---------------------------------------------------------------------------- configs
@pytest.mark.parametrize("version, family, gated, tied", [
    ("t5.1.0", "t5", False, True), ("t5.1.1", "t5", True, False),
    ("mt5.1.1", "mt5.1.1", True, False)])
def test_hugging_face_folders_build_their_family(references, version, family, gated, tied):
    """config.json's model_type picks the family and the config the architecture
    (transformers 5 writes tie_word_embeddings: true for all: its
    scale_decoder_outputs tells T5.1.0 apart; mT5 is never tied)."""
    builder = build_transformer_model(checkpoint_path=references[version]["hf"],
                                      return_keras_model=False)
    assert builder.family == family and builder.gated == gated and builder.tied == tied
    assert builder.config.scale_decoder_outputs == tied
    assert_matches(builder, references[version], version)


@pytest.mark.parametrize("version", list(_t5_cases.VERSIONS))
def test_official_checkpoints_with_bert4keras_configs(references, version):
    builder = build_transformer_model(
        os.path.join(os.path.dirname(references[version]["official"]), "config.json"),
        references[version]["official"], model=version, return_keras_model=False)
    assert_matches(builder, references[version], version)


def test_the_version_names_and_their_defaults():
    assert {"t5", "t5.1.0", "t5.1.1", "mt5.1.1", "t5_encoder", "t5.1.0_decoder",
            "t5.1.1_encoder", "mt5.1.1_decoder"} <= set(MODELS)
    built = {name: build_transformer_model(model=name, return_keras_model=False, **TINY)
             for name in ("t5", "t5.1.0", "t5.1.1", "mt5.1.1")}
    assert built["t5"].config.hidden_act == "relu" and built["t5"].tied
    assert built["t5.1.0"].config.scale_decoder_outputs
    assert built["t5.1.1"].config.hidden_act == ["gelu", "linear"]
    assert not built["mt5.1.1"].tied and not built["mt5.1.1"].config.scale_decoder_outputs
    names = {name for name, _, _ in built["mt5.1.1"].variable_map()}
    assert "encoder/block_000/layer_000/rms_norm/scale" in names
    assert "decoder/rms_norm/scale" in names and "decoder/logits/kernel" in names
    assert "decoder/block_000/layer_001/EncDecAttention/q" in names
    assert "decoder/block_000/layer_002/DenseReluDense/wi_1/kernel" in names
    names = {name for name, _, _ in built["t5.1.0"].variable_map()}
    assert "encoder/final_layer_norm/scale" in names and "decoder/logits/kernel" not in names
    assert "encoder/block_000/layer_001/DenseReluDense/wi/kernel" in names
    # The decoder's position table is in its first block only.
    assert "decoder/block_000/layer_000/SelfAttention/relative_attention_bias" in names
    assert not any("block_001" in name and "relative" in name for name in names)


def test_config_fields_of_both_dialects():
    hf = T5Config.from_dict(dict(vocab_size=50, d_model=16, d_kv=5, d_ff=24, num_layers=2,
                                 num_heads=3, dropout_rate=0.2, layer_norm_epsilon=1e-5,
                                 feed_forward_proj="gated-gelu", model_type="t5",
                                 tie_word_embeddings=False, is_gated_act=True,
                                 dense_act_fn="gelu_new", initializer_factor=1.0))
    assert (hf.hidden_size, hf.head_size, hf.intermediate_size, hf.decoder_layers) == \
        (16, 5, 24, 2)
    assert hf.hidden_act == ["gelu_new", "linear"]  # Hugging Face's gated-gelu: tanh
    assert hf.attention_probs_dropout_prob == 0.2 and hf.layer_norm_eps == 1e-5
    assert T5Config.from_dict(dict(vocab_size=9, model_type="t5",
                                   feed_forward_proj="gelu")).hidden_act == "gelu_erf"
    assert T5Config.from_dict(dict(vocab_size=9, model_type="t5")).hidden_act == "relu"
    assert T5Config.from_dict(dict(vocab_size=9, model_type="mt5")).hidden_act == \
        ["gelu_new", "linear"]  # MT5Config's default
    transformers5 = T5Config.from_dict(dict(vocab_size=9, model_type="t5",
                                            tie_word_embeddings=True,
                                            scale_decoder_outputs=False))
    assert transformers5.tie_word_embeddings is False
    mt5 = T5Config.from_dict(dict(vocab_size=9, model_type="mt5", tie_word_embeddings=True))
    assert (mt5.tie_word_embeddings, mt5.scale_decoder_outputs) == (False, False)
    bert4keras = T5Config.from_dict(dict(vocab_size=9, hidden_size=512, num_attention_heads=6,
                                         attention_head_size=64, num_hidden_layers=8,
                                         intermediate_size=1024, hidden_act=["gelu", "linear"],
                                         hidden_dropout_prob=0.1, initializer_range=0.02))
    assert bert4keras.head_size == 64  # 6 heads of 64 on a width of 512
    with pytest.raises(ValueError, match="d_model=16 and hidden_size=32"):
        T5Config.from_dict(dict(vocab_size=9, d_model=16, hidden_size=32))
    with pytest.raises(ValueError, match="not 'ACT' or 'gated-ACT'"):
        T5Config.from_dict(dict(vocab_size=9, model_type="t5", feed_forward_proj="fancy-gelu"))
    with pytest.raises(ValueError, match="relative_attention_num_buckets"):
        T5Config(vocab_size=9, relative_attention_num_buckets=2)
    with pytest.raises(ValueError, match="not divisible"):
        T5Config(vocab_size=9, hidden_size=10, num_attention_heads=3)
    with pytest.raises(ValueError, match="hidden_act"):
        T5Config(vocab_size=9, hidden_act=["gelu", 3])
    with pytest.warns(UserWarning, match="unknown config fields \\['flavour'\\]"):
        T5Config.from_dict(dict(vocab_size=9, flavour="lemon"))


def test_t5_gelu_is_the_tanh_form():
    """In a T5 config "gelu" is Mesh TensorFlow's GELU, the tanh approximation
    (bert4keras's configs write it so); "gelu_erf" is the exact one."""
    def feed_forward(activation):
        builder = build_transformer_model(model="t5.1.1", return_keras_model=False,
                                          **dict(TINY, hidden_act=[activation, "linear"]))
        return builder.encoder_layers["blocks"][0]["FeedForward"]["layer"].activations

    assert feed_forward("gelu") == ["gelu_new", "linear"]
    assert feed_forward("gelu_erf") == ["gelu_erf", "linear"]


def test_bert_options_and_foreign_fields_are_refused():
    with pytest.raises(ValueError, match=r"\['with_mlm'\] cannot be set"):
        build_transformer_model(model="t5", with_mlm=True, **TINY)
    with pytest.raises(ValueError, match=r"\['application'\] cannot be set"):
        build_transformer_model(model="mt5.1.1", application="lm", **TINY)
    with pytest.raises(ValueError, match="belongs to 'nezha'"):
        build_transformer_model(model="t5", use_relative_position=True, **TINY)
    with pytest.raises(ValueError, match="keep the decoder's start id"):
        build_transformer_model(model="t5", keep_tokens=[0, 1, 2], decoder_start_token_id=3,
                                **TINY)
    with pytest.raises(TypeError, match="needs a T5Config"):
        MODELS["t5"](build_transformer_model(return_keras_model=False, **TINY).config)
    with pytest.raises(ValueError, match="model_type 't5' is not a 'bert' model"):
        build_transformer_model(model="bert", model_type="t5", **TINY)


# ------------------------------------------------------------------------- interface
def test_encoder_decoder_and_model_share_their_weights(references):
    """``decoder([encoder(ids), decoder ids])`` is ``model([ids, decoder ids])`` on a
    padded batch: the encoder's output is zero at the padding, which the decoder
    reads as padding (bert4keras's T5 decoder takes the context so)."""
    builder = build_transformer_model(checkpoint_path=references["mt5.1.1"]["hf"],
                                      return_keras_model=False, name="T5")
    assert (builder.model.name, builder.encoder.name, builder.decoder.name) == \
        ("T5", "T5_Encoder", "T5_Decoder")
    assert [tensor.name for tensor in builder.decoder.inputs] == ["Input-Context",
                                                                 "Decoder-Input-Token"]
    encoder_ids, decoder_ids = _t5_cases.inputs()
    joined = run(builder.model, [encoder_ids, decoder_ids])
    apart = run(builder.decoder, [run(builder.encoder, encoder_ids), decoder_ids])
    np.testing.assert_allclose(apart, joined, atol=1e-6)
    for part in ("encoder", "decoder"):
        alone = build_transformer_model(checkpoint_path=references["mt5.1.1"]["hf"],
                                        model=f"mt5.1.1_{part}", return_keras_model=False)
        assert alone.model is getattr(alone, part) and alone.model.name == f"mt5.1.1_{part}"
        assert getattr(alone, "decoder" if part == "encoder" else "encoder") is None
        assert len(alone.model.weights) < len(builder.model.weights)
    encoder = build_transformer_model(checkpoint_path=references["mt5.1.1"]["hf"],
                                      model="mt5.1.1_encoder")
    np.testing.assert_array_equal(run(encoder, encoder_ids), run(builder.encoder, encoder_ids))


def test_through_the_bert4keras_interface(references):
    """bert4keras's ``build_transformer_model(model="mt5.1.1")`` and its seq2seq loss:
    float32 inputs, the decoder's mask on the output with the start id kept, and
    bert4keras's math (cross-attention position bias, scaled output)."""
    from bert4x.bert4keras.backend import K, set_gelu
    from bert4x.bert4keras.layers import Loss
    from bert4x.bert4keras.models import build_transformer_model as bert4keras_build

    class CrossEntropy(Loss):
        def compute_loss(self, inputs, mask=None):
            y_true, y_pred = inputs
            y_mask = K.cast(mask[1], K.floatx())[:, 1:]
            loss = K.sparse_categorical_crossentropy(y_true[:, 1:], y_pred[:, :-1])
            return K.sum(loss * y_mask) / K.sum(y_mask)

    official = references["mt5.1.1"]["official"]
    config_path = os.path.join(os.path.dirname(official), "config.json")
    t5 = bert4keras_build(config_path, official, model="mt5.1.1", return_keras_model=False,
                          name="T5")
    assert t5.config.cross_position_bias and t5.config.scale_decoder_outputs
    assert t5.config.hidden_act == ["gelu_erf", "linear"]  # bert4keras's default gelu
    assert [tensor.dtype for tensor in t5.model.inputs] == ["float32", "float32"]
    encoder_ids, decoder_ids = _t5_cases.inputs()
    mask = t5.model(list(map(keras.ops.convert_to_tensor, (encoder_ids, decoder_ids))))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(mask._keras_mask),
                                  _t5_cases.decoder_positions(decoder_ids))
    native = build_transformer_model(config_path, official, model="mt5.1.1",
                                     cross_position_bias=True, scale_decoder_outputs=True,
                                     hidden_act=["gelu_erf", "linear"])
    np.testing.assert_array_equal(run(t5.model, [encoder_ids, decoder_ids]),
                                  run(native, [encoder_ids, decoder_ids]))
    output = CrossEntropy(1)([t5.model.inputs[1], t5.model.outputs[0]])
    train = keras.Model(t5.model.inputs, output)
    train.compile(optimizer="adam")
    # Adam's slots built up front: made inside the first step, they make it trace twice.
    train.optimizer.build(train.trainable_variables)
    assert np.isfinite(train.train_on_batch([encoder_ids, decoder_ids], None))
    set_gelu("tanh")
    try:
        tanh = bert4keras_build(config_path, model="mt5.1.1", return_keras_model=False,
                                cross_position_bias=False)
    finally:
        set_gelu("erf")
    assert tanh.config.hidden_act == ["gelu_tanh", "linear"]
    assert not tanh.config.cross_position_bias
    with pytest.raises(ValueError, match="can not be used as 'lm' application"):
        bert4keras_build(config_path, model="t5.1.1", application="lm")
    with pytest.raises(NotImplementedError, match="with_mlm"):
        bert4keras_build(config_path, model="t5.1.1", with_mlm=True)


# --------------------------------------------------------------------------- formats
@pytest.mark.parametrize("version", list(_t5_cases.VERSIONS))
def test_official_format_round_trip(references, version, tmp_path):
    """From the Hugging Face folder, save_checkpoint writes Mesh TensorFlow's names,
    values bit for bit, and the export reloads without model= (and as the other
    names of its weights)."""
    import tensorflow as tf
    from bert4x.checkpoints import save_checkpoint

    builder = build_transformer_model(checkpoint_path=references[version]["hf"], model=version,
                                      return_keras_model=False)
    prefix = save_checkpoint(builder, str(tmp_path / "written"))
    written = tf.train.load_checkpoint(prefix)
    names = set(written.get_variable_to_shape_map())
    assert names == set(references[version]["weights"])
    for name in names:
        np.testing.assert_array_equal(written.get_tensor(name),
                                      references[version]["weights"][name], err_msg=name)
    encoder_ids, decoder_ids = _t5_cases.inputs()
    again = build_transformer_model(checkpoint_path=str(tmp_path / "written"),
                                    return_keras_model=False)
    assert again.family == version
    np.testing.assert_array_equal(run(again.model, [encoder_ids, decoder_ids]),
                                  run(builder.model, [encoder_ids, decoder_ids]))
    with open(tmp_path / "written" / "bert_config.json") as file:
        assert json.load(file)["family"] == version


def test_keras_file_keep_tokens_and_mismatches(references, tmp_path):
    hf = references["t5.1.1"]["hf"]
    builder = build_transformer_model(checkpoint_path=hf, return_keras_model=False)
    encoder_ids, decoder_ids = _t5_cases.inputs()
    expected = run(builder.model, [encoder_ids, decoder_ids])
    builder.model.save(str(tmp_path / "t5.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "t5.keras"))
    np.testing.assert_array_equal(run(loaded, [encoder_ids, decoder_ids]), expected)
    # keep_tokens trims the embedding and the untied output kernel's columns alike.
    keep = [0, 1, 5, 3, 17, 60, 42, 9]
    kept = build_transformer_model(checkpoint_path=hf, keep_tokens=keep)
    new_encoder, new_decoder = np.array([[2, 4, 3, 7, 6, 5, 0]]), np.array([[0, 3, 2, 6]])
    full = run(builder.model, [np.asarray(keep)[new_encoder],
                               np.asarray(keep)[new_decoder]])[..., keep]
    got = run(kept, [new_encoder, new_decoder])
    np.testing.assert_allclose(got, full / full.sum(-1, keepdims=True), atol=1e-6)
    # A checkpoint of another version does not fit silently.
    with pytest.raises(ValueError, match="decoder/logits/kernel"):  # unused when tied
        build_transformer_model(checkpoint_path=references["t5.1.1"]["official"],
                                model="t5.1.0", tie_word_embeddings=True)
    with pytest.raises(ValueError, match="rms_norm"):
        build_transformer_model(checkpoint_path=references["t5.1.1"]["official"],
                                model="mt5.1.1")
    with pytest.raises(ValueError, match="block.2"):
        build_transformer_model(checkpoint_path=hf, num_decoder_layers=2)
    with pytest.warns(UserWarning, match="decoder/logits/kernel"):
        build_transformer_model(checkpoint_path=references["t5.1.0"]["official"],
                                model="t5.1.1", allow_missing_heads=True, hidden_act="relu")


# ------------------------------------------------------------------- cached decoding
SMALL_VOCAB, END = 8, 1


@pytest.fixture(scope="module")
def small_t5():
    """An mT5 on 8 tokens (the padding/start id 0, the end id 1): small enough to
    enumerate every sequence of 3 tokens."""
    return _generation_worker.build_t5("mt5.1.1", seed=5, vocab_size=SMALL_VOCAB)


def rerun_log_probs(builder, source, prefixes):
    """Next-token log-probabilities after each prefix, by full re-runs."""
    return np.stack([_generation_worker.t5_full_log_probs(builder, source, prefix)[-1]
                     for prefix in prefixes])


@pytest.mark.parametrize("version", sorted(_generation_worker.T5_CONFIGS))
def test_cached_decoding_equals_full_reruns(version):
    """The encoder runs once per source, the cross-attention keys once per source and
    layer, the decoder one token per step: every step's log-probabilities are those
    of a full re-run (JAX and PyTorch: test_generation.py's backend workers)."""
    builder = _generation_worker.build_t5(version)
    assert _generation_worker.check_t5_cache(builder) < TOL
    assert _generation_worker.check_t5_greedy(builder)
    prefill, step = builder.cache_models()
    assert set(prefill.input) == {"token_ids"}
    assert set(prefill.output) == {"logits", "cache", "cross_cache"}
    assert set(step.input) == {"token_ids", "source_cache", "source_key_mask", "cache",
                               "key_mask", "write_mask", "cross_cache"}
    assert set(step.output) == {"logits", "cache"}


@pytest.mark.parametrize("length_penalty, min_length", [(1.0, 0), (0.0, 1), (-0.5, 2)])
def test_beam_search_equals_brute_force(small_t5, length_penalty, min_length):
    """Sources of three lengths in one batch, a beam wide enough for every prefix: each
    source's best sequences are its brute-force ranking over full re-runs."""
    sources = [[5, 6, 7, 2, 3], [4, 2], [3, 3, 6, 7, 2, 5, 4]]
    max_length = 3
    decoder = Decoder(small_t5, end_id=END, max_length=max_length, min_length=min_length)
    found = decoder.beam_search(sources, beam_size=(SMALL_VOCAB - 2) ** 2, num_return=4,
                                length_penalty=length_penalty)
    for source, results in zip(sources, found):
        expected = rank(enumerate_sequences(
            lambda prefixes: rerun_log_probs(small_t5, source, prefixes), SMALL_VOCAB,
            max_length, END, min_length), length_penalty)
        assert_same_ranking(results, expected, 4)


def test_constraints_sampling_and_joint_scoring(small_t5):
    sources = [[5, 6, 7, 2, 3], [4, 2]]
    decoder = Decoder(small_t5, end_id=END, max_length=4)

    def constraint(source_index, prefix):
        passage = [{4, 5, 6, END}, {2, 5, 7, END}][source_index]
        return sorted(passage - set(prefix[-1:]))

    found = decoder.beam_search(sources, beam_size=27, num_return=3, constraint=constraint)
    for index, (source, results) in enumerate(zip(sources, found)):
        expected = rank(enumerate_sequences(
            lambda prefixes: rerun_log_probs(small_t5, source, prefixes), SMALL_VOCAB, 4, END,
            allowed=lambda prefix: constraint(index, prefix)), 1.0)
        assert_same_ranking(results, expected, 3)
    greedy = decoder.greedy(sources)
    sampled = decoder.sample(sources, n=2, top_k=1, seed=0)
    assert [[r.token_ids for r in rows] for rows in sampled] == \
        [[r.token_ids] * 2 for r in greedy]
    first = [[r.token_ids for r in rows] for rows in decoder.sample(sources, n=3, seed=7)]
    assert first == [[r.token_ids for r in rows] for rows in decoder.sample(sources, n=3, seed=7)]
    for rows, source in zip(decoder.sample(sources, n=3, seed=7), sources):
        for result in rows:
            tokens = result.token_ids + ([END] if result.ended else [])
            log_probs = rerun_log_probs(small_t5, source, [tokens[:i] for i in
                                                          range(len(tokens))])
            np.testing.assert_allclose(result.log_prob, sum(
                row[token] for row, token in zip(log_probs, tokens)), atol=1e-4)
    joint = decoder.next_token_log_probs([sources])[0]
    members = np.stack([rerun_log_probs(small_t5, source, [[]])[0] for source in sources])
    np.testing.assert_allclose(joint, np.log(np.exp(members).mean(0)), atol=TOL)


def test_decoding_needs_the_whole_encoder_decoder():
    encoder = build_transformer_model(model="t5_encoder", return_keras_model=False, **TINY)
    with pytest.raises(ValueError, match="Decoder needs the builder of a generator"):
        Decoder(encoder, end_id=1)
    with pytest.raises(ValueError, match="has its encoder only"):
        encoder.cache_models()


def test_probes_and_mixed_precision():
    """attention_model reads the decoder's self- and cross-attention of the joined
    model; a mixed_bfloat16 model decodes (its caches are bfloat16)."""
    from bert4x.models import attention_model

    builder = build_transformer_model(model="mt5.1.1", return_keras_model=False, **TINY)
    encoder_ids, decoder_ids = np.array([[5, 6, 7, 0]]), np.array([[0, 8, 9]])
    shapes = [tuple(probabilities.shape) for probabilities in attention_model(
        builder.model, [0, 1, 2])([encoder_ids, decoder_ids])]
    assert sorted(shapes) == [(1, 2, 3, 3), (1, 2, 3, 4), (1, 2, 4, 4)]
    mixed = build_transformer_model(model="mt5.1.1", return_keras_model=False,
                                    dtype="mixed_bfloat16", **TINY)
    found = Decoder(mixed, end_id=1, max_length=4).beam_search([[5, 6, 7]], beam_size=2)
    assert len(found[0][0].token_ids) <= 4
