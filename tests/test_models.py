"""Acceptance tests of the core model and of intermediate outputs and serving
export.

References are independent of bert4x: Hugging Face ``transformers`` on PyTorch fed
through this file's own Google -> Hugging Face name map, checkpoints written here with
``tf.raw_ops.SaveV2`` and read back with ``tf.train.load_checkpoint``, and NumPy.

The TensorFlow, JAX and PyTorch backends each run ``_model_worker.py`` once (this
process's own backend in-process, the two others as subprocesses started together);
the tests below compare what the workers wrote.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from bert4x import checkpoints  # noqa: E402
from bert4x.configs import BertConfig  # noqa: E402
from bert4x.models import (attention_model, build_transformer_model,  # noqa: E402
                           intermediate_model)
from bert4x.resources import chinese_vocab_path, minilm_dir  # noqa: E402
from _official_checkpoint import write_official  # noqa: E402
from _oracle import import_oracle  # noqa: E402

torch = import_oracle("torch")
transformers = import_oracle("transformers")

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("tensorflow", "jax", "torch")
# The worker subprocesses run their tiny models on one thread: the test processes
# already share the cores, and the thread pools' waiting cost the PyTorch worker
# half of its CPU time (18.6 -> 9.9 s in test_families).
ONE_THREAD = dict(OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1",
                  TF_NUM_INTEROP_THREADS="1",
                  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
TINY = dict(vocab_size=99, hidden_size=48, num_hidden_layers=3, num_attention_heads=3,
            intermediate_size=80, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
            max_position_embeddings=64, type_vocab_size=2, initializer_range=0.02)
ACTIVATIONS = ("gelu", "gelu_new")
TOL = 1e-4


# --------------------------------------------------------------------------- helpers
def google_weights(config, seed, heads=True):
    """Random weights under the official Google names (docs/model.md), float32."""
    rng = np.random.default_rng(seed)
    V, H, I = config["vocab_size"], config["hidden_size"], config["intermediate_size"]
    P, T = config["max_position_embeddings"], config["type_vocab_size"]

    def normal(*shape, scale=0.2):
        return rng.normal(0.0, scale, shape).astype(np.float32)

    def norm(prefix):
        return {prefix + "/gamma": 1.0 + normal(H, scale=0.1), prefix + "/beta": normal(H)}

    weights = {"bert/embeddings/word_embeddings": normal(V, H, scale=0.5),
               "bert/embeddings/token_type_embeddings": normal(T, H, scale=0.5),
               "bert/embeddings/position_embeddings": normal(P, H, scale=0.5)}
    weights.update(norm("bert/embeddings/LayerNorm"))
    for i in range(config["num_hidden_layers"]):
        p = f"bert/encoder/layer_{i}/"
        for part in ("self/query", "self/key", "self/value", "output/dense"):
            weights[p + f"attention/{part}/kernel"] = normal(H, H)
            weights[p + f"attention/{part}/bias"] = normal(H)
        weights.update(norm(p + "attention/output/LayerNorm"))
        weights[p + "intermediate/dense/kernel"] = normal(H, I)
        weights[p + "intermediate/dense/bias"] = normal(I)
        weights[p + "output/dense/kernel"] = normal(I, H)
        weights[p + "output/dense/bias"] = normal(H)
        weights.update(norm(p + "output/LayerNorm"))
    if heads:
        weights["bert/pooler/dense/kernel"] = normal(H, H)
        weights["bert/pooler/dense/bias"] = normal(H)
        weights["cls/predictions/transform/dense/kernel"] = normal(H, H)
        weights["cls/predictions/transform/dense/bias"] = normal(H)
        weights.update(norm("cls/predictions/transform/LayerNorm"))
        weights["cls/predictions/output_bias"] = normal(V)
        weights["cls/seq_relationship/output_weights"] = normal(2, H)
        weights["cls/seq_relationship/output_bias"] = normal(2)
    return weights


def write_google_checkpoint(folder, weights, config, optimizer_slots=True):
    """``bert_config.json`` + ``bert_model.ckpt`` written with ``tf.raw_ops.SaveV2``."""
    tensors = dict(weights)
    if optimizer_slots:
        for name, value in weights.items():
            tensors[name + "/adam_m"] = np.full_like(value, 0.5)
            tensors[name + "/adam_v"] = np.full_like(value, 0.25)
        tensors["global_step"] = np.array(1000, dtype=np.int64)
    return write_official(folder, tensors, config)


def hf_name(google_name):
    """This test's own Google -> Hugging Face name map: ``(name, transpose)``."""
    special = {"cls/predictions/output_bias": "cls.predictions.bias",
               "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
               "cls/seq_relationship/output_bias": "cls.seq_relationship.bias"}
    if google_name in special:
        return special[google_name], False
    name = google_name.replace("layer_", "layer.").replace("/", ".")
    name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
    if name.endswith("_embeddings"):
        return name + ".weight", False
    if name.endswith(".kernel"):
        return name[: -len(".kernel")] + ".weight", True
    return name, False


