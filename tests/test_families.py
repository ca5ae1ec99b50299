"""Acceptance tests of the model families on the one Transformer core:
RoBERTa (HFL and fairseq), ALBERT (Google and brightmart layouts, shared and
unshared), ELECTRA (discriminator and generator), RoFormer (with and without
``embeddings_project``), NEZHA, RoFormer-V2 (with and without factorised
embeddings), and the parity of T5 / mT5 on every backend (the rest of T5's tests are
in ``test_t5.py``).

References are Hugging Face ``transformers`` models on PyTorch with random weights;
for NEZHA, which transformers 5 no longer has, :func:`numpy_nezha` below, the
paper's formulas written out in NumPy; for RoFormer-V2, which it never had,
:func:`numpy_roformer_v2` (its parity with bert4keras itself is in
``test_bert4keras.py``).
Their weights are written in the official TF layout through this file's own
Hugging Face -> official name rules (``tf.raw_ops.SaveV2``) and as Hugging Face
folders (``save_pretrained``). Shapes are odd on purpose: 3 heads, intermediate
sizes that are not 4x hidden, embedding_size != hidden_size, padded batches.

The TensorFlow, JAX and PyTorch backends each run ``_family_worker.py`` once (this
process's backend in-process, the other two as subprocesses started together); the
tests after the parity reuse the in-process run's models.
"""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from bert4x import checkpoints  # noqa: E402
from bert4x.models import MODELS, build_transformer_model  # noqa: E402
from _official_checkpoint import write_official  # noqa: E402
from _oracle import import_oracle  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_position_encoding import numpy_nezha_table, numpy_rotate  # noqa: E402
import _t5_cases  # noqa: E402

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
TOL = 1e-4
VOCAB, LENGTHS, WIDTH = 61, (11, 7, 4), 11
BASE = dict(vocab_size=VOCAB, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
            intermediate_size=52, max_position_embeddings=40, type_vocab_size=2,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

# ----------------------------------------------- this file's Hugging Face -> official map
BERT_RULES = [(r"^cls\.predictions\.bias$", "cls.predictions.output_bias")]
ROBERTA_RULES = [(r"^roberta\.", "bert."),
                 (r"^lm_head\.dense", "cls.predictions.transform.dense"),
                 (r"^lm_head\.layer_norm", "cls.predictions.transform.LayerNorm"),
                 (r"^lm_head\.bias$", "cls.predictions.output_bias")]
ALBERT_RULES = [
    (r"^albert\.encoder\.albert_layer_groups\.(\d+)\.albert_layers\.(\d+)\.",
     r"bert.encoder.transformer.group_\1.inner_group_\2."),
    (r"\.attention\.(query|key|value)\.", r".attention_1.self.\1."),
    (r"\.attention\.dense\.", ".attention_1.output.dense."),
    (r"\.attention\.LayerNorm\.", ".LayerNorm."),
    (r"\.full_layer_layer_norm\.", ".LayerNorm_1."),
    (r"\.ffn_output\.", ".ffn_1.intermediate.output.dense."),
    (r"\.ffn\.", ".ffn_1.intermediate.dense."),
    (r"^albert\.pooler\.", "bert.pooler.dense."), (r"^albert\.", "bert."),
    (r"^predictions\.bias$", "cls.predictions.output_bias"),
    (r"^predictions\.", "cls.predictions.transform."),
    (r"^sop_classifier\.classifier\.weight$", "cls.seq_relationship.output_weights"),
    (r"^sop_classifier\.classifier\.bias$", "cls.seq_relationship.output_bias")]
DISCRIMINATOR_RULES = [(r"\.dense_prediction\.", ".dense_1.")]
GENERATOR_RULES = [(r"^electra\.embeddings_project\.", "generator.embeddings_project."),
                   (r"^electra\.encoder\.", "generator.encoder."),
                   (r"^generator_lm_head\.bias$", "generator_predictions.output_bias")]
ROFORMER_RULES = [(r"^roformer\.", "bert."),
                  (r"^cls\.predictions\.bias$", "cls.predictions.output_bias")]
# Tied copies, buffers and RoFormer's frozen sinusoid table have no official name.
TIED = re.compile(r"(decoder\.(weight|bias)|generator_lm_head\.weight|position_ids|"
                  r"embed_positions\.weight)$")


def official_weights(hf_model, rules):
    """The model's weights under official TF names, by this file's rules."""
    weights = {}
    for name, value in hf_model.state_dict().items():
        if TIED.search(name):
            continue
        value = value.detach().numpy().astype(np.float32)
        for pattern, replacement in rules:
            name = re.sub(pattern, replacement, name)
        norm = "LayerNorm" in name or "layer_norm" in name
        if name.endswith(".weight"):
            stem = name[: -len(".weight")]
            if norm:
                name = stem + ".gamma"
            elif stem.endswith("_embeddings"):
                name = stem
            else:
                name, value = stem + ".kernel", value.T
        elif name.endswith(".bias") and norm:
            name = name[: -len(".bias")] + ".beta"
        name = re.sub(r"\.layer\.(\d+)\.", r".layer_\1.", name).replace(".", "/")
        weights[name] = np.ascontiguousarray(value)
    return weights


def randomised(model, seed):
    """Weights large enough that every part of the model shows in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "embed_positions" in name:
                continue  # RoFormer's fixed sinusoid table
            noise = torch.randn(parameter.shape, generator=generator)
            if "LayerNorm.weight" in name or "layer_norm.weight" in name:
                parameter.copy_(1.0 + 0.1 * noise)
            else:
                parameter.copy_((0.5 if "embeddings" in name else 0.2) * noise)
    return model.eval()


def hf_run(model, base, ids, segments, pad, heads=("logits",)):
    """``(sequence_output, *head outputs)`` of a Hugging Face model, as NumPy."""
    ids_t = torch.from_numpy(ids.astype(np.int64))
    kwargs = dict(attention_mask=(ids_t != pad).long(),
                  token_type_ids=torch.from_numpy(segments.astype(np.int64)))
    with torch.no_grad():
        sequence = getattr(model, base)(ids_t, **kwargs).last_hidden_state.numpy()
        full = model(ids_t, **kwargs)
    return [sequence] + [full[key].numpy() for key in heads]


def random_official_weights(config, seed, positions=True):
    """Random weights under BERT's official names (``positions=False``: without
    ``position_embeddings``), with the MLM head."""
    rng = np.random.default_rng(seed)
    V, H, I = config["vocab_size"], config["hidden_size"], config["intermediate_size"]

    def normal(*shape, scale=0.2):
        return rng.normal(0.0, scale, shape).astype(np.float32)

    def dense(name, fan_in, fan_out):
        return {name + "/kernel": normal(fan_in, fan_out), name + "/bias": normal(fan_out)}

    def norm(name):
        return {name + "/gamma": 1.0 + normal(H, scale=0.1), name + "/beta": normal(H)}

    weights = {"bert/embeddings/word_embeddings": normal(V, H, scale=0.5),
               "bert/embeddings/token_type_embeddings": normal(2, H, scale=0.5),
               **norm("bert/embeddings/LayerNorm"), **dense("cls/predictions/transform/dense", H, H),
               **norm("cls/predictions/transform/LayerNorm"),
               "cls/predictions/output_bias": normal(V)}
    if positions:
        weights["bert/embeddings/position_embeddings"] = normal(
            config["max_position_embeddings"], H, scale=0.5)
    for i in range(config["num_hidden_layers"]):
        p = f"bert/encoder/layer_{i}/"
        for part in ("self/query", "self/key", "self/value", "output/dense"):
            weights.update(dense(p + "attention/" + part, H, H))
        weights.update(norm(p + "attention/output/LayerNorm"))
        weights.update(dense(p + "intermediate/dense", H, I))
        weights.update(dense(p + "output/dense", I, H))
        weights.update(norm(p + "output/LayerNorm"))
    return weights


def numpy_nezha(config, weights, ids, segments):
    """NEZHA with the MLM head in float64 NumPy: ``[sequence_output, mlm_logits]``.

    Per head, with ``a_ij = T[clip(j - i, -K, K) + K]`` (``K`` =
    ``max_relative_position``, ``T`` the sinusoid table at the shifted index):
    ``s_ij = (q_i.k_j + q_i.a_ij) / sqrt(d) + mask``, ``p = softmax_j(s)``,
    ``o_i = sum_j p_ij (v_j + a_ij)``. Post-norm blocks and heads are BERT's.
    """
    w = {name: value.astype(np.float64) for name, value in weights.items()}
    heads, k = config["num_attention_heads"], config["max_relative_position"]
    d = config["hidden_size"] // heads

    def dense(x, name):
        return x @ w[name + "/kernel"] + w[name + "/bias"]

    def norm(x, name, eps=1e-12):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * w[name + "/gamma"] + w[name + "/beta"]

    def gelu(x):  # "gelu" is the exact erf form
        return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, d).transpose(0, 2, 1, 3)

    x = w["bert/embeddings/word_embeddings"][ids] + \
        w["bert/embeddings/token_type_embeddings"][segments]
    x = norm(x, "bert/embeddings/LayerNorm")
    distance = np.arange(ids.shape[1])[None, :] - np.arange(ids.shape[1])[:, None]
    a = numpy_nezha_table(k, d)[np.clip(distance, -k, k) + k]  # [i, j, d]
    mask = np.where(ids != 0, 0.0, -np.inf)[:, None, None, :]
    for layer in range(config["num_hidden_layers"]):
        p = f"bert/encoder/layer_{layer}/"
        q, kk, v = (split(dense(x, p + f"attention/self/{part}"))
                    for part in ("query", "key", "value"))
        scores = q @ kk.transpose(0, 1, 3, 2) + np.einsum("bhid,ijd->bhij", q, a)
        scores = scores / math.sqrt(d) + mask
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = probs @ v + np.einsum("bhij,ijd->bhid", probs, a)
        context = context.transpose(0, 2, 1, 3).reshape(x.shape)
        x = norm(x + dense(context, p + "attention/output/dense"),
                 p + "attention/output/LayerNorm")
        x = norm(x + dense(gelu(dense(x, p + "intermediate/dense")), p + "output/dense"),
                 p + "output/LayerNorm")
    head = norm(gelu(dense(x, "cls/predictions/transform/dense")),
                "cls/predictions/transform/LayerNorm")
    return [x, head @ w["bert/embeddings/word_embeddings"].T + w["cls/predictions/output_bias"]]


def random_roformer_v2_weights(config, seed):
    """Random RoFormer-V2 weights under bert4keras's official names: BERT's without
    biases, LayerNorms and positions; with E != H the embedding mapping, and bert4x's
    name for the MLM head's output mapping."""
    rng = np.random.default_rng(seed)
    V, H, I = config["vocab_size"], config["hidden_size"], config["intermediate_size"]
    E = config.get("embedding_size") or H

    def normal(*shape, scale=0.3):
        return rng.normal(0.0, scale, shape).astype(np.float32)

    weights = {"bert/embeddings/word_embeddings": normal(V, E, scale=0.5),
               "bert/embeddings/token_type_embeddings": normal(2, E, scale=0.5)}
    if E != H:
        weights["bert/encoder/embedding_hidden_mapping_in/kernel"] = normal(E, H)
        weights["cls/predictions/output_mapping/kernel"] = normal(H, E)
    for i in range(config["num_hidden_layers"]):
        p = f"bert/encoder/layer_{i}/"
        for part in ("self/query", "self/key", "self/value", "output/dense"):
            weights[p + "attention/" + part + "/kernel"] = normal(H, H)
        weights[p + "intermediate/dense/kernel"] = normal(H, I)
        weights[p + "output/dense/kernel"] = normal(I, H)
    return weights


