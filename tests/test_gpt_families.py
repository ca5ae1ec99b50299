"""The GPT families: ``gpt`` (CDial-GPT; Hugging Face ``openai-gpt``), ``gpt2`` (CPM-LM;
Hugging Face ``gpt2``) and ``gpt2_ml``.

References: transformers ``GPT2LMHeadModel`` and ``OpenAIGPTLMHeadModel`` with random
weights (norms included), saved as Hugging Face safetensors folders, on a padded batch
of odd shapes (3 heads of 5, feed-forward 22). bert4keras 0.11.5 checks all three
families in their official names in ``tests/test_bert4keras.py``'s oracle batch
(``gpt2_ml`` has no other reference). Here also: the official format written back bit
for bit, the Hugging Face fused ``c_attn`` split into the official query, key and value,
``.keras`` files, ``keep_tokens``, the config files' names, and cached decoding (cache
against full re-runs, greedy, beam search against brute force, sampling). The JAX and
PyTorch backends run the parity and cache checks under ``-m slow``.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _generation_worker as generation_worker  # noqa: E402
import test_generation as generation  # noqa: E402
from _official_checkpoint import write_official  # noqa: E402
from _oracle import import_oracle  # noqa: E402
from bert4x import checkpoints  # noqa: E402
from bert4x.decoding import Decoder  # noqa: E402
from bert4x.families import GPT2, GPT2ML, MODELS  # noqa: E402
from bert4x.families.gpt2 import GPT2Config  # noqa: E402
from bert4x.models import build_transformer_model  # noqa: E402

torch = import_oracle("torch")
transformers = import_oracle("transformers")

HERE = os.path.dirname(os.path.abspath(__file__))
TOL = 1e-4
VOCAB, LENGTHS, WIDTH = 37, (9, 6, 3), 9
HF_SIZES = dict(vocab_size=VOCAB, n_embd=15, n_layer=2, n_head=3, n_positions=24)
# Hugging Face case -> (model class, config): the family comes from config.json's model_type.
HF_CASES = {
    "gpt2": (lambda: transformers.GPT2LMHeadModel, lambda: transformers.GPT2Config(
        **HF_SIZES, n_inner=22, attn_implementation="eager")),
    "openai-gpt": (lambda: transformers.OpenAIGPTLMHeadModel,
                   lambda: transformers.OpenAIGPTConfig(**HF_SIZES, afn="gelu",
                                                        attn_implementation="eager")),
}
FAMILY_OF_CASE = {"gpt2": "gpt2", "openai-gpt": "gpt"}
GPT2_ML_CONFIG = dict(vocab_size=VOCAB, hidden_size=15, num_hidden_layers=2,
                      num_attention_heads=3, intermediate_size=22, max_position_embeddings=24,
                      hidden_act="gelu", hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)


def padded_ids(seed=0):
    """A right-padded batch (id 0 is padding, so real tokens avoid it)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(LENGTHS), WIDTH), np.int32)
    for row, length in enumerate(LENGTHS):
        ids[row, :length] = rng.integers(1, VOCAB, length)
    return ids