def hf_state(weights):
    """NumPy state dict of ``BertForPreTraining`` (decoder tied to the embeddings)."""
    state = {}
    for google_name, value in weights.items():
        name, transpose = hf_name(google_name)
        state[name] = np.ascontiguousarray(value.T if transpose else value)
    if "cls.predictions.bias" in state:
        state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
        state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
    return state


def hf_pretraining_model(config, weights):
    hf_config = transformers.BertConfig(**config, attn_implementation="eager")
    model = transformers.BertForPreTraining(hf_config).eval()
    state = {name: torch.from_numpy(value.copy()) for name, value in hf_state(weights).items()}
    model.load_state_dict(state, strict=True)
    return model


def hf_outputs(model, ids, segments):
    with torch.no_grad():
        ids_t = torch.from_numpy(ids.astype(np.int64))
        kwargs = dict(attention_mask=(ids_t != 0).long(),
                      token_type_ids=torch.from_numpy(segments.astype(np.int64)))
        base = model.bert(ids_t, output_hidden_states=True, output_attentions=True, **kwargs)
        full = model(ids_t, **kwargs)
    return dict(sequence=base.last_hidden_state.numpy(), pooled=base.pooler_output.numpy(),
                hidden=[h.numpy() for h in base.hidden_states],
                attentions=[a.numpy() for a in base.attentions],
                mlm_logits=full.prediction_logits.numpy(),
                nsp_logits=full.seq_relationship_logits.numpy())


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def assert_close(actual, expected, tol=TOL, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    error = float(np.max(np.abs(actual - expected)))
    assert error <= tol, f"{what}: max abs error {error:.3g} > {tol}"


def predict(model, *arrays):
    # A direct call: ``predict_on_batch`` would trace a function for each of these
    # small models (about a second each) for the same numbers.
    outputs = model([keras.ops.convert_to_tensor(array) for array in arrays], training=False)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return [keras.ops.convert_to_numpy(output) for output in outputs]


# -------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Tiny Google checkpoints (gelu and gelu_new) and a padded batch of inputs."""
    root = str(tmp_path_factory.mktemp("bert4x_models"))
    # Rows of different lengths, padded with token id 0; two segments each.
    rng = np.random.default_rng(0)
    lengths, width = [11, 7, 4], 11
    ids = np.zeros((3, width), np.int32)
    segments = np.zeros((3, width), np.int32)
    unilm_segments = np.zeros((3, width), np.int32)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(1, TINY["vocab_size"], length)
        segments[row, length // 2:length] = 1
        unilm_segments[row, (length + 1) // 2:length] = 1
    np.savez(os.path.join(root, "inputs.npz"), token_ids=ids, segment_ids=segments,
             unilm_segment_ids=unilm_segments, num_layers=TINY["num_hidden_layers"])
    weights = {}
    for seed, act in enumerate(ACTIVATIONS):
        config = dict(TINY, hidden_act=act)
        weights[act] = google_weights(config, seed=seed + 1)
        write_google_checkpoint(os.path.join(root, f"ckpt_{act}"), weights[act], config)
    return dict(root=root, ids=ids, segments=segments, unilm_segments=unilm_segments,
                weights=weights, lengths=lengths)


@pytest.fixture(scope="module")
def reference(workdir):
    """Hugging Face outputs for each activation."""
    out = {}
    for act in ACTIVATIONS:
        model = hf_pretraining_model(dict(TINY, hidden_act=act), workdir["weights"][act])
        out[act] = hf_outputs(model, workdir["ids"], workdir["segments"])
    return out


@pytest.fixture(scope="module")
def backend_results(workdir):
    """The worker's results for every backend: subprocesses for the other two."""
    sys.path.insert(0, HERE)
    try:
        import _model_worker
    finally:
        sys.path.remove(HERE)
    own = keras.backend.backend()
    processes = {}
    for backend in BACKENDS:
        if backend == own:
            continue
        env = dict(os.environ, **ONE_THREAD, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
                   JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
        out = os.path.join(workdir["root"], f"results_{backend}.npz")
        processes[backend] = (out, subprocess.Popen(
            [sys.executable, os.path.join(HERE, "_model_worker.py"), workdir["root"], out],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    own_out = os.path.join(workdir["root"], f"results_{own}.npz")
    _model_worker.run(workdir["root"], own_out)
    paths, failures = {own: own_out}, {}
    for backend, (out, process) in processes.items():
        log, _ = process.communicate(timeout=600)
        if process.returncode != 0:
            failures[backend] = log[-4000:]
        paths[backend] = out
    results = {}
    for backend in BACKENDS:
        if backend in failures:
            results[backend] = failures[backend]
        else:
            with np.load(paths[backend]) as data:
                results[backend] = {key: data[key] for key in data.files}
                assert str(results[backend]["backend"]) == backend
    return results


def results_for(backend_results, backend):
    results = backend_results[backend]
    if isinstance(results, str):
        pytest.fail(f"the {backend} worker failed:\n{results}")
    return results


# ------------------------------------------------------------ parity with transformers
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_parity_with_transformers(backend_results, reference, backend, act):
    got, ref = results_for(backend_results, backend), reference[act]
    assert_close(got[f"{act}/sequence"], ref["sequence"], what="sequence output")
    assert_close(got[f"{act}/pooled"], ref["pooled"], what="pooled output")
    assert_close(got[f"{act}/mlm_logits"], ref["mlm_logits"], what="MLM logits")
    assert_close(got[f"{act}/nsp_logits"], ref["nsp_logits"], what="NSP logits")
    if act == "gelu":  # with_nsp=True / with_mlm=True give probabilities
        assert_close(got["gelu/nsp_probs"], softmax(ref["nsp_logits"]), tol=1e-5,
                     what="NSP probabilities")
        assert_close(got["gelu/mlm_probs"], softmax(ref["mlm_logits"]), tol=1e-5,
                     what="MLM probabilities")


def test_parity_tells_the_activations_apart(workdir, reference):
    """The tolerance is tight enough to tell exact gelu from its tanh approximation."""
    model = build_transformer_model(
        checkpoint_path=os.path.join(workdir["root"], "ckpt_gelu_new"), hidden_act="gelu")
    sequence = predict(model, workdir["ids"], workdir["segments"])[0]
    assert np.max(np.abs(sequence - reference["gelu_new"]["sequence"])) > 3 * TOL


def test_mixed_bfloat16(workdir, reference):
    """``dtype="mixed_bfloat16"`` computes in bfloat16 and stays close to float32."""
    model = build_transformer_model(
        checkpoint_path=os.path.join(workdir["root"], "ckpt_gelu"), with_pool=True,
        with_nsp=True, with_mlm="linear", dtype="mixed_bfloat16")
    assert model.get_layer("Transformer-0-FeedForward").compute_dtype == "bfloat16"
    assert model.get_layer("Embedding-Token").embeddings.dtype == "float32"
    sequence, pooled, nsp, mlm = [np.asarray(x, np.float32) for x in predict(
        model, workdir["ids"], workdir["segments"])]
    ref = reference["gelu"]
    error = np.max(np.abs(sequence - ref["sequence"]))
    assert 1e-4 < error < 0.1  # really bfloat16, and still the same model
    scale = np.max(np.abs(ref["mlm_logits"]))
    assert np.max(np.abs(mlm - ref["mlm_logits"])) < 0.05 * scale
    assert_close(nsp, softmax(ref["nsp_logits"]), tol=0.05, what="NSP probs")
    assert nsp.dtype == np.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_gelu_gradient_is_the_exact_derivative(backend_results, backend):
    """bert4x's GELU has a hand-written gradient: it must equal 3 * (Phi(x) + x phi(x))
    on every backend (float32 to 1e-6; bfloat16 inputs to bfloat16 precision)."""
    import _model_worker
    x = np.asarray(_model_worker.GELU_GRID, np.float64)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    expected = 3 * (cdf + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi))
    found = results_for(backend_results, backend)["gelu_gradient"]
    np.testing.assert_allclose(found[0], expected, atol=1e-6)
    np.testing.assert_allclose(found[1], expected, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("backend", BACKENDS)
def test_intermediate_outputs_match_hidden_states(backend_results, reference, backend):
    """``intermediate_model`` reads the embeddings and every layer's output."""
    got = results_for(backend_results, backend)
    names = ["Embedding-Norm"] + [f"Transformer-{i}-FeedForward-Norm"
                                  for i in range(TINY["num_hidden_layers"])]
    for act in ACTIVATIONS:
        for name, expected in zip(names, reference[act]["hidden"]):
            assert_close(got[f"{act}/hidden/{name}"], expected, what=f"{act} {name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_probabilities(backend_results, reference, workdir, backend):
    got = results_for(backend_results, backend)
    ids = workdir["ids"]
    valid_keys = (ids != 0)[:, None, None, :]
    for act in ACTIVATIONS:
        for index, expected in enumerate(reference[act]["attentions"]):
            probs = got[f"{act}/attention/{index}"]
            assert probs.shape == (3, TINY["num_attention_heads"], ids.shape[1], ids.shape[1])
            assert_close(probs, expected, what=f"attention of layer {index}")
            assert_close(probs.sum(-1), np.ones(probs.shape[:-1]), tol=1e-5,
                         what="sum over keys")
            assert np.all(probs[np.broadcast_to(~valid_keys, probs.shape)] == 0.0)
            assert np.all(probs[np.broadcast_to(valid_keys, probs.shape)] > 0.0)
    # UniLM: with c = cumsum(segments), query i sees key j iff c[j] <= c[i] (NumPy).
    c = np.cumsum(workdir["unilm_segments"], axis=1)
    allowed = (c[:, None, :] <= c[:, :, None]) & (ids != 0)[:, None, :]
    allowed = np.broadcast_to(allowed[:, None], (3, TINY["num_attention_heads"]) +
                              allowed.shape[1:])
    assert not allowed.all()
    for index in (0, 1):
        probs = got[f"unilm/attention/{index}"]
        assert_close(probs.sum(-1), np.ones(probs.shape[:-1]), tol=1e-5, what="unilm sum")
        assert np.all(probs[~allowed] == 0.0)
        assert np.all(probs[allowed] > 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_file_round_trip(backend_results, backend):
    got = results_for(backend_results, backend)
    keys = [key for key in got if key.startswith("keras_roundtrip/") and
            key.endswith("/before")]
    assert {key.split("/")[1] for key in keys} == {"encoder", "unilm", "cln"}
    assert len(keys) == 4 + 1 + 2  # encoder: 4 outputs; unilm: 1; cln: sequence + mlm
    for key in keys:
        after = got[key[: -len("before")] + "after"]
        np.testing.assert_array_equal(after, got[key], err_msg=key)
    np.testing.assert_array_equal(got["reloaded/unilm/attention/0"], got["unilm/attention/0"])


def test_cln_condition_changes_outputs(backend_results, reference):
    """The CLN model's condition weights (made non-zero) do act on the outputs."""
    got = results_for(backend_results, "tensorflow")
    cln = got["keras_roundtrip/cln/0/before"]
    assert cln.shape == reference["gelu"]["sequence"].shape
    assert not np.allclose(cln, reference["gelu"]["sequence"], atol=1e-3)


# -------------------------------------------------------------- Hugging Face weights
def test_tiny_safetensors_parity(workdir, reference, tmp_path):
    """A safetensors file under Hugging Face names loads to the same model."""
    from safetensors.numpy import save_file
    state = hf_state(workdir["weights"]["gelu"])
    del state["cls.predictions.decoder.weight"]  # tied: HF files store it once
    save_file(state, str(tmp_path / "model.safetensors"))
    with open(tmp_path / "config.json", "w") as file:
        json.dump(dict(TINY, hidden_act="gelu", model_type="bert",
                       architectures=["BertForPreTraining"]), file)
    model = build_transformer_model(str(tmp_path), with_pool=True, with_mlm="linear")
    sequence, pooled, mlm = predict(model, workdir["ids"], workdir["segments"])
    assert_close(sequence, reference["gelu"]["sequence"], what="sequence")
    assert_close(pooled, reference["gelu"]["pooled"], what="pooled")
    assert_close(mlm, reference["gelu"]["mlm_logits"], what="MLM logits")


def test_bfloat16_safetensors(workdir, tmp_path):
    """Weights stored in bfloat16 (common on the Hub) load exactly, widened to float32."""
    from safetensors.torch import save_file
    weights = workdir["weights"]["gelu"]
    state = {name: torch.from_numpy(value).to(torch.bfloat16)
             for name, value in hf_state(weights).items()
             if name != "cls.predictions.decoder.weight"}
    save_file(state, str(tmp_path / "model.safetensors"))
    with open(tmp_path / "config.json", "w") as file:
        json.dump(dict(TINY, hidden_act="gelu"), file)
    rounded = {name: torch.from_numpy(value).to(torch.bfloat16).float().numpy()
               for name, value in weights.items()}
    hf = hf_pretraining_model(dict(TINY, hidden_act="gelu"), rounded)
    expected = hf_outputs(hf, workdir["ids"], workdir["segments"])
    model = build_transformer_model(str(tmp_path), with_mlm="linear")
    sequence, logits = predict(model, workdir["ids"], workdir["segments"])
    assert_close(sequence, expected["sequence"], what="sequence from bfloat16 weights")
    assert_close(logits, expected["mlm_logits"], what="MLM logits from bfloat16 weights")


@pytest.fixture(scope="module")
def minilm():
    """all-MiniLM-L6-v2 (real weights), a padded batch of real sentences, HF outputs."""
    folder = minilm_dir()
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "A man is playing a guitar on the stage while the crowd sings along.",
        "Scientists discovered a new species of frog in the rainforest of Peru.",
        "How do I reset my password?",
        "Keras 3 runs the same model code on TensorFlow, JAX and PyTorch.",
    ]
    try:
        from bert4x.tokenizers import Tokenizer
        tokenizer = Tokenizer(os.path.join(folder, "vocab.txt"), do_lower_case=True)
        encoded = [tokenizer.encode(text)[0] for text in sentences]
    except ImportError:
        hf_tokenizer = transformers.BertTokenizer(vocab=os.path.join(folder, "vocab.txt"))
        encoded = [hf_tokenizer(text)["input_ids"] for text in sentences]
    width = max(len(tokens) for tokens in encoded)
    ids = np.zeros((len(encoded), width), np.int32)
    for row, tokens in enumerate(encoded):
        ids[row, :len(tokens)] = tokens
    assert (ids == 0).any() and ids.max() > 1000  # padded, and real word ids
    segments = np.zeros_like(ids)
    hf = transformers.BertModel.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        out = hf(torch.from_numpy(ids.astype(np.int64)),
                 attention_mask=torch.from_numpy((ids != 0).astype(np.int64)),
                 token_type_ids=torch.from_numpy(segments.astype(np.int64)))
    return dict(folder=folder, ids=ids, segments=segments,
                sequence=out.last_hidden_state.numpy(), pooled=out.pooler_output.numpy())


def test_minilm_real_weights(minilm, tmp_path):
    builder = build_transformer_model(minilm["folder"], with_pool=True,
                                      return_keras_model=False)
    sequence, pooled = predict(builder.model, minilm["ids"], minilm["segments"])
    assert_close(sequence, minilm["sequence"], what="MiniLM sequence output")
    assert_close(pooled, minilm["pooled"], what="MiniLM pooled output")

    # Written in the official format by bert4x's writer, then read back.
    prefix = checkpoints.save_checkpoint(builder, str(tmp_path / "minilm_google"))
    assert prefix == str(tmp_path / "minilm_google" / "bert_model.ckpt")
    names = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    assert names["bert/encoder/layer_5/intermediate/dense/kernel"] == [384, 1536]
    assert names["bert/embeddings/word_embeddings"] == [30522, 384]
    reloaded = build_transformer_model(
        str(tmp_path / "minilm_google" / "bert_config.json"), prefix, with_pool=True)
    sequence, pooled = predict(reloaded, minilm["ids"], minilm["segments"])
    assert_close(sequence, minilm["sequence"], what="MiniLM via Google format")
    assert_close(pooled, minilm["pooled"], what="MiniLM pooled via Google format")


def test_minilm_missing_heads(minilm):
    with pytest.raises(ValueError) as error:
        build_transformer_model(minilm["folder"], with_mlm=True)
    assert "cls/predictions/transform/dense/kernel" in str(error.value)
    assert "allow_missing_heads" in str(error.value)
    with pytest.warns(UserWarning) as caught:
        model = build_transformer_model(minilm["folder"], with_mlm=True, with_nsp=True,
                                        allow_missing_heads=True)
    message = " ".join(str(w.message) for w in caught)
    for name in ("cls/predictions/transform/dense/kernel",
                 "cls/predictions/transform/LayerNorm/gamma", "cls/predictions/output_bias",
                 "cls/seq_relationship/output_weights", "cls/seq_relationship/output_bias"):
        assert name in message
    assert "bert/pooler/dense/kernel" not in message  # MiniLM has a pooler
    # The encoder itself still carries the real weights.
    sequence = predict(model, minilm["ids"], minilm["segments"])[0]
    assert_close(sequence, minilm["sequence"], what="MiniLM with initialised heads")


# ---------------------------------------------------------------------- round trips
def test_google_checkpoint_round_trip(workdir, tmp_path):
    source = os.path.join(workdir["root"], "ckpt_gelu", "bert_model.ckpt")
    original = tf.train.load_checkpoint(source)
    original_names = set(original.get_variable_to_shape_map())
    slots = {n for n in original_names if n.endswith(("/adam_m", "/adam_v"))}
    assert slots and "global_step" in original_names  # the slots are there to be ignored
    builder = build_transformer_model(checkpoint_path=source, with_pool=True,
                                      with_nsp=True, with_mlm=True,
                                      return_keras_model=False)
    prefix = checkpoints.save_checkpoint(builder, str(tmp_path / "written"))
    written = tf.train.load_checkpoint(prefix)
    written_names = set(written.get_variable_to_shape_map())
    assert written_names == original_names - slots - {"global_step"}
    for name in written_names:
        np.testing.assert_array_equal(written.get_tensor(name), original.get_tensor(name),
                                      err_msg=name)
        assert written.get_tensor(name).dtype == np.float32
    with open(tmp_path / "written" / "bert_config.json") as file:
        config = json.load(file)
    assert {key: config[key] for key in TINY} == TINY and config["hidden_act"] == "gelu"
    # The written folder loads back (folder form) to the same outputs.
    again = build_transformer_model(checkpoint_path=str(tmp_path / "written"),
                                    with_pool=True, with_nsp=True, with_mlm=True)
    ids, segments = workdir["ids"], workdir["segments"]
    for first, second in zip(predict(builder.model, ids, segments),
                             predict(again, ids, segments)):
        np.testing.assert_array_equal(first, second)


def test_save_checkpoint_is_atomic(workdir, tmp_path, monkeypatch):
    builder = build_transformer_model(
        checkpoint_path=os.path.join(workdir["root"], "ckpt_gelu"), return_keras_model=False)
    target = tmp_path / "ckpt"
    checkpoints.save_checkpoint(builder, str(target))
    before = {name: (target / name).read_bytes() for name in os.listdir(target)}
    assert "bert_model.ckpt.index" in before

    def broken_save(**kwargs):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(tf.raw_ops, "SaveV2", broken_save)
    builder.token_embedding.embeddings.assign(
        np.zeros(builder.token_embedding.embeddings.shape, "float32"))
    with pytest.raises(RuntimeError, match="disk full"):
        checkpoints.save_checkpoint(builder, str(target))
    assert {name: (target / name).read_bytes() for name in os.listdir(target)} == before
    assert os.listdir(tmp_path) == ["ckpt"]  # no staging folder left behind
    with pytest.raises(RuntimeError, match="disk full"):
        checkpoints.save_checkpoint(builder, str(tmp_path / "fresh"))
    assert os.listdir(tmp_path) == ["ckpt"]


def test_save_checkpoint_keeps_other_files(workdir, tmp_path):
    builder = build_transformer_model(
        checkpoint_path=os.path.join(workdir["root"], "ckpt_gelu"), return_keras_model=False)
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("keep me")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a plain BERT: nothing unwritten
        checkpoints.save_checkpoint(builder, str(tmp_path / "project"))
    assert (tmp_path / "project" / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["project"]


def test_save_checkpoint_warns_about_cln_weights(tmp_path):
    label = keras.Input((), dtype="int32", name="Input-Label")
    condition = keras.layers.Embedding(3, 8, name="Label-Embedding")(label)
    builder = build_transformer_model(
        **dict(TINY, num_hidden_layers=1, hidden_act="gelu"), layer_norm_cond=condition,
        additional_input_layers=[label], return_keras_model=False)
    with pytest.warns(UserWarning, match="gamma_dense") as caught:
        prefix = checkpoints.save_checkpoint(builder, str(tmp_path / "cln"))
    assert "Label-Embedding" in str(caught[0].message)
    # What is written is the plain BERT, which loads back.
    build_transformer_model(str(tmp_path / "cln" / "bert_config.json"), prefix)


# ---------------------------------------------------------------------- error cases
def _variant(workdir, tmp_path, edit):
    """A copy of the gelu checkpoint with ``edit(weights)`` applied."""
    weights = dict(workdir["weights"]["gelu"])
    edit(weights)
    folder = str(tmp_path / "variant")
    write_google_checkpoint(folder, weights, dict(TINY, hidden_act="gelu"),
                            optimizer_slots=False)
    return folder


def test_error_file_not_found(workdir, tmp_path):
    config = os.path.join(workdir["root"], "ckpt_gelu", "bert_config.json")
    missing = str(tmp_path / "nowhere" / "bert_model.ckpt")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_transformer_model(config, missing)
    with pytest.raises(FileNotFoundError, match="no_such_config"):
        build_transformer_model(str(tmp_path / "no_such_config.json"), missing)
    with pytest.raises(FileNotFoundError, match="empty_folder"):
        os.makedirs(tmp_path / "empty_folder")
        build_transformer_model(config, str(tmp_path / "empty_folder"))


def test_error_missing_variable(workdir, tmp_path):
    name = "bert/encoder/layer_1/attention/self/key/bias"
    folder = _variant(workdir, tmp_path, lambda w: w.pop(name))
    with pytest.raises(ValueError) as error:
        build_transformer_model(checkpoint_path=folder)
    assert name in str(error.value) and folder in str(error.value)


def test_error_unexpected_shape(workdir, tmp_path):
    name = "bert/encoder/layer_2/intermediate/dense/kernel"

    def edit(weights):
        weights[name] = np.zeros((48, 81), np.float32)

    folder = _variant(workdir, tmp_path, edit)
    with pytest.raises(ValueError) as error:
        build_transformer_model(checkpoint_path=folder)
    message = str(error.value)
    assert name in message and "(48, 81)" in message and "(48, 80)" in message


def test_error_vocab_size_mismatch(workdir):
    folder = os.path.join(workdir["root"], "ckpt_gelu")
    with pytest.raises(ValueError) as error:
        build_transformer_model(checkpoint_path=folder, vocab_size=120)
    message = str(error.value)
    assert "vocab" in message and "99" in message and "120" in message
    assert "word_embeddings" in message


def test_error_truncated_tf_checkpoint(workdir, tmp_path):
    folder = str(tmp_path / "truncated")
    shutil.copytree(os.path.join(workdir["root"], "ckpt_gelu"), folder)
    data = [name for name in os.listdir(folder) if ".data-" in name]
    assert len(data) == 1
    path = os.path.join(folder, data[0])
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) // 3)
    with pytest.raises(ValueError) as error:
        build_transformer_model(checkpoint_path=folder)
    assert "truncated" in str(error.value) or "corrupt" in str(error.value)
    assert folder in str(error.value)


def test_error_truncated_safetensors(workdir, tmp_path):
    from safetensors.numpy import save_file
    state = hf_state(workdir["weights"]["gelu"])
    path = str(tmp_path / "model.safetensors")
    save_file(state, path)
    with open(tmp_path / "config.json", "w") as file:
        json.dump(dict(TINY, hidden_act="gelu"), file)
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) - 1000)
    with pytest.raises(ValueError) as error:
        build_transformer_model(str(tmp_path))
    assert "model.safetensors" in str(error.value)
    # A header that is not JSON at all.
    with open(path, "wb") as file:
        file.write(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    with pytest.raises(ValueError, match="model.safetensors"):
        build_transformer_model(str(tmp_path))


def test_error_unknown_model_and_field(workdir):
    folder = os.path.join(workdir["root"], "ckpt_gelu")
    with pytest.raises(ValueError, match="'gpt9'"):
        build_transformer_model(checkpoint_path=folder, model="gpt9")
    with pytest.raises(TypeError, match="hiden_size"):
        build_transformer_model(checkpoint_path=folder, hiden_size=32)
    with pytest.raises(ValueError, match="'decoder'"):
        build_transformer_model(checkpoint_path=folder, application="decoder")
    with pytest.raises(ValueError, match="'logits'"):
        build_transformer_model(checkpoint_path=folder, with_nsp="logits")


def test_error_unknown_layer_name(workdir):
    model = build_transformer_model(**dict(TINY, num_hidden_layers=1))
    with pytest.raises(ValueError, match="Transformer-7-FeedForward-Norm"):
        intermediate_model(model, "Transformer-7-FeedForward-Norm")
    with pytest.raises(ValueError, match="runs 1 attention layers .* got 3"):
        attention_model(model, 3)


# ------------------------------------------------------------------------ keep_tokens
def test_keep_tokens_tiny(workdir, reference):
    keep = [0, 5, 3, 17, 98, 42, 1, 64]
    folder = os.path.join(workdir["root"], "ckpt_gelu")
    model = build_transformer_model(checkpoint_path=folder, with_mlm="linear",
                                    keep_tokens=keep)
    new_ids = np.array([[2, 1, 4, 7, 3, 0, 0], [6, 5, 5, 1, 0, 0, 0]], np.int32)
    full_ids = np.asarray(keep, np.int32)[new_ids]
    segments = np.array([[0, 0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0, 0]], np.int32)
    sequence, logits = predict(model, new_ids, segments)
    hf = hf_pretraining_model(dict(TINY, hidden_act="gelu"), workdir["weights"]["gelu"])
    expected = hf_outputs(hf, full_ids, segments)
    assert logits.shape[-1] == len(keep)
    assert_close(sequence, expected["sequence"], what="sequence with keep_tokens")
    assert_close(logits, expected["mlm_logits"][..., keep], what="kept MLM logits")


def test_keep_tokens_chinese_vocab(tmp_path):
    from bert4x.tokenizers import Tokenizer, load_vocab
    vocab = chinese_vocab_path()
    token_dict, keep = load_vocab(vocab, simplified=True)
    assert len(token_dict) == len(keep) < 21128  # the vocabulary really is trimmed
    config = dict(vocab_size=21128, hidden_size=16, num_hidden_layers=1,
                  num_attention_heads=2, intermediate_size=24, hidden_act="gelu",
                  max_position_embeddings=32, type_vocab_size=2)
    weights = google_weights(config, seed=5)
    write_google_checkpoint(str(tmp_path), weights, config, optimizer_slots=False)
    text = "今天天气很好，我们去公园散步吧。"
    new_ids, segments = Tokenizer(token_dict).encode(text)
    full_ids, full_segments = Tokenizer(vocab).encode(text)
    assert [keep[i] for i in new_ids] == full_ids and segments == full_segments
    kept = build_transformer_model(checkpoint_path=str(tmp_path), with_mlm="linear",
                                   keep_tokens=keep)
    full = build_transformer_model(checkpoint_path=str(tmp_path), with_mlm="linear")
    seq_kept, logits_kept = predict(kept, np.array([new_ids]), np.array([segments]))
    seq_full, logits_full = predict(full, np.array([full_ids]), np.array([segments]))
    assert_close(seq_kept, seq_full, tol=1e-5, what="sequence")
    assert_close(logits_kept, logits_full[..., keep], tol=1e-5, what="kept logits")


# -------------------------------------------------------------------- serving export
def test_savedmodel_export(workdir, tmp_path):
    """A fine-tuned-style classifier exported with ``model.export`` serves the same outputs."""
    bert = build_transformer_model(checkpoint_path=os.path.join(workdir["root"], "ckpt_gelu"),
                                   with_pool=True)
    logits = keras.layers.Dense(3, name="Classifier")(keras.layers.Dropout(0.1)(bert.outputs[1]))
    classifier = keras.Model(bert.inputs, logits)
    path = str(tmp_path / "served")
    classifier.export(path)
    served = tf.saved_model.load(path)
    signature = served.signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    assert sorted(specs) == ["Input_Segment", "Input_Token"]
    for spec in specs.values():
        assert spec.dtype == tf.int32 and spec.shape.as_list() == [None, None]
    # Two batches of different lengths: the exported graph has dynamic length.
    for ids, segments in ((workdir["ids"], workdir["segments"]),
                          (workdir["ids"][:2, :6], workdir["segments"][:2, :6])):
        expected = predict(classifier, ids, segments)[0]
        outputs = signature(Input_Token=tf.constant(ids), Input_Segment=tf.constant(segments))
        assert len(outputs) == 1
        assert_close(next(iter(outputs.values())).numpy(), expected, tol=1e-5,
                     what="serving_default")
        assert_close(served.serve([ids, segments]).numpy(), expected, tol=1e-5,
                     what="serve endpoint")


def test_dropout_mask_statistics_and_scale():
    """bert4x's Dropout draws two 15-bit numbers per random integer: both halves of
    the tensor must drop at the rate, independently, with Keras's scaling."""
    from bert4x.layers import Dropout
    layer = Dropout(0.1, seed=3)
    inputs = keras.ops.ones((4, 1001, 37))  # odd size: the last pair is half used
    first = keras.ops.convert_to_numpy(layer(inputs, training=True)).ravel()
    second = keras.ops.convert_to_numpy(layer(inputs, training=True)).ravel()
    kept = first != 0
    np.testing.assert_allclose(first[kept], 1 / 0.9, rtol=1e-6)
    half = first.size // 2
    dropped_low, dropped_high = ~kept[:half], ~kept[half:2 * half]
    sigma = np.sqrt(0.1 * 0.9 / half)
    for share in (dropped_low.mean(), dropped_high.mean()):
        assert abs(share - 3277 / 32768) < 5 * sigma
    # The halves come from the two ends of the same integers: they must not agree
    # more often than independent masks would.
    both = np.mean(dropped_low & dropped_high)
    assert abs(both - 0.01) < 5 * np.sqrt(0.01 * 0.99 / half)
    assert np.mean(first != second) > 0.1  # a fresh mask per call
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(inputs)), 1.0)
    config = Dropout.from_config(layer.get_config()).get_config()
    assert config["rate"] == 0.1 and config["seed"] == 3
    assert not keras.ops.convert_to_numpy(Dropout(1.0)(inputs, training=True)).any()


def test_single_additional_input_tensor():
    # bert4keras accepts additional_input_layers=c_in (one tensor, no list).
    label = keras.Input((), dtype="int32", name="Input-Label")
    condition = keras.layers.Embedding(3, 8, name="Label-Embedding")(label)
    model = build_transformer_model(
        **dict(TINY, num_hidden_layers=1), layer_norm_cond=condition,
        additional_input_layers=label)
    assert [tensor.name for tensor in model.inputs][2:] == ["Input-Label"]
    output = model.predict([np.array([[2, 5, 3]]), np.zeros((1, 3), "int32"),
                            np.array([1])], verbose=0)
    assert output.shape == (1, 3, TINY["hidden_size"])


def test_model_takes_its_inputs_by_name_too():
    """The list bert4keras scripts pass, or a dict keyed by the inputs' names."""
    label = keras.Input((), dtype="int32", name="Input-Label")
    condition = keras.layers.Embedding(3, 8, name="Label-Embedding")(label)
    model = build_transformer_model(
        **dict(TINY, num_hidden_layers=1), with_mlm=True, mlm_positions=True,
        layer_norm_cond=condition, additional_input_layers=label)
    names = ["Input-Token", "Input-Segment", "Input-MLM-Positions", "Input-Label"]
    assert [tensor.name for tensor in model.inputs] == names
    arrays = [np.array([[2, 5, 3, 7]]), np.array([[0, 0, 1, 1]]), np.array([[1, 3]]),
              np.array([2])]
    by_position = model.predict(arrays, verbose=0)
    by_name = model.predict(dict(zip(names, arrays)), verbose=0)
    assert len(by_position) == len(by_name) == 2  # sequence output, MLM at the positions
    for first, second in zip(by_position, by_name):
        np.testing.assert_array_equal(first, second)
    called = model(dict(zip(names, arrays)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(called[1]), by_position[1],
                               atol=1e-6)


def test_no_segment_embeddings(workdir, tmp_path):
    # type_vocab_size 0: no segment table; the checkpoint's one is left unused. The
    # reference is Hugging Face's BERT with that table zeroed.
    source = os.path.join(workdir["root"], "ckpt_gelu", "bert_model.ckpt")
    builder = build_transformer_model(checkpoint_path=source, type_vocab_size=0,
                                      with_mlm=True, return_keras_model=False)
    assert builder.segment_embedding is None
    weights = dict(workdir["weights"]["gelu"])
    weights["bert/embeddings/token_type_embeddings"] = np.zeros_like(
        weights["bert/embeddings/token_type_embeddings"])
    expected = hf_outputs(hf_pretraining_model(dict(TINY, hidden_act="gelu"), weights),
                          workdir["ids"], workdir["segments"])
    sequence, mlm = predict(builder.model, workdir["ids"], workdir["segments"])
    valid = workdir["ids"] != 0
    assert_close(sequence[valid], expected["sequence"][valid], what="sequence")
    assert_close(mlm[valid], softmax(expected["mlm_logits"])[valid], what="mlm")
    # The official format round-trips it (no token_type_embeddings written).
    prefix = checkpoints.save_checkpoint(builder, str(tmp_path / "no_segments"))
    assert not any("token_type" in name for name in
                   tf.train.load_checkpoint(prefix).get_variable_to_shape_map())
    again = build_transformer_model(checkpoint_path=str(tmp_path / "no_segments"),
                                    with_mlm=True)
    for first, second in zip(predict(builder.model, workdir["ids"], workdir["segments"]),
                             predict(again, workdir["ids"], workdir["segments"])):
        np.testing.assert_array_equal(first, second)
    with pytest.raises(ValueError, match="type_vocab_size must be an integer >= 0"):
        BertConfig(**dict(TINY, type_vocab_size=-1))