def numpy_roformer_v2(config, weights, ids, segments):
    """RoFormer-V2 with its MLM head in float64 NumPy: ``[sequence_output, mlm_logits]``.

    ``rms(x) = x / sqrt(mean(x^2) + eps)`` (no gamma, no beta); ``h = rms(E_tok[x] +
    E_seg[s])`` (then ``h W_map``); per layer, with rotary queries and keys (no
    biases), ``h = rms(h + attention(h))``, ``h = rms(h + act(h W_1) W_2)``; logits
    ``(h W_out) E_tok^T`` (``W_out`` when E != H), no output bias.
    """
    w = {name: value.astype(np.float64) for name, value in weights.items()}
    heads = config["num_attention_heads"]
    d = config["hidden_size"] // heads
    act = {"relu": lambda x: np.maximum(x, 0.0),
           "gelu": lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))}[
        config["hidden_act"]]

    def rms(x, eps=1e-12):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, d).transpose(0, 2, 1, 3)

    def rotated(t):  # [batch, heads, length, d] at positions 0..length-1
        positions = range(t.shape[2])
        return np.stack([np.stack([numpy_rotate(row, positions) for row in per_head])
                         for per_head in t])

    x = rms(w["bert/embeddings/word_embeddings"][ids]
            + w["bert/embeddings/token_type_embeddings"][segments])
    if "bert/encoder/embedding_hidden_mapping_in/kernel" in w:
        x = x @ w["bert/encoder/embedding_hidden_mapping_in/kernel"]
    mask = np.where(ids != 0, 0.0, -np.inf)[:, None, None, :]
    for layer in range(config["num_hidden_layers"]):
        p = f"bert/encoder/layer_{layer}/"
        q, k, v = (split(x @ w[p + f"attention/self/{part}/kernel"])
                   for part in ("query", "key", "value"))
        scores = rotated(q) @ rotated(k).transpose(0, 1, 3, 2) / math.sqrt(d) + mask
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = rms(x + context @ w[p + "attention/output/dense/kernel"])
        x = rms(x + act(x @ w[p + "intermediate/dense/kernel"]) @ w[p + "output/dense/kernel"])
    head = x @ w["cls/predictions/output_mapping/kernel"] \
        if "cls/predictions/output_mapping/kernel" in w else x
    return [x, head @ w["bert/embeddings/word_embeddings"].T]