def randomised(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if ".ln_" in name:
                parameter.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                parameter.copy_((0.5 if "embed" in name or ".wte" in name or ".wpe" in name
                                 else 0.2) * noise)
    return model.eval()


def predict(model, ids):
    inputs = [ids] if len(model.inputs) == 1 else [ids, np.zeros_like(ids)]
    output = model([keras.ops.convert_to_tensor(a) for a in inputs], training=False)
    return keras.ops.convert_to_numpy(output)


def assert_close(actual, expected, what, tol=TOL):
    real = padded_ids() != 0
    error = float(np.abs(np.asarray(actual) - expected)[real].max())
    assert error <= tol, f"{what}: max abs error {error:.3g} > {tol}"


def gpt2_ml_weights(seed=4):
    """Random GPT2-ML weights under the official (released checkpoint's) names."""
    rng = np.random.default_rng(seed)
    c = GPT2_ML_CONFIG
    hidden, inner = c["hidden_size"], c["intermediate_size"]

    def normal(*shape, scale=0.2):
        return rng.normal(0.0, scale, shape).astype(np.float32)

    def norm(name):
        return {name + "/gamma": 1.0 + normal(hidden, scale=0.1), name + "/beta": normal(hidden)}

    weights = {"newslm/embeddings/word_embed": normal(c["vocab_size"], hidden, scale=0.5),
               "newslm/embeddings/pos_embed": normal(c["max_position_embeddings"], hidden,
                                                     scale=0.5),
               **norm("newslm/embeddings/LayerNorm_embed_norm")}
    for layer in range(c["num_hidden_layers"]):
        p = f"newslm/layer{layer:02d}/"
        for part, (fan_in, fan_out) in dict(
                query_layer=(hidden, hidden), key_layer=(hidden, hidden),
                value_layer=(hidden, hidden), context_projection_layer=(hidden, hidden),
                intermediate=(hidden, inner), output=(inner, hidden)).items():
            weights[p + part + "/kernel"] = normal(fan_in, fan_out)
            weights[p + part + "/bias"] = normal(fan_out)
        weights.update(norm(p + "LayerNorm_mlp_ln0"))
        weights.update(norm(p + "LayerNorm_mlp_ln1"))
    return weights


def numpy_gpt2_ml(weights, ids):
    """GPT2-ML's LM logits in float64 NumPy, from the block order of bert4keras's
    ``GPT2_ML.apply_main_layers``: ``a = h + Attention(h)``, ``h = LN_1(a +
    FeedForward(LN_0(a)))``; embeddings normalised; the tied output."""
    w = {name: value.astype(np.float64) for name, value in weights.items()}
    heads = GPT2_ML_CONFIG["num_attention_heads"]
    d = GPT2_ML_CONFIG["hidden_size"] // heads

    def dense(x, name):
        return x @ w[name + "/kernel"] + w[name + "/bias"]

    def norm(x, name):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * w[name + "/gamma"] + w[name + "/beta"]

    def gelu(x):  # "gelu" is the exact erf form
        return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, d).transpose(0, 2, 1, 3)

    length = ids.shape[1]
    x = w["newslm/embeddings/word_embed"][ids] + w["newslm/embeddings/pos_embed"][:length]
    x = norm(x, "newslm/embeddings/LayerNorm_embed_norm")
    allowed = np.tril(np.ones((length, length), bool))[None] & (ids != 0)[:, None, :]
    bias = np.where(allowed, 0.0, -1e9)[:, None]
    for layer in range(GPT2_ML_CONFIG["num_hidden_layers"]):
        p = f"newslm/layer{layer:02d}/"
        q, k, v = (split(dense(x, p + part)) for part in ("query_layer", "key_layer",
                                                           "value_layer"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        a = x + dense(context, p + "context_projection_layer")
        inner = gelu(dense(norm(a, p + "LayerNorm_mlp_ln0"), p + "intermediate"))
        x = norm(a + dense(inner, p + "output"), p + "LayerNorm_mlp_ln1")
    return x @ w["newslm/embeddings/word_embed"].T


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Each Hugging Face case's folder, its transformers logits and its model; the GPT2-ML
    official folder and its weights."""
    root = tmp_path_factory.mktemp("gpt_families")
    ids = padded_ids()
    found = {}
    for seed, (key, (model_class, config)) in enumerate(HF_CASES.items()):
        hf_model = randomised(model_class()(config()), seed)
        folder = str(root / key)
        hf_model.save_pretrained(folder)
        with torch.no_grad():
            expected = hf_model(torch.from_numpy(ids.astype(np.int64)),
                                attention_mask=torch.from_numpy((ids != 0).astype(np.int64))
                                ).logits.numpy()
        state = {name: value.numpy() for name, value in hf_model.state_dict().items()}
        found[key] = dict(folder=folder, expected=expected, state=state,
                          family=FAMILY_OF_CASE[key], model=None)
    weights = gpt2_ml_weights()
    prefix = write_official(str(root / "gpt2_ml"), weights, GPT2_ML_CONFIG)
    found["gpt2_ml"] = dict(folder=os.path.dirname(prefix), weights=weights,
                            expected=numpy_gpt2_ml(weights, ids), family="gpt2_ml",
                            model="gpt2_ml")  # bert4keras's configs name no family
    return found


# --------------------------------------------------------------------------- parity
@pytest.mark.parametrize("key", ["gpt2", "openai-gpt", "gpt2_ml"])
def test_logits_equal_the_references(cases, key):
    """transformers' logits (GPT-2, OpenAI GPT) and GPT2-ML's formulas within 1e-4 on
    the real positions of a padded batch; a Hugging Face config.json names the family."""
    case = cases[key]
    builder = build_transformer_model(checkpoint_path=case["folder"], model=case["model"],
                                      with_mlm="linear", return_keras_model=False)
    assert builder.family == case["family"] and builder.application == "lm"
    assert_close(predict(builder.model, padded_ids()), case["expected"], key)


def test_official_names_hold_the_split_hugging_face_weights(cases, tmp_path):
    """save_checkpoint writes bert4keras's names; each value is the Hugging Face tensor
    (Conv1D kernels as stored, [in, out]) or its third of the fused c_attn, bit for bit."""
    for key, case in cases.items():
        if key == "gpt2_ml":
            continue
        builder = build_transformer_model(checkpoint_path=case["folder"],
                                          return_keras_model=False)
        written = tf.train.load_checkpoint(checkpoints.save_checkpoint(
            builder, str(tmp_path / key)))
        state, hidden = case["state"], HF_SIZES["n_embd"]
        fused = state["transformer.h.1.attn.c_attn.weight"]
        for index, part in enumerate(("query", "key", "value")):
            np.testing.assert_array_equal(
                written.get_tensor(f"gpt/transformer/layer_1/attention/self/{part}/kernel"),
                fused[:, index * hidden:(index + 1) * hidden])
        np.testing.assert_array_equal(
            written.get_tensor("gpt/transformer/layer_0/intermediate/dense/kernel"),
            state["transformer.h.0.mlp.c_fc.weight"])
        norm = ("gpt/transformer/layer_0/input/LayerNorm/gamma" if key == "gpt2" else
                "gpt/transformer/layer_0/output/LayerNorm/gamma")
        np.testing.assert_array_equal(written.get_tensor(norm),
                                      state["transformer.h.0.ln_2.weight"])
        names = set(written.get_variable_to_shape_map())
        # Not lm_head.weight (tied); three of each c_attn weight and bias.
        assert len(names) == len(state) - 1 + 4 * HF_SIZES["n_layer"]
        assert ("gpt/output/LayerNorm/gamma" in names) == (key == "gpt2")


def test_hugging_face_tensors_fuse_the_parts_back(cases, tmp_path):
    """Written the Hugging Face way, the weights are the file's tensors bit for bit:
    c_attn joined again from the query, key and value, Conv1D kernels [in, out]."""
    from safetensors.numpy import load_file, save_file
    for key in ("gpt2", "openai-gpt"):
        folder = cases[key]["folder"]
        builder = build_transformer_model(checkpoint_path=folder, return_keras_model=False)
        tensors = checkpoints.hugging_face_tensors(builder)
        stored = load_file(os.path.join(folder, "model.safetensors"))
        assert sorted(tensors) == sorted(stored)
        for name, value in stored.items():
            np.testing.assert_array_equal(tensors[name], value, err_msg=name)
        # ... and a folder of them reads back (a part stored alone is not split again).
        save_file(tensors, str(tmp_path / "model.safetensors"))
        with open(os.path.join(folder, "config.json")) as source, \
                open(tmp_path / "config.json", "w") as target:
            target.write(source.read())
        again = build_transformer_model(checkpoint_path=str(tmp_path), with_mlm="linear")
        assert_close(predict(again, padded_ids()), cases[key]["expected"], key)
    broken = dict(stored, **{"transformer.h.0.attn.c_attn.bias": np.zeros(44, np.float32)})
    save_file(broken, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="does not split into 3 equal parts"):
        build_transformer_model(checkpoint_path=str(tmp_path))


@pytest.mark.parametrize("key", ["gpt2", "openai-gpt", "gpt2_ml"])
def test_official_format_round_trip(cases, key, tmp_path):
    """The official format reads and writes back bit for bit, to the same logits."""
    case = cases[key]
    first = build_transformer_model(checkpoint_path=case["folder"], model=case["model"],
                                    with_mlm="linear", return_keras_model=False)
    prefix = checkpoints.save_checkpoint(first, str(tmp_path / "once"))
    again = build_transformer_model(checkpoint_path=str(tmp_path / "once"), with_mlm="linear",
                                    return_keras_model=False)
    assert again.family == case["family"]
    second = tf.train.load_checkpoint(checkpoints.save_checkpoint(again, str(tmp_path / "twice")))
    once = tf.train.load_checkpoint(prefix)
    names = set(once.get_variable_to_shape_map())
    assert names == set(second.get_variable_to_shape_map())
    if key == "gpt2_ml":
        assert names == set(case["weights"])
    for name in names:
        expected = case["weights"][name] if key == "gpt2_ml" else once.get_tensor(name)
        np.testing.assert_array_equal(second.get_tensor(name), expected, err_msg=name)
    np.testing.assert_array_equal(predict(first.model, padded_ids()),
                                  predict(again.model, padded_ids()))


def test_keras_files_and_keep_tokens(cases, tmp_path):
    """``.keras`` files reload to the same logits; keep_tokens keeps those rows only."""
    keep = [0, 1, 5, 3, 17, 36, 22, 9]
    new_ids = np.array([[2, 4, 3, 7, 6, 5, 0]], np.int32)
    for key, case in cases.items():
        model = build_transformer_model(checkpoint_path=case["folder"], model=case["model"],
                                        with_mlm="linear")
        path = str(tmp_path / f"{key}.keras")
        model.save(path)
        np.testing.assert_array_equal(predict(keras.saving.load_model(path), padded_ids()),
                                      predict(model, padded_ids()), err_msg=key)
        kept = build_transformer_model(checkpoint_path=case["folder"], model=case["model"],
                                       with_mlm="linear", keep_tokens=keep)
        full = predict(model, np.asarray(keep, np.int32)[new_ids])
        np.testing.assert_allclose(predict(kept, new_ids)[0, :6], full[0, :6][:, keep],
                                   atol=1e-5, err_msg=key)


# --------------------------------------------------------------------------- configs
def test_hugging_face_configs_are_read_with_their_names(cases):
    gpt2 = GPT2Config.from_json(os.path.join(cases["gpt2"]["folder"], "config.json"))
    assert (gpt2.hidden_size, gpt2.intermediate_size, gpt2.max_position_embeddings,
            gpt2.hidden_act, gpt2.layer_norm_eps, gpt2.type_vocab_size) == (
        15, 22, 24, "gelu_new", 1e-5, 0)
    openai = MODELS["gpt"].config_class.from_json(
        os.path.join(cases["openai-gpt"]["folder"], "config.json"))
    # Hugging Face's OpenAI GPT "gelu" is the tanh form; no n_inner: 4 * n_embd.
    assert (openai.hidden_act, openai.intermediate_size, openai.type_vocab_size,
            openai.layer_norm_eps) == ("gelu_new", 60, 0, 1e-5)
    values = dict(model_type="gpt2", vocab_size=VOCAB, n_embd=12, n_head=3, n_inner=None)
    assert GPT2Config.from_dict(values).intermediate_size == 48
    with pytest.raises(NotImplementedError, match="scale_attn_by_inverse_layer_idx=False"):
        GPT2Config.from_dict(dict(values, scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(ValueError, match="resid_pdrop=0.1 and hidden_dropout_prob=0.2"):
        GPT2Config.from_dict(dict(values, resid_pdrop=0.1, hidden_dropout_prob=0.2))


def test_what_the_families_cannot_build_is_refused():
    tiny = dict(vocab_size=20, hidden_size=12, num_attention_heads=3, num_hidden_layers=1,
                intermediate_size=16)
    with pytest.raises(ValueError, match="builds application 'lm', not 'encoder'"):
        build_transformer_model(model="gpt2", application="encoder", **tiny)
    with pytest.raises(ValueError, match="'lm' or 'unilm', not 'encoder'"):
        build_transformer_model(model="gpt", application="encoder", **tiny)
    with pytest.raises(ValueError, match="no segment embeddings: type_vocab_size must be 0"):
        build_transformer_model(model="gpt2_ml", type_vocab_size=2, **tiny)
    with pytest.raises(ValueError, match="unilm.*needs segment ids"):
        build_transformer_model(model="gpt", application="unilm", type_vocab_size=0, **tiny)
    with pytest.raises(ValueError, match="no \\['pool'\\] head"):
        build_transformer_model(model="gpt", with_pool=True, **tiny)
    with pytest.raises(ValueError, match="openai-gpt config has no segment table"):
        build_transformer_model(model="gpt", model_type="openai-gpt", type_vocab_size=2,
                                **tiny)
    # A GPT-2 takes token ids alone; a CDial-GPT token and segment ids.
    assert [t.name for t in build_transformer_model(model="gpt2", **tiny).inputs] == [
        "Input-Token"]
    assert len(build_transformer_model(model="gpt", **tiny).inputs) == 2


# ----------------------------------------------------------------------- decoding
# family -> config changes of the tiny decoding models (3 heads, odd widths).
DECODING = {"gpt": dict(hidden_size=30, num_attention_heads=3),
            "gpt2": dict(hidden_size=30, num_attention_heads=3),
            "gpt2_ml": dict(hidden_size=30, num_attention_heads=3, intermediate_size=26)}


@pytest.mark.parametrize("family,application,conditional", [
    ("gpt", "lm", True), ("gpt", "unilm", False), ("gpt2", "lm", True),
    ("gpt2_ml", "lm", True)])
def test_cached_log_probabilities_equal_full_reruns(family, application, conditional):
    """The prefill and step graphs give a full re-run's logits within 1e-4 (with
    Conditional Layer Normalization where asked), and greedy decoding its argmax."""
    builder = generation_worker.build(application, conditional, model=family,
                                      **DECODING[family])
    assert generation_worker.check_cache(builder) < TOL
    assert generation_worker.check_greedy(builder)


@pytest.fixture(scope="module")
def small_gpt2():
    return generation_worker.build("lm", False, seed=5, model="gpt2",
                                   vocab_size=generation.SMALL_VOCAB, **DECODING["gpt2"])


def test_beam_search_equals_brute_force_and_sampling(small_gpt2):
    sources = [[2, 5, 6, 4, 7, 5], [2, 7]]
    max_length = 3
    decoder = Decoder(small_gpt2, end_id=generation.END, max_length=max_length)
    beam = (generation.SMALL_VOCAB - 2) ** (max_length - 1)
    found = decoder.beam_search(sources, beam_size=beam, num_return=4)
    for source, results in zip(sources, found):
        expected = generation.rank(generation.enumerate_sequences(
            lambda prefixes: generation.rerun_log_probs(small_gpt2, source, prefixes),
            generation.SMALL_VOCAB, max_length, generation.END), 1.0)
        generation.assert_same_ranking(results, expected, 4)
    greedy = decoder.greedy(sources)
    for best, samples in zip(greedy, decoder.sample(sources, n=2, top_k=1, seed=3)):
        assert all(sample.token_ids == best.token_ids for sample in samples)
    drawn = decoder.sample(sources, n=3, top_p=0.9, seed=1)
    assert [len(rows) for rows in drawn] == [3, 3]


# -------------------------------------------------------------- the other backends
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_parity_and_cache_on_other_backends(cases, backend, tmp_path):
    script = f"""
import json, sys
import numpy as np
sys.path.insert(0, {HERE!r})
import _generation_worker as worker
from bert4x.models import build_transformer_model
cases = json.loads(sys.argv[1])
ids = np.asarray(json.loads(sys.argv[2]), "int32")
results = {{}}
for key, (folder, family) in cases.items():
    model = build_transformer_model(checkpoint_path=folder, model=family, with_mlm="linear")
    inputs = [ids] if len(model.inputs) == 1 else [ids, np.zeros_like(ids)]
    np.save({str(tmp_path)!r} + "/" + key + ".npy", np.asarray(model.predict(inputs, verbose=0)))
for family, application, conditional in {[("gpt", "unilm", False), ("gpt2", "lm", True),
                                          ("gpt2_ml", "lm", True)]!r}:
    builder = worker.build(application, conditional, model=family, **{DECODING!r}[family])
    results[family] = [worker.check_cache(builder), worker.check_greedy(builder)]
print("RESULT " + json.dumps(results))
"""
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    folders = {key: [case["folder"], case["model"]] for key, case in cases.items()}
    completed = subprocess.run(
        [sys.executable, "-c", script, json.dumps(folders), json.dumps(padded_ids().tolist())],
        env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = [x for x in completed.stdout.splitlines() if x.startswith("RESULT ")][-1]
    for family, (worst, greedy) in json.loads(line[len("RESULT "):]).items():
        assert worst < TOL and greedy, (backend, family, worst, greedy)
    for key, case in cases.items():
        assert_close(np.load(str(tmp_path / f"{key}.npy")), case["expected"],
                     f"{backend} {key}")


def test_gpt2_ml_and_gpt2_declare_their_block_norms():
    """GPT-2 normalises each sub-block's input and ends with a norm; GPT2-ML only
    the feed-forward's, before and after (bert4keras's Norm-0 and Norm-1)."""
    assert GPT2.block_norms == ("attention_input_norm", "feed_forward_input_norm")
    assert GPT2.final_norm and not GPT2ML.final_norm
    model = build_transformer_model(model="gpt2_ml", **dict(GPT2_ML_CONFIG, vocab_size=20))
    names = {layer.name for layer in model.layers}
    assert {"Transformer-0-FeedForward-Norm-0", "Transformer-0-FeedForward-Norm-1",
            "Embedding-Norm"} <= names
    assert "Transformer-0-MultiHeadSelfAttention-Norm" not in names


def test_lm_head_at_given_positions(cases):
    """mlm_positions (the head at some positions only) equals the full head there."""
    case = cases["gpt2"]
    builder = build_transformer_model(checkpoint_path=case["folder"], with_mlm="linear",
                                      return_keras_model=False)
    positions = np.array([[0, 8], [5, 1], [2, 2]], np.int32)
    model = builder.mlm_positions_model()
    assert len(model.inputs) == 2  # token ids and positions: a GPT-2 takes no segments
    at = keras.ops.convert_to_numpy(model([padded_ids(), positions], training=False))
    full = predict(builder.model, padded_ids())
    np.testing.assert_allclose(at, np.take_along_axis(full, positions[..., None], axis=1),
                               atol=1e-5)


def test_bert4keras_layer_builds_language_models_as_bert4keras(cases):
    """bert4x.bert4keras: a GPT is a language model in bert4keras's default application
    ("encoder"), returns probabilities, and final_activation="linear" the logits."""
    from bert4x.bert4keras.models import build_transformer_model as bert4keras_build
    case = cases["gpt2"]
    logits = bert4keras_build(checkpoint_path=case["folder"], model="gpt2",
                              final_activation="linear")
    assert [t.name for t in logits.inputs] == ["Input-Token"]
    assert_close(predict(logits, padded_ids()), case["expected"], "gpt2 logits")
    probabilities = bert4keras_build(checkpoint_path=case["folder"], model="gpt2")
    np.testing.assert_allclose(predict(probabilities, padded_ids()).sum(-1), 1.0,
                               atol=1e-5)
    with pytest.raises(ValueError, match="final_activation is an argument of the GPT"):
        bert4keras_build(model="bert", final_activation="linear", vocab_size=10,
                         hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=8)