# ------------------------------------------------------------------------ the cases
def inputs_for(pad, two_segments=True, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.full((len(LENGTHS), WIDTH), pad, np.int32)
    segments = np.zeros_like(ids)
    for row, length in enumerate(LENGTHS):
        ids[row, :length] = rng.choice([t for t in range(VOCAB) if t != pad], length)
        if two_segments:
            segments[row, length // 2:length] = 1
    return ids, segments


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Every case: its reference outputs, official folder, Hugging Face folder, jobs."""
    root = str(tmp_path_factory.mktemp("bert4x_families"))
    torch.manual_seed(0)
    cases, arrays = {}, {}

    def add(key, hf_model, base, rules, family, pad, config, build, two_segments=True,
            save_hf=True, weights=None, heads=("logits",), reference=None):
        ids, segments = inputs_for(pad, two_segments)
        arrays[f"{key}/ids"], arrays[f"{key}/segments"] = ids, segments
        weights = official_weights(hf_model, rules) if weights is None else weights
        prefix = write_official(os.path.join(root, key, "official"), weights, config,
                                config_name="config.json")
        hf_folder = None
        if save_hf:
            hf_folder = os.path.join(root, key, "hf")
            hf_model.save_pretrained(hf_folder)
        expected = (hf_run(hf_model, base, ids, segments, pad, heads) if reference is None
                    else reference(weights, ids, segments))
        cases[key] = dict(family=family, prefix=prefix, hf=hf_folder, build=build,
                          expected=expected, weights=weights, config=config, ids=ids,
                          segments=segments)

    # HFL RoBERTa-wwm-ext: BERT math and names, loaded as model="roberta".
    config = dict(BASE, hidden_act="gelu_new")
    hf = randomised(transformers.BertForMaskedLM(transformers.BertConfig(
        **config, attn_implementation="eager")), 1)
    add("roberta_hfl", hf, "bert", BERT_RULES, "roberta", 0, config,
        dict(with_mlm="linear"))
    # fairseq RoBERTa (Hugging Face): pad 1, positions from pad + 1, one token type.
    config = dict(BASE, type_vocab_size=1, max_position_embeddings=40 + 2, pad_token_id=1,
                  layer_norm_eps=1e-5, hidden_act="gelu_new")
    hf = randomised(transformers.RobertaForMaskedLM(transformers.RobertaConfig(
        **config, attn_implementation="eager")), 2)
    add("roberta", hf, "roberta", ROBERTA_RULES, "roberta", 1,
        dict(config, model_type="roberta"), dict(with_mlm="linear"), two_segments=False)
    # Google ALBERT: E != H, one shared block, SOP head.
    config = dict(BASE, embedding_size=20, num_hidden_layers=3, num_hidden_groups=1,
                  inner_group_num=1, hidden_act="gelu_new")
    hf = randomised(transformers.AlbertForPreTraining(transformers.AlbertConfig(
        **config, attn_implementation="eager")), 3)
    add("albert", hf, "albert", ALBERT_RULES, "albert", 0, config,
        dict(with_nsp="linear", with_mlm="linear"), heads=("sop_logits", "prediction_logits"))
    # ALBERT with two groups of two inner blocks over four layers.
    config = dict(BASE, embedding_size=20, num_hidden_layers=4, num_hidden_groups=2,
                  inner_group_num=2, hidden_act="relu")
    hf = randomised(transformers.AlbertForMaskedLM(transformers.AlbertConfig(
        **config, attn_implementation="eager")), 4)
    add("albert_groups", hf, "albert", ALBERT_RULES, "albert", 0, config,
        dict(with_mlm="linear"))
    # ELECTRA discriminator (E != H) and a narrower generator sharing its embeddings.
    config = dict(BASE, embedding_size=20)
    discriminator = randomised(transformers.ElectraForPreTraining(transformers.ElectraConfig(
        **config, attn_implementation="eager")), 5)
    generator_config = dict(config, hidden_size=24, intermediate_size=40)
    generator = randomised(transformers.ElectraForMaskedLM(transformers.ElectraConfig(
        **generator_config, attn_implementation="eager")), 6)
    generator.electra.embeddings.load_state_dict(
        discriminator.electra.embeddings.state_dict())
    weights = official_weights(discriminator, DISCRIMINATOR_RULES)
    weights.update(official_weights(generator, GENERATOR_RULES))
    add("electra", discriminator, "electra", (), "electra", 0, config,
        dict(with_discriminator="linear"), weights=weights)
    add("electra_generator", generator, "electra", (), "electra", 0, config,
        dict(with_mlm="linear", hidden_size=24, intermediate_size=40), weights=weights)
    # brightmart albert_zh: tokens E -> H by word_embeddings_2, one block at
    # layer_shared; its reference is a BERT whose embedding matrix is the product
    # and whose layers all hold the shared block.
    config = dict(BASE, hidden_act="gelu_new")
    hf = randomised(transformers.BertForMaskedLM(transformers.BertConfig(
        **config, attn_implementation="eager")), 7)
    hf.bert.encoder.layer[1].load_state_dict(hf.bert.encoder.layer[0].state_dict())
    rng = np.random.default_rng(7)
    narrow = rng.normal(0, 0.5, (VOCAB, 12)).astype(np.float32)
    projection = rng.normal(0, 0.3, (12, 36)).astype(np.float32)
    with torch.no_grad():
        hf.bert.embeddings.word_embeddings.weight.copy_(torch.from_numpy(narrow @ projection))
    weights = {re.sub("layer_0/", "layer_shared/", name): value
               for name, value in official_weights(hf, BERT_RULES).items()
               if "layer_1/" not in name}
    weights["bert/embeddings/word_embeddings"] = narrow
    weights["bert/embeddings/word_embeddings_2"] = projection
    add("albert_zh", hf, "bert", (), "albert", 0,
        dict(config, embedding_size=12, ln_type="postln"), dict(with_mlm="linear"),
        save_hf=False, weights=weights)
    # RoFormer: rotary positions in attention, no position table; then with E != H
    # (embeddings_project). The Hugging Face folders carry the frozen sinusoid
    # table, which bert4x recomputes.
    for key, extra, seed in (("roformer", {}, 8), ("roformer_projected",
                                                   dict(embedding_size=20), 9)):
        config = dict(BASE, **extra)
        hf = randomised(transformers.RoFormerForMaskedLM(transformers.RoFormerConfig(
            **config, attn_implementation="eager")), seed)
        add(key, hf, "roformer", ROFORMER_RULES, "roformer", 0, config,
            dict(with_mlm="linear"))
    # NEZHA: relative positions on keys and values; K = 4 clips on these lengths.
    config = dict(BASE, hidden_act="gelu", max_relative_position=4,
                  use_relative_position=True)
    add("nezha", None, None, (), "nezha", 0, config, dict(with_mlm="linear"),
        save_hf=False, weights=random_official_weights(config, seed=10, positions=False),
        reference=lambda weights, ids, segments: numpy_nezha(config, weights, ids, segments))

    # RoFormer-V2: no biases, RMS norms without gamma or beta, its bare MLM head; relu
    # (its checkpoints' activation), then gelu with E != H (both mappings).
    for key, extra, seed in (("roformer_v2", dict(hidden_act="relu"), 11),
                             ("roformer_v2_projected", dict(hidden_act="gelu",
                                                            embedding_size=20), 12)):
        config = dict(BASE, **extra)
        add(key, None, None, (), "roformer_v2", 0, config, dict(with_mlm="linear"),
            save_hf=False, weights=random_roformer_v2_weights(config, seed),
            reference=lambda weights, ids, segments, config=config: numpy_roformer_v2(
                config, weights, ids, segments))

    # T5 and mT5 (encoder-decoders): the model's inputs are the encoder's and the
    # decoder's ids, its output the decoder's probabilities.
    encoder_ids, decoder_ids = _t5_cases.inputs()
    for version, (_, _, _, family) in _t5_cases.VERSIONS.items():
        key = version.replace(".", "_")
        folder = os.path.join(root, key)
        hf = _t5_cases.hf_model(version, os.path.join(folder, "hf"), seed=11)
        weights = _t5_cases.official_weights(hf, version)
        prefix = _t5_cases.write_official(os.path.join(folder, "official"), weights,
                                          _t5_cases.bert4keras_config(version))
        arrays[f"{key}/encoder_ids"], arrays[f"{key}/decoder_ids"] = encoder_ids, decoder_ids
        cases[key] = dict(family=family, prefix=prefix, hf=os.path.join(folder, "hf"),
                          build={}, weights=weights, config=None,
                          inputs=[f"{key}/encoder_ids", f"{key}/decoder_ids"],
                          expected=_t5_cases.hf_outputs(hf, encoder_ids, decoder_ids)[:1])

    jobs = []
    for key, case in cases.items():
        inputs = case.get("inputs", [f"{key}/ids", f"{key}/segments"])
        jobs.append(dict(key=f"{key}/official", inputs=inputs, kwargs=dict(
            case["build"], config_path=os.path.join(os.path.dirname(case["prefix"]),
                                                    "config.json"),
            checkpoint_path=case["prefix"], model=case["family"])))
        if case["hf"]:
            # The family comes from config.json's model_type, except HFL's (a BERT).
            family = case["family"] if key == "roberta_hfl" else None
            jobs.append(dict(key=f"{key}/hf", inputs=inputs,
                             kwargs=dict(case["build"], checkpoint_path=case["hf"],
                                         model=family)))
    with open(os.path.join(root, "jobs.json"), "w") as file:
        json.dump(jobs, file)
    np.savez(os.path.join(root, "inputs.npz"), **arrays)
    return dict(root=root, cases=cases, jobs=jobs)


@pytest.fixture(scope="module")
def worker_run(cases):
    """``(results per backend, this process's builders per job key)``."""
    sys.path.insert(0, HERE)
    try:
        import _family_worker
    finally:
        sys.path.remove(HERE)
    own, root = keras.backend.backend(), cases["root"]
    processes = {}
    for backend in BACKENDS:
        if backend != own:
            env = dict(os.environ, **ONE_THREAD, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu",
                       CUDA_VISIBLE_DEVICES="")
            out = os.path.join(root, f"results_{backend}.npz")
            processes[backend] = (out, subprocess.Popen(
                [sys.executable, _family_worker.__file__, root, out], env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    builders = _family_worker.run(root, os.path.join(root, f"results_{own}.npz"))
    results = {}
    for backend in BACKENDS:
        out = os.path.join(root, f"results_{backend}.npz")
        if backend in processes:
            log, _ = processes[backend][1].communicate(timeout=900)
            if processes[backend][1].returncode != 0:
                results[backend] = log[-4000:]
                continue
        with np.load(out) as data:
            results[backend] = {key: data[key] for key in data.files}
    return results, builders


@pytest.fixture(scope="module")
def backend_results(worker_run):
    return worker_run[0]


@pytest.fixture(scope="module")
def official_builders(worker_run):
    """The builders this process's worker run made from each case's official files
    (``config.json`` + the checkpoint prefix, the case's heads), already checked
    against the references by the parity test; the tests below reuse them rather
    than build the same models again."""
    return {key.split("/")[0]: builder for key, builder in worker_run[1].items()
            if key.endswith("/official")}


def assert_close(actual, expected, what, tol=TOL):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    error = float(np.max(np.abs(actual - expected)))
    assert error <= tol, f"{what}: max abs error {error:.3g} > {tol}"


def predict(model, *arrays):
    outputs = model([keras.ops.convert_to_tensor(a) for a in arrays], training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [keras.ops.convert_to_numpy(output) for output in outputs]


# --------------------------------------------------------------------------- parity
@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_with_transformers(backend_results, cases, backend):
    """Sequence output and every head within 1e-4 of transformers, from the official
    layout and from the Hugging Face folder, on each backend."""
    results = backend_results[backend]
    if isinstance(results, str):
        pytest.fail(f"the {backend} worker failed:\n{results}")
    assert len(cases["jobs"]) == 26
    for job in cases["jobs"]:
        key = job["key"]
        expected = cases["cases"][key.split("/")[0]]["expected"]
        for index, reference in enumerate(expected):
            assert_close(results[f"{key}/{index}"], reference, f"{backend} {key} output {index}")
        assert f"{key}/{len(expected)}" not in results
    for version in _t5_cases.VERSIONS:  # the decoder's probabilities, peaked enough to tell
        assert cases["cases"][version.replace(".", "_")]["expected"][0].max() > 0.5


def test_families_are_told_apart(cases):
    """Loading a family's checkpoint as another family fails or gives other outputs."""
    roberta = cases["cases"]["roberta"]
    as_bert = build_transformer_model(checkpoint_path=os.path.dirname(roberta["prefix"]),
                                      model="roberta", with_mlm="linear", model_type=None,
                                      pad_token_id=0)
    sequence = predict(as_bert, roberta["ids"], roberta["segments"])[0]
    assert np.abs(sequence - roberta["expected"][0]).max() > 10 * TOL
    with pytest.raises(ValueError, match="model='roberta'"):
        build_transformer_model(checkpoint_path=roberta["hf"], model="bert")
    albert = cases["cases"]["albert"]
    with pytest.raises(ValueError, match="embedding_size 20 != hidden_size 36"):
        build_transformer_model(checkpoint_path=albert["hf"], model="bert", model_type=None)
    with pytest.raises(ValueError, match="'gpt9'.*albert_unshared"):
        build_transformer_model(checkpoint_path=albert["hf"], model="gpt9")
    with pytest.raises(ValueError, match="no \\['pool'\\] head"):
        build_transformer_model(checkpoint_path=cases["cases"]["electra"]["hf"],
                                with_pool=True)
    with pytest.raises(NotImplementedError, match="relative_key"):
        build_transformer_model(vocab_size=10, hidden_size=8, num_attention_heads=2,
                                position_embedding_type="relative_key")


# ----------------------------------------------------------------- written back exactly
@pytest.mark.parametrize("key", ["roberta_hfl", "roberta", "albert", "albert_groups",
                                 "albert_zh", "electra", "electra_generator", "roformer",
                                 "roformer_projected", "nezha", "roformer_v2",
                                 "roformer_v2_projected"])
def test_official_format_round_trip(cases, official_builders, key, tmp_path):
    """save_checkpoint writes the family's official names, values bit for bit."""
    case = cases["cases"][key]
    builder = official_builders[key]  # built from config.json + prefix with case["build"]
    prefix = checkpoints.save_checkpoint(builder, str(tmp_path / "written"))
    written = tf.train.load_checkpoint(prefix)
    names = set(written.get_variable_to_shape_map())
    expected = set(case["weights"])
    if key == "electra":
        expected = {name for name in expected if not name.startswith("generator")}
    elif key == "electra_generator":
        expected = {name for name in expected
                    if name.startswith(("generator", "electra/embeddings/"))}
    if key == "albert":  # the pooler is only built with with_pool/with_nsp
        assert "bert/pooler/dense/kernel" in names
    assert names == expected
    for name in names:
        np.testing.assert_array_equal(written.get_tensor(name), case["weights"][name],
                                      err_msg=name)
    again = build_transformer_model(checkpoint_path=str(tmp_path / "written"),
                                    model=case["family"], **case["build"])
    for first, second in zip(predict(builder.model, case["ids"], case["segments"]),
                             predict(again, case["ids"], case["segments"])):
        np.testing.assert_array_equal(first, second)


def test_keras_file_round_trip(cases, official_builders, tmp_path):
    for key in ("roberta", "albert", "albert_zh", "electra", "roformer", "nezha",
                "roformer_v2_projected"):
        case = cases["cases"][key]
        model = official_builders[key].model
        before = predict(model, case["ids"], case["segments"])
        model.save(str(tmp_path / f"{key}.keras"))
        loaded = keras.saving.load_model(str(tmp_path / f"{key}.keras"))
        for first, second in zip(before, predict(loaded, case["ids"], case["segments"])):
            np.testing.assert_array_equal(first, second, err_msg=key)


def test_keep_tokens(cases, official_builders):
    """keep_tokens trims the embedding rows and the output bias of every family."""
    keep = [0, 1, 5, 3, 17, 60, 42, 9]
    for key in ("roberta", "albert", "albert_zh", "electra_generator", "roformer_projected",
                "nezha", "roformer_v2_projected"):
        case = cases["cases"][key]
        pad = case["config"].get("pad_token_id", 0)
        model = build_transformer_model(checkpoint_path=os.path.dirname(case["prefix"]),
                                        model=case["family"], keep_tokens=keep,
                                        **case["build"])
        new_ids = np.array([[2, 4, 3, 7, 6, 5, pad, pad]], np.int32)
        full_ids = np.asarray(keep, np.int32)[new_ids]
        segments = np.zeros_like(new_ids)
        expected = predict(official_builders[key].model, full_ids, segments)
        got = predict(model, new_ids, segments)
        assert_close(got[0], expected[0], f"{key} sequence", tol=1e-5)
        assert_close(got[-1], expected[-1][..., keep], f"{key} kept logits", tol=1e-5)


def test_albert_unshared(cases, tmp_path):
    """albert_unshared starts every layer from the shared weights (same outputs as
    ALBERT), then its layers move apart: the reference is transformers ALBERT with
    one group per layer holding the same weights."""
    case = cases["cases"]["albert"]
    builder = build_transformer_model(checkpoint_path=case["hf"], model="albert_unshared",
                                      with_mlm="linear", return_keras_model=False)
    assert len(builder.blocks) == 3 and builder.schedule == [0, 1, 2]
    sequence, logits = predict(builder.model, case["ids"], case["segments"])
    assert_close(sequence, case["expected"][0], "unshared = shared at load")
    rng = np.random.default_rng(0)
    kernel = builder.blocks[1]["feed_forward"].intermediate_dense.kernel
    kernel.assign(keras.ops.convert_to_numpy(kernel)
                  + rng.normal(0, 0.2, kernel.shape).astype(np.float32))
    config = transformers.AlbertConfig(**{k: v for k, v in case["config"].items()},
                                       attn_implementation="eager")
    config.num_hidden_groups = 3
    hf = transformers.AlbertForMaskedLM(config).eval()
    state = transformers.AlbertForMaskedLM.from_pretrained(
        case["hf"], local_files_only=True).state_dict()
    group = "albert.encoder.albert_layer_groups."
    for name in list(state):
        if name.startswith(group + "0."):
            for index in (1, 2):
                state[name.replace(group + "0.", f"{group}{index}.")] = state[name].clone()
    ffn = f"{group}1.albert_layers.0.ffn.weight"
    state[ffn] = torch.from_numpy(keras.ops.convert_to_numpy(kernel).T.copy())
    hf.load_state_dict(state, strict=False)
    expected = hf_run(hf, "albert", case["ids"], case["segments"], 0)
    got = predict(builder.model, case["ids"], case["segments"])
    assert np.abs(got[0] - case["expected"][0]).max() > 10 * TOL
    assert_close(got[0], expected[0], "unshared sequence")
    assert_close(got[1], expected[1], "unshared MLM logits")
    with pytest.raises(ValueError, match="different values"):
        checkpoints.save_checkpoint(builder, str(tmp_path / "written"))
    assert os.listdir(tmp_path) == []


def test_family_registry():
    # A superset of these (compared as sets: as lists, "gpt" sorts before "nezha").
    assert set(MODELS) >= {"albert", "albert_unshared", "bert", "electra", "nezha",
                           "roberta", "roformer", "roformer_v2", "gpt", "gpt2", "gpt2_ml"}


def test_nezha_reference_clips(cases):
    """The NumPy reference with K = 64 differs from K = 4 on these lengths, so the
    parity above checks the clipping of relative distances."""
    case = cases["cases"]["nezha"]
    unclipped = numpy_nezha(dict(case["config"], max_relative_position=64), case["weights"],
                            case["ids"], case["segments"])
    assert np.abs(unclipped[0] - case["expected"][0]).max() > 10 * TOL


# ------------------------------------------------------------- the QA demo's path
@pytest.mark.parametrize("family", ["roberta", "albert"])
def test_chinese_checkpoints_on_the_qa_demo_path(family, tmp_path):
    """A Chinese RoBERTa-wwm-ext-shaped checkpoint (BERT names) and an albert_zh-shaped
    one load through the QA demo's ``--config --checkpoint --vocab --model`` path with
    its trimmed vocabulary (keep_tokens): the kept logits are the full model's."""
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))
    try:
        import reading_comprehension_seq2seq as rc
    finally:
        sys.path.pop(0)
    from bert4x.demos import base_model
    from bert4x.resources import chinese_vocab_path
    config = dict(vocab_size=21128, hidden_size=24, num_hidden_layers=2,
                  num_attention_heads=3, intermediate_size=40, max_position_embeddings=64,
                  type_vocab_size=2, hidden_act="gelu")
    hf = randomised(transformers.BertForMaskedLM(transformers.BertConfig(**config)), 8)
    weights = official_weights(hf, BERT_RULES)
    if family == "albert":  # brightmart's layout: narrow tokens, one shared block
        config.update(embedding_size=8, ln_type="postln")
        weights = {re.sub("layer_0/", "layer_shared/", name): value
                   for name, value in weights.items() if "layer_1/" not in name}
        rng = np.random.default_rng(8)
        weights["bert/embeddings/word_embeddings"] = rng.normal(
            0, 0.5, (21128, 8)).astype(np.float32)
        weights["bert/embeddings/word_embeddings_2"] = rng.normal(
            0, 0.3, (8, 24)).astype(np.float32)
    prefix = write_official(str(tmp_path), weights, config, config_name="config.json")
    args = rc.parse_args(["--config", str(tmp_path / "config.json"), "--checkpoint", prefix,
                          "--vocab", chinese_vocab_path(), "--model", family])
    base = base_model.resolve_base_model(args)
    texts = ["成语“画蛇添足”出自哪部作品？", "《战国策》记载了画蛇添足的故事。"]
    tokenizer, keep_tokens = base.tokenizer_for(texts)
    assert len(keep_tokens) < 100
    builder, _ = rc.build_models(base, keep_tokens, 1e-3, 10)
    assert type(builder).__name__ == {"roberta": "RoBERTa", "albert": "ALBERT"}[family]
    token_ids, segment_ids = tokenizer.encode(texts[0], texts[1])
    kept = predict(builder.model, np.array([token_ids]), np.array([segment_ids]))[0]
    full = build_transformer_model(str(tmp_path / "config.json"), prefix, model=family,
                                   application="unilm")
    full_ids = np.asarray(keep_tokens)[token_ids]
    expected = predict(full, np.array([full_ids]), np.array([segment_ids]))[0]
    expected = expected[..., keep_tokens]  # the trimmed softmax renormalises
    expected /= expected.sum(-1, keepdims=True)
    assert_close(kept, expected, f"{family} kept probabilities", tol=1e-6)
