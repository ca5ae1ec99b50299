"""bert4x.bert4keras against bert4keras 0.11.5 itself (the oracle, in a subprocess).

Every comparison feeds both libraries the same checkpoint, weights and inputs;
the oracle's computations run in one batch in a tf-keras subprocess started when
the module starts, so it overlaps the bert4x side.
"""

import json
import logging
import os
import sys

import keras
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _oracle  # noqa: E402
from _sentencepiece import train_sentencepiece  # noqa: E402
from oracle.shared import table_logits, two_character_words  # noqa: E402
from bert4x import checkpoints  # noqa: E402
from bert4x import layers as native_layers  # noqa: E402
from bert4x import tokenizers as native_tokenizers  # noqa: E402
from bert4x.bert4keras import backend, layers, models, optimizers, snippets, tokenizers  # noqa: E402
from bert4x.models import build_transformer_model as native_build  # noqa: E402
from bert4x.resources import chinese_vocab_path  # noqa: E402

TOL = 1e-5
CONFIG = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=24, hidden_act="gelu", max_position_embeddings=32,
              type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
              initializer_range=0.2)
TOKENS = np.array([[2, 7, 9, 11, 3, 0, 0], [2, 5, 3, 8, 12, 30, 3]])
SEGMENTS = np.array([[0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1]])
MODEL_CASES = {
    "encoder": dict(),
    "pool_mlm": dict(with_pool=True, with_mlm=True),
    "nsp": dict(with_nsp=True),
    "linear_heads": dict(with_pool="linear", with_mlm="linear"),
    "unilm": dict(application="unilm"),
    "lm": dict(application="lm"),
    "no_segments": dict(segment_vocab_size=0, with_mlm=True),
    "custom_positions": dict(custom_position_ids=True, with_pool=True),
    "prefix": dict(prefix="bert-", with_mlm=True),
    "fixed_length": dict(sequence_length=TOKENS.shape[1], application="unilm"),
    "compound_tokens": dict(compound_tokens=[[5], [7, 9], ([3, 8], [1, 3])], with_mlm=True),
}
POSITIONS = np.array([[0, 1, 2, 3, 4, 5, 6], [3, 1, 4, 1, 5, 9, 2]])
# What each model case takes (default: token and segment ids).
MODEL_INPUTS = {"no_segments": [TOKENS], "custom_positions": [TOKENS, SEGMENTS, POSITIONS],
                "compound_tokens": [np.where(TOKENS == 9, 41, np.where(TOKENS == 8, 42, TOKENS)),
                                    SEGMENTS]}
# Other families: (extra config fields, build_transformer_model arguments); a key
# "family:variant" is another case of that family.
FAMILY_CASES = {"roberta": ({}, dict(with_mlm=True)),
                "albert": (dict(embedding_size=8), dict(with_mlm=True)),
                "electra": (dict(embedding_size=8), dict()),
                # bert4keras's GPTs are language models whatever the application.
                "gpt": ({}, dict()),
                "gpt:unilm": ({}, dict(application="unilm")),
                "gpt2": (dict(type_vocab_size=0), dict()),
                "gpt2_ml": (dict(type_vocab_size=0), dict())}
# What each family case takes (default: token and segment ids).
FAMILY_INPUTS = {"gpt2": [TOKENS], "gpt2_ml": [TOKENS]}
# RoFormer-V2 (bert4keras's RoFormerV2): 18 wide in 3 heads of 6, 22 inner units, relu;
# with E != H its embedding and output mappings too. A padded batch of odd lengths.
ROFORMER_V2 = dict(CONFIG, vocab_size=43, hidden_size=18, num_attention_heads=3,
                   intermediate_size=22, hidden_act="relu")
ROFORMER_V2_CHECKPOINTS = {"plain": {}, "factorised": dict(embedding_size=10)}
ROFORMER_V2_CASES = {"encoder": ("plain", dict()),
                     "mlm": ("plain", dict(with_mlm=True)),
                     "factorised_unilm": ("factorised", dict(application="unilm")),
                     "factorised_lm_linear": ("factorised", dict(application="lm",
                                                                 with_mlm="linear"))}
ROFORMER_V2_TOKENS = np.array([[2, 7, 9, 11, 3, 0, 0, 0, 0], [2, 5, 3, 8, 12, 30, 41, 19, 3],
                               [2, 40, 3, 0, 0, 0, 0, 0, 0]])
ROFORMER_V2_SEGMENTS = np.array([[0, 0, 0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1, 1, 1],
                                 [0, 0, 1, 0, 0, 0, 0, 0, 0]])
# T5 / mT5 as bert4keras builds them (32 buckets up to 128, as many decoder as
# encoder blocks); 3 heads of 7 on a width of 20.
T5_CONFIG = dict(vocab_size=40, hidden_size=20, num_hidden_layers=2, num_attention_heads=3,
                 attention_head_size=7, intermediate_size=26, hidden_dropout_prob=0.0)
T5_VERSIONS = {"t5.1.0": "relu", "t5.1.1": ["gelu_erf", "linear"],
               "mt5.1.1": ["gelu_erf", "linear"]}  # bert4keras's gelu is the exact one
T5_ENCODER = np.array([[5, 9, 3, 12, 7, 30, 2, 4, 11, 1, 6], [6, 8, 39, 0, 0, 0, 0, 0, 0, 0, 0]])
T5_DECODER = np.array([[0, 4, 5, 6, 9], [0, 7, 2, 0, 0]])
RNG = np.random.default_rng(0)
SPARSE_MULTILABEL = dict(  # [batch, heads, positives] indices into [batch, heads, classes]
    y_true=np.array([[[1, 3, 0], [2, 0, 0]], [[4, 5, 2], [0, 0, 0]]], "int32"),
    y_pred=np.random.default_rng(5).normal(size=(2, 2, 6)).astype("float32") * 3)
CRF = dict(emissions=RNG.normal(size=(3, 6, 4)).astype("float32"),
           mask=np.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4], "float32"),
           trans=RNG.normal(size=(4, 4)).astype("float32"),
           labels=RNG.integers(0, 4, size=(3, 6)), lr_multiplier=10)
MEMM_CASES = {  # keyed by hidden_dim; weights are the effective (multiplied) ones
    None: [RNG.normal(size=(4, 4)).astype("float32")],
    3: [RNG.normal(size=(4, 3)).astype("float32"), RNG.normal(size=(4, 3)).astype("float32")],
}
VITERBI = dict(trans=RNG.normal(size=(5, 5)), nodes=[RNG.normal(size=(n, 5)) for n in (1, 4, 9)],
               starts=[0, 1, 3], ends=[0, 2])
POINTER_X = RNG.normal(size=(2, 5, 6)).astype("float32")
POINTER_MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], "float32")
POINTER_TRUE = (RNG.random((2, 3, 5, 5)) < 0.2).astype("float32")
POINTER_SETTINGS = dict(heads=3, head_size=4)
POINTER_WEIGHTS = {
    False: [(RNG.normal(size=(6, 24)).astype("float32"), RNG.normal(size=24).astype("float32"))],
    True: [(RNG.normal(size=(6, 8)).astype("float32"), RNG.normal(size=8).astype("float32")),
           (RNG.normal(size=(8, 6)).astype("float32"), RNG.normal(size=6).astype("float32"))],
}
NORM = dict(x=RNG.normal(size=(2, 3, 6)).astype("float32"),
            c=RNG.normal(size=(2, 4)).astype("float32"),
            weights=dict(gamma=RNG.normal(size=6), beta=RNG.normal(size=6),
                         hidden=RNG.normal(size=(4, 5)), gamma_dense=RNG.normal(size=(5, 6)),
                         beta_dense=RNG.normal(size=(5, 6))),
            hidden_units=5, hidden_activation="tanh")
NORM_C_DENSE = RNG.normal(size=(4, 6)).astype("float32")  # a condition [batch, 4] to [.., 6]
# (zero_mean, scale, offset, conditional): RMS norms (RoFormer-V2's, T5's), no gamma, no beta.
NORM_VARIANTS = [(False, False, False, False), (False, True, False, False),
                 (True, False, True, False), (False, True, True, False),
                 (True, True, False, False), (False, True, False, True)]
DECODER = dict(vocab_size=7, start_id=0, end_id=3, maxlen=6, minlen=2,
               beams=[dict(topk=1), dict(topk=3), dict(topk=4, min_ends=2)],
               samples=[dict(n=4, seed=1), dict(n=3, topk=3, seed=2),
                        dict(n=3, topp=0.7, seed=3), dict(n=2, topk=4, topp=0.5, seed=4),
                        dict(n=2, topp=1.5, seed=5)])
TEXTS = ["你好，世界！BERT 模型很 good。", "Héllo wörld, it's 2.5 o'clock (ok)?",
         "数字123和 english-words 混合"]
# T5-PEGASUS's tokenizer: jieba words of its vocabulary stay whole; jieba reads
# the lower-cased, accent-stripped text ("C语言" and "c语言", "Café" and "cafe" cut
# differently; "ΟΔΟΣ" ends with a final sigma).
JIEBA_TEXTS = ["我在学习C语言和Python3.8，还买了一件T恤。", "Café au lait 是一种 CAFÉ 饮品",
               "北京大学的学生们在公园散步！", "ΟΔΟΣ 是希腊语，İstanbul ŞEHİR",
               "iPhone13和iPad都卖了1999元  多个\t空格", "naïve résumé 的国庆节"]
# Words the Chinese vocabulary lacks ("cafe", "iphone" and "ipad" it has).
JIEBA_WORDS = ["语言", "学习", "一件", "北京大学", "学生", "一种", "饮品", "希腊语", "国庆节",
               "公园", "散步", "istanbul", "résumé", "resume"]
PAIRS = [("今天天气很好，我们去公园散步吧", "好的"), ("短", "这是一个比较长的第二句话用来截断")]
SNIPPETS = dict(
    pairs=[(6, -1, ([1, 2, 3, 4, 5], [6, 7, 8])), (4, [-2, 0], ([1, 2, 3, 4], [5, 6, 7])),
           (3, -1, ([], [1, 2, 3, 4], None))],
    texts=["今天天气很好。我们去公园，然后回家。", "天气很好，公园人多。\n回家吧", "公园里人很多"])
OPTIMIZER_X = RNG.normal(size=(4, 3)).astype("float32")
OPTIMIZER_Y = RNG.normal(size=(4, 2)).astype("float32")
OPTIMIZER_W = (RNG.normal(size=(3, 2)).astype("float32"), RNG.normal(size=2).astype("float32"))
OPTIMIZER_CASES = {
    "adam": ([], dict(learning_rate=0.01), 3),
    "no_bias_correction": ([], dict(learning_rate=0.01, bias_correction=False), 2),
    "weight_decay": (["extend_with_weight_decay"],
                     dict(learning_rate=0.01, weight_decay_rate=0.1,
                          exclude_from_weight_decay=["bias"]), 3),
    "piecewise": (["extend_with_piecewise_linear_lr"],
                  dict(learning_rate=0.01, lr_schedule={2: 1, 4: 0.1}), 4),
    "paramwise": (["extend_with_parameter_wise_lr"],
                  dict(learning_rate=0.01, paramwise_lr_schedule={"kernel": 3.0,
                                                                  "FeedForward": 0.5}), 2),
    "decay_and_schedule": (["extend_with_weight_decay", "extend_with_piecewise_linear_lr"],
                           dict(learning_rate=0.01, weight_decay_rate=0.2,
                                lr_schedule={3: 1}), 3),
    "accumulation": (["extend_with_gradient_accumulation"],
                     dict(learning_rate=0.01, grad_accum_steps=2), 4),
    # LAMB (decay inside the trust ratio), and the reverse order (decay after it).
    "layer_adaptation": (["extend_with_weight_decay", "extend_with_layer_adaptation",
                          "extend_with_piecewise_linear_lr"],
                         dict(learning_rate=0.01, weight_decay_rate=0.1,
                              exclude_from_layer_adaptation=["bias"],
                              lr_schedule={0: 1, 3: 0.2}), 3),
    "decay_after_adaptation": (["extend_with_layer_adaptation", "extend_with_weight_decay"],
                               dict(learning_rate=0.01, weight_decay_rate=0.1), 2),
    # Synchronised at steps 0, 2 and 4.
    "lookahead": (["extend_with_lookahead"],
                  dict(learning_rate=0.01, steps_per_slow_update=2, slow_step_size=0.5), 5),
    # Kernel rows 1 (step 1) and 1-2 (step 2) get zero gradients, yet nonzero Adam
    # moments and decay: lazy optimisation must keep them still.
    "lazy": (["extend_with_weight_decay", "extend_with_lazy_optimization"],
             dict(learning_rate=0.01, weight_decay_rate=0.1,
                  include_in_lazy_optimization=["kernel"]), 3,
             dict(x=OPTIMIZER_X * np.array([[[1, 1, 1]], [[1, 0, 1]], [[1, 0, 0]]], "float32"))),
    "ema": (["extend_with_exponential_moving_average"],
            dict(learning_rate=0.01, ema_momentum=0.9), 3, dict(ema=True)),
    "adafactor_factored": ([], dict(learning_rate=None, min_dim_size_to_factor=2,
                                    exclude_from_parameter_scale=["bias"]), 3,
                           dict(base="AdaFactor")),
    "adafactor_momentum": ([], dict(learning_rate=0.01, beta1=0.9, beta2=0.99,
                                    clipping_threshold=None), 3, dict(base="AdaFactor")),
    "adafactor_extended": (["extend_with_gradient_accumulation",
                            "extend_with_piecewise_linear_lr"],
                           dict(learning_rate=None, beta1=0.5, min_dim_size_to_factor=2,
                                multiply_by_parameter_scale=False, grad_accum_steps=2,
                                lr_schedule={2: 1}), 5, dict(base="AdaFactor")),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small random BERT with every head, in Google's checkpoint format."""
    keras.utils.set_random_seed(1)
    builder = native_build(**CONFIG, with_pool=True, with_nsp=True, with_mlm=True,
                           return_keras_model=False)
    folder = str(tmp_path_factory.mktemp("checkpoint") / "bert")
    prefix = checkpoints.save_checkpoint(builder, folder)
    return os.path.join(folder, "bert_config.json"), prefix


@pytest.fixture(scope="module")
def family_checkpoints(tmp_path_factory):
    """Small random models of the other families, in their official checkpoint format."""
    found = {}
    for case, (fields, arguments) in FAMILY_CASES.items():
        keras.utils.set_random_seed(2)
        builder = native_build(model=case.split(":")[0], **dict(CONFIG, **fields),
                               return_keras_model=False, **arguments)
        if case.startswith("gpt"):
            _randomise_norms(builder, seed=3)  # at 1 and 0 they would check nothing
        folder = str(tmp_path_factory.mktemp(case.replace(":", "_")) / "model")
        found[case] = (os.path.join(folder, "bert_config.json"),
                       checkpoints.save_checkpoint(builder, folder))
    return found


def _randomise_norms(builder, seed):
    rng = np.random.default_rng(seed)
    for variable in builder.model.weights:
        if variable.path.endswith(("/gamma", "/beta")):
            base = 1.0 if variable.path.endswith("/gamma") else 0.0
            variable.assign(base + rng.normal(0, 0.3, variable.shape).astype("float32"))
@pytest.fixture(scope="module")
def t5_checkpoints(tmp_path_factory):
    """Random T5 / mT5 written by bert4x's save_checkpoint (Mesh TensorFlow's names),
    with a config file as bert4keras's (no bert4x fields), ``{version: (config_path,
    prefix)}``."""
    rng = np.random.default_rng(4)
    found = {}
    for version, hidden_act in T5_VERSIONS.items():
        builder = native_build(model=version, hidden_act=hidden_act, return_keras_model=False,
                               **T5_CONFIG)
        for variable in builder.model.weights:
            noise = rng.normal(size=variable.shape).astype("float32")
            variable.assign(1 + 0.1 * noise if "Norm" in variable.path else 0.4 * noise)
        folder = str(tmp_path_factory.mktemp(version) / "model")
        prefix = checkpoints.save_checkpoint(builder, folder)
        config_path = os.path.join(folder, "t5_config.json")
        with open(config_path, "w") as file:
            json.dump(dict(T5_CONFIG, hidden_act=hidden_act), file)
        found[version] = (config_path, prefix)
    return found


SP_TEXTS = ["the quick brown fox jumps over the lazy dog", "a lazy dog sleeps all day long",
            "quick brown dogs and lazy foxes"]


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    return train_sentencepiece(tmp_path_factory.mktemp("spm"), SP_TEXTS * 20, vocab_size=36,
                               pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
                               user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"])


@pytest.fixture(scope="module")
def roformer_v2_checkpoints(tmp_path_factory):
    """Small RoFormer-V2 models with random weights large enough to matter, with and
    without factorised embeddings, in the official checkpoint format."""
    found = {}
    for key, fields in ROFORMER_V2_CHECKPOINTS.items():
        keras.utils.set_random_seed(4)
        builder = native_build(model="roformer_v2", **ROFORMER_V2, **fields, with_mlm=True,
                               return_keras_model=False)
        rng = np.random.default_rng(4)
        for name, variable, _ in builder.variable_map():
            scale = 0.5 if "embeddings" in name else 0.3
            variable.assign(rng.normal(0, scale, variable.shape).astype("float32"))
        folder = str(tmp_path_factory.mktemp(f"roformer_v2_{key}") / "model")
        found[key] = (os.path.join(folder, "bert_config.json"),
                      checkpoints.save_checkpoint(builder, folder))
    return found


@pytest.fixture(scope="module")
def jieba_vocab(tmp_path_factory):
    """Google's Chinese vocabulary plus some jieba words (T5-PEGASUS's kind)."""
    with open(chinese_vocab_path(), encoding="utf-8", newline="") as file:
        text = file.read()  # one token a line ("\x85" is one of them: no splitlines)
    path = tmp_path_factory.mktemp("jieba_vocab") / "vocab.txt"
    with open(path, "w", encoding="utf-8", newline="") as file:
        file.write(text.rstrip("\n") + "\n" + "\n".join(JIEBA_WORDS) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def oracle(checkpoint, family_checkpoints, sentencepiece_model, jieba_vocab,
           roformer_v2_checkpoints, t5_checkpoints):
    config_path, prefix = checkpoint
    inputs = [TOKENS, SEGMENTS]
    jobs = {f"model_{name}": ("model_outputs", dict(
        config_path=config_path, checkpoint_path=prefix,
        inputs=MODEL_INPUTS.get(name, inputs), **kwargs))
            for name, kwargs in MODEL_CASES.items()}
    for case, (family_config, family_prefix) in family_checkpoints.items():
        jobs[f"family_{case}"] = ("model_outputs", dict(
            config_path=family_config, checkpoint_path=family_prefix,
            inputs=FAMILY_INPUTS.get(case, inputs), model=case.split(":")[0],
            **FAMILY_CASES[case][1]))
    for case, (key, kwargs) in ROFORMER_V2_CASES.items():
        v2_config, v2_prefix = roformer_v2_checkpoints[key]
        jobs[f"roformer_v2_{case}"] = ("roformer_v2_outputs", dict(
            config_path=v2_config, checkpoint_path=v2_prefix,
            inputs=[ROFORMER_V2_TOKENS, ROFORMER_V2_SEGMENTS], **kwargs))
    for version, (t5_config, t5_prefix) in t5_checkpoints.items():
        for cross in (True, False):  # bert4keras's default, and Google's T5
            jobs[f"t5_{version}_{cross}"] = ("model_outputs", dict(
                config_path=t5_config, checkpoint_path=t5_prefix, model=version,
                inputs=[T5_ENCODER, T5_DECODER], cross_position_bias=cross))
    jobs["masked_loss"] = ("masked_loss", dict(config_path=config_path, checkpoint_path=prefix,
                                               inputs=inputs, application="unilm"))
    jobs["crf"] = ("crf", CRF)
    jobs["viterbi"] = ("viterbi", VITERBI)
    for hidden_dim, weights in MEMM_CASES.items():
        jobs[f"memm_{hidden_dim}"] = ("memm", dict(
            emissions=CRF["emissions"], mask=CRF["mask"], weights=weights, labels=CRF["labels"],
            lr_multiplier=CRF["lr_multiplier"], hidden_dim=hidden_dim))
    for efficient in (False, True):
        jobs[f"pointer_{efficient}"] = ("global_pointer", dict(
            efficient=efficient, x=POINTER_X, mask=POINTER_MASK,
            weights=POINTER_WEIGHTS[efficient], y_true=POINTER_TRUE, **POINTER_SETTINGS))
    jobs["decoder"] = ("decoder_ids", DECODER)
    jobs["sparse_multilabel"] = ("sparse_multilabel_losses", SPARSE_MULTILABEL)
    jobs["layer_norm"] = ("layer_norm", NORM)
    jobs["layer_norm_variants"] = ("layer_norm_variants", dict(
        x=NORM["x"], c=NORM["c"], weights=dict(NORM["weights"], gamma_dense=NORM_C_DENSE,
                                               beta_dense=NORM_C_DENSE[::-1]),
        cases=NORM_VARIANTS, epsilon=1e-6))
    jobs["sp_tokenizer"] = ("sp_tokenizer", dict(
        model_path=sentencepiece_model, texts=SP_TEXTS,
        pairs=list(zip(SP_TEXTS, SP_TEXTS[1:])), maxlen=12))
    jobs["snippets"] = ("snippets_results", dict(SNIPPETS, square="square"))
    jobs["jieba_tokenizer"] = ("jieba_tokenizer", dict(vocab_path=jieba_vocab,
                                                       texts=JIEBA_TEXTS))
    for lower in (False, True):
        jobs[f"tokenizer_{lower}"] = ("tokenizer", dict(
            vocab_path=chinese_vocab_path(), texts=TEXTS, pairs=PAIRS, do_lower_case=lower,
            maxlen=12))
    for name, (factories, settings, steps, *options) in OPTIMIZER_CASES.items():
        jobs[f"optimizer_{name}"] = ("optimizer_steps", dict(
            dict(kernel=OPTIMIZER_W[0], bias=OPTIMIZER_W[1], x=OPTIMIZER_X, y=OPTIMIZER_Y,
                 steps=steps, factories=factories, **settings), **(options or [{}])[0]))
    jobs["keras2_backend"] = ("keras2_backend", dict(cases=KERAS2_CASES))
    running = _oracle.Oracle(jobs)
    yield running
    running.close()


def outputs_of(model, inputs):
    """A model's outputs on one small batch as a list of NumPy arrays, by an eager call:
    what ``predict`` gives, without tracing a ``tf.function`` for each model."""
    outputs = model(inputs)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [keras.ops.convert_to_numpy(output) for output in outputs]


# ------------------------------------------------ without the oracle (first)
# These run while the oracle's batch computes (pytest keeps the file's order).
@pytest.fixture(scope="module", autouse=True)
def _oracle_started_first(oracle):
    """Starts the oracle's batch before the module's first test."""


def test_intermediate_layers_carry_the_padding_mask(checkpoint):
    config_path, prefix = checkpoint
    model = models.build_transformer_model(config_path, prefix)
    probe = keras.Model(model.inputs, model.get_layer("Transformer-1-FeedForward-Norm").output)
    assert probe.outputs[0]._keras_mask is not None
    mask = layers.SequenceMask(from_ids=True).compute_mask(
        [None, keras.ops.convert_to_tensor(TOKENS)])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(mask), TOKENS != 0)


def test_model_arguments_shape_the_inputs_and_names_as_in_bert4keras(checkpoint):
    config_path, prefix = checkpoint
    model = models.build_transformer_model(config_path, prefix, segment_vocab_size=0,
                                           custom_position_ids=True, sequence_length=7)
    assert [t.name for t in model.inputs] == ["Input-Token", "Input-Position"]
    assert [tuple(t.shape) for t in model.inputs] == [(None, 7), (None, 7)]
    assert "Embedding-Segment" not in [layer.name for layer in model.layers]
    # Prefixed models share one graph without a name clash.
    first = models.build_transformer_model(config_path, prefix, prefix="first-")
    second = models.build_transformer_model(config_path, prefix, prefix="second-")
    names = [layer.name for layer in first.layers + second.layers]
    assert all(name.startswith(("first-", "second-")) for name in names)
    assert len(set(names)) == len(names)
    joined = keras.Model(first.inputs + second.inputs, [first.output, second.output])
    one, two = outputs_of(joined, [TOKENS, SEGMENTS, TOKENS, SEGMENTS])
    np.testing.assert_allclose(one, two, atol=1e-6)


def test_model_takes_its_inputs_by_name_too(checkpoint):
    """Besides bert4keras's list, a dict keyed by the inputs' names (a prefix included)."""
    config_path, prefix = checkpoint
    model = models.build_transformer_model(config_path, prefix, with_mlm=True,
                                           prefix="named-")
    by_position = outputs_of(model, [TOKENS, SEGMENTS])
    by_name = outputs_of(model, {"named-Input-Token": TOKENS, "named-Input-Segment": SEGMENTS})
    np.testing.assert_array_equal(by_name, by_position)


def test_builders_of_one_family_share_a_class_and_keep_their_own_options(checkpoint):
    """bert4keras's options are the builder's own arguments, not attributes of a class
    made per call: a second builder neither changes nor inherits the first one's."""
    config_path, prefix = checkpoint
    first = models.build_transformer_model(config_path, prefix, with_pool="linear",
                                           prefix="first-", return_keras_model=False)
    second = models.build_transformer_model(config_path, prefix, with_pool=True,
                                            return_keras_model=False)
    assert type(first) is type(second)
    assert first.pooler_dense.activation is keras.activations.linear
    assert second.pooler_dense.activation is keras.activations.tanh
    assert first.pooler_dense.name == "first-Pooler-Dense"
    assert second.pooler_dense.name == "Pooler-Dense"


def test_unsupported_arguments_raise(checkpoint):
    config_path, prefix = checkpoint
    with pytest.raises(NotImplementedError, match="residual_attention_scores"):
        models.build_transformer_model(config_path, residual_attention_scores=True)
    with pytest.raises(ValueError, match="custom_position_ids=True needs a learned"):
        models.build_transformer_model(config_path, model="roformer",
                                       custom_position_ids=True)
    with pytest.raises(ValueError, match="unknown model 't9'"):
        models.build_transformer_model(config_path, model="t9")


def test_extended_optimizers_keep_bert4keras_hyperparameters_in_their_config():
    AdaFactorLA = optimizers.extend_with_lookahead(  # noqa: N806
        optimizers.extend_with_exponential_moving_average(optimizers.AdaFactor))
    optimizer = AdaFactorLA(learning_rate=None, beta1=0.5, ema_momentum=0.9,
                            steps_per_slow_update=3)
    restored = AdaFactorLA.from_config(optimizer.get_config())
    config = restored.get_config()
    assert (config["learning_rate"], config["beta1"], config["ema_momentum"],
            config["steps_per_slow_update"]) == (None, 0.5, 0.9, 3)


def test_extending_a_foreign_optimizer_says_what_it_extends():
    with pytest.raises(TypeError, match="AdaFactor"):
        optimizers.extend_with_lookahead(keras.optimizers.SGD)


def test_keras_is_still_keras_3_beside_the_oracle():
    # tf-keras is installed for the oracle; bert4x must keep importing Keras 3.
    import tf_keras  # noqa: F401  (present: the test extra installs it)

    assert keras.__version__.startswith("3.")
    assert backend.keras is keras


def test_batch_gather_and_sequence_masking_follow_numpy():
    params = RNG.normal(size=(2, 4, 3)).astype("float32")
    indices = np.array([[3, 0], [1, 1]])
    expected = np.stack([params[b, indices[b]] for b in range(2)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(backend.batch_gather(params, indices)),
                               expected)
    masked = backend.sequence_masking(params, np.array([[1, 1, 0, 0], [1, 0, 0, 0]]), -9.0)
    expected = params.copy()
    expected[0, 2:] = expected[1, 1:] = -9.0
    np.testing.assert_allclose(keras.ops.convert_to_numpy(masked), expected)


def test_recompute_grad_recomputes_with_the_same_gradients(monkeypatch):
    import tensorflow as tf

    calls = []

    def feed_forward(self, inputs):
        calls.append(1)
        return self.second(self.first(inputs))

    def layer_class(call):
        class FeedForward(keras.layers.Layer):
            def build(self, shape):
                self.first = keras.layers.Dense(5, activation="gelu")
                self.second = keras.layers.Dense(3)

        FeedForward.call = call
        return FeedForward

    monkeypatch.delenv("RECOMPUTE", raising=False)
    assert backend.recompute_grad(feed_forward) is feed_forward  # off by default
    monkeypatch.setenv("RECOMPUTE", "1")
    plain, recomputed = layer_class(feed_forward)(), layer_class(
        backend.recompute_grad(feed_forward))()
    x = tf.constant(RNG.normal(size=(2, 4)).astype("float32"))
    plain(x), recomputed(x)
    recomputed.set_weights(plain.get_weights())
    gradients = []
    for layer in (plain, recomputed):
        del calls[:]
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) ** 2)
        gradients.append(tape.gradient(loss, [x] + layer.trainable_variables))
        gradients[-1].append(len(calls))
    *ours, recomputed_calls = gradients[1]
    *reference, plain_calls = gradients[0]
    assert (plain_calls, recomputed_calls) == (1, 2)  # the backward pass ran it again
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_gradient_penalty_loss_uses_the_model_inside_the_training_step(checkpoint):
    # bert4keras's gradient-penalty idiom: a loss that finds the embedding table
    # from y_pred and differentiates itself with K.gradients (Keras 3 gives the
    # loss the step's tensors, which do not know their layers).
    import tensorflow as tf

    K = backend.K
    bert = models.build_transformer_model(*checkpoint, return_keras_model=False)
    output = keras.layers.Lambda(lambda x: x[:, 0])(bert.model.output)
    output = keras.layers.Dense(2, activation="softmax")(output)
    model = keras.Model(bert.model.input, output)
    labels = np.array([[1], [0]])

    def penalised(y_true, y_pred):
        loss = K.mean(K.sparse_categorical_crossentropy(K.reshape(y_true, (-1,)), y_pred))
        embeddings = backend.search_layer(y_pred, "Embedding-Token").embeddings
        return loss + 0.5 * K.sum(K.gradients(loss, [embeddings])[0].values ** 2)

    model.compile(loss=penalised, optimizer=keras.optimizers.SGD(0.0))
    ours = model.test_on_batch([TOKENS, SEGMENTS], labels)
    embeddings = backend.search_layer(model.output, "Embedding-Token").embeddings
    with tf.GradientTape() as tape:
        probas = model([TOKENS, SEGMENTS], training=False)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels[:, 0], probas))
    # One gradient row per token occurrence (repeated ids are not summed), as
    # bert4keras's `.values` of the IndexedSlices.
    rows = tape.gradient(loss, embeddings.value).values
    assert rows.shape[0] == TOKENS.size
    expected = float(loss) + 0.5 * float(tf.reduce_sum(rows ** 2))
    assert float(tf.reduce_sum(rows ** 2)) > 1e-3 * expected  # the penalty matters
    np.testing.assert_allclose(ours, expected, rtol=1e-5)
    with pytest.raises(NotImplementedError, match="not eagerly"):
        K.gradients(loss, [embeddings])


def test_search_layer_refuses_to_guess_between_two_live_models(checkpoint):
    import tensorflow as tf

    models.build_transformer_model(*checkpoint)  # unreferenced: collected, not counted
    first = models.build_transformer_model(*checkpoint)
    second = models.build_transformer_model(*checkpoint)
    plain = tf.constant([[1.0]])  # a step's tensor: no Keras history
    with pytest.raises(ValueError, match="search_layer\\(model, 'Embedding-Token'\\)"):
        backend.search_layer(plain, "Embedding-Token")
    assert backend.search_layer(second, "Embedding-Token") is second.get_layer("Embedding-Token")
    # One model over the other's graph shares its layers: nothing to choose.
    del first
    wrapped = keras.Model(second.inputs, second.outputs)
    assert backend.search_layer(plain, "Embedding-Token") is wrapped.get_layer("Embedding-Token")


def test_uniout_imports_as_on_python_3():
    from bert4x.bert4keras.snippets import uniout

    assert uniout is None  # bert4keras's Python 2 console helper; nothing on Python 3


def test_forfit_feeds_batches_longer_than_the_first_two():
    # Keras 3 fixes the length of a generator's batches from its first two;
    # bert4keras scripts pad each batch to its own longest sequence.
    class Batches(snippets.DataGenerator):
        def __iter__(self, random=False):
            for is_end, (length, label) in self.sample(random):
                yield [np.ones((2, length)), np.zeros((2, length))], np.full((2, 1), label)

    token_ids, segment_ids = keras.Input((None,)), keras.Input((None,))
    pooled = keras.layers.GlobalAveragePooling1D()(
        keras.layers.Embedding(4, 3)(keras.ops.cast(token_ids + segment_ids, "int32")))
    model = keras.Model([token_ids, segment_ids], keras.layers.Dense(2, "softmax")(pooled))
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    batches = Batches([(5, 0), (5, 1), (9, 1)], batch_size=1)
    history = model.fit(batches.forfit(random=False), steps_per_epoch=len(batches), epochs=2,
                        verbose=0)
    assert len(history.history["loss"]) == 2


def test_layers_give_their_output_at_each_call_as_in_keras_2(family_checkpoints):
    # bert4keras scripts read ALBERT's shared layers per call: get_output_at(i).
    config, prefix = family_checkpoints["albert"]
    model = models.build_transformer_model(config, prefix, model="albert")
    norm = model.get_layer("Transformer-FeedForward-Norm")
    outputs = [norm.get_output_at(i) for i in range(CONFIG["num_hidden_layers"])]
    assert outputs[-1] is model.output and outputs[0] is not outputs[1]
    assert norm.get_input_at(0) is model.get_layer(
        "Transformer-FeedForward-Add").get_output_at(0)
    with pytest.raises(ValueError, match="called 2 times"):
        norm.get_output_at(2)


def test_memm_config_round_trip():
    memm = layers.MaximumEntropyMarkovModel(lr_multiplier=5, hidden_dim=2, name="memm")
    inputs = keras.Input((None, 4))
    model = keras.Model(inputs, memm(inputs))
    clone = keras.Model.from_config(model.get_config())
    restored = clone.get_layer("memm")
    assert (restored.lr_multiplier, restored.hidden_dim) == (5, 2)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(backend.K.eval(restored.trans), backend.K.eval(memm.trans),
                               atol=1e-6)


def test_fortest_yields_the_inputs():
    class Batches(snippets.DataGenerator):
        def __iter__(self, random=False):
            for _, item in self.sample(random):
                yield [np.array([[item]]), np.array([[0]])], np.array([[1]])

    first = next(Batches([5, 6], batch_size=1).fortest())
    assert len(first) == 2 and first[0].tolist() == [[5]]


# ------------------------------------------------------------------ models
@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_model_outputs_equal_bert4keras(checkpoint, oracle, case):
    config_path, prefix = checkpoint
    model = models.build_transformer_model(config_path, prefix, **MODEL_CASES[case])
    ours = outputs_of(model, MODEL_INPUTS.get(case, [TOKENS, SEGMENTS]))
    theirs = oracle.result(f"model_{case}")
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=TOL)


@pytest.mark.parametrize("case", sorted(FAMILY_CASES))
def test_other_families_equal_bert4keras(family_checkpoints, oracle, case):
    """Outputs on a checkpoint bert4x wrote in the family's official names, which
    bert4keras reads by its own name map."""
    config_path, prefix = family_checkpoints[case]
    model = models.build_transformer_model(config_path, prefix, model=case.split(":")[0],
                                           **FAMILY_CASES[case][1])
    ours = outputs_of(model, FAMILY_INPUTS.get(case, [TOKENS, SEGMENTS]))
    theirs = oracle.result(f"family_{case}")
    assert [a.shape for a in ours] == [b.shape for b in theirs]
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=TOL)


@pytest.mark.parametrize("case", sorted(ROFORMER_V2_CASES))
def test_roformer_v2_equals_bert4keras(roformer_v2_checkpoints, oracle, case):
    """bert4keras's RoFormerV2 (rotary attention, no biases, RMS norms without gamma or
    beta, its bare MLM head) within 1e-4, through bert4x.bert4keras and bert4x's own
    build_transformer_model alike."""
    key, kwargs = ROFORMER_V2_CASES[case]
    config_path, prefix = roformer_v2_checkpoints[key]
    inputs = [ROFORMER_V2_TOKENS, ROFORMER_V2_SEGMENTS]
    theirs = oracle.result(f"roformer_v2_{case}")
    model = models.build_transformer_model(config_path, prefix, model="roformer_v2", **kwargs)
    ours = outputs_of(model, inputs)
    assert [a.shape for a in ours] == [b.shape for b in theirs] == [
        ROFORMER_V2_TOKENS.shape + ((18,) if case == "encoder" else (43,))]
    np.testing.assert_allclose(ours[0], theirs[0], atol=1e-4)
    native = outputs_of(native_build(config_path, prefix, model="roformer_v2", **kwargs),
                        inputs)[-1]  # after the sequence output, if any
    np.testing.assert_allclose(native, theirs[0], atol=1e-4)


def test_masks_reach_a_loss_layer_as_in_bert4keras(checkpoint, oracle):
    config_path, prefix = checkpoint
    seen = {}

    class MaskedCrossEntropy(layers.Loss):
        def compute_loss(self, inputs, mask=None):
            K = backend.K
            token_ids, y_pred = inputs
            seen["mask"] = mask
            y_mask = K.cast(mask[1][:, 1:], K.floatx())
            loss = K.sparse_categorical_crossentropy(token_ids[:, 1:], y_pred[:, :-1])
            return K.sum(loss * y_mask) / K.sum(y_mask)

    model = models.build_transformer_model(config_path, prefix, application="unilm")
    # Inputs are float32 as in Keras 2, so `loss * segment_ids` works in scripts.
    assert [t.dtype for t in model.inputs] == ["float32", "float32"]
    output = MaskedCrossEntropy(1)([model.inputs[0], model.outputs[0]])
    train = keras.Model(model.inputs, output)
    train.compile(optimizer="adam")
    loss = train.evaluate([TOKENS, SEGMENTS], verbose=0)
    assert seen["mask"][0] is None and seen["mask"][1] is not None
    assert abs(loss - oracle.result("masked_loss")) < TOL


@pytest.mark.parametrize("version", sorted(T5_VERSIONS))
def test_t5_equals_bert4keras(t5_checkpoints, oracle, version):
    """bert4keras reads the official names bert4x writes, and computes what bert4x
    computes: through bert4x.bert4keras with bert4keras's defaults (the decoder's
    position bias in cross-attention, the output scaled), and through bert4x with
    Google's cross-attention; T5.1.0 then is bert4x's default T5."""
    config_path, prefix = t5_checkpoints[version]
    real = T5_DECODER != 0
    real[:, 0] = True
    ours, = outputs_of(models.build_transformer_model(config_path, prefix, model=version),
                       [T5_ENCODER, T5_DECODER])
    theirs = oracle.result(f"t5_{version}_True")[0]
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4)
    google = native_build(config_path, prefix, model=version, scale_decoder_outputs=True)
    ours, = outputs_of(google, [T5_ENCODER, T5_DECODER])
    theirs_google = oracle.result(f"t5_{version}_False")[0]
    np.testing.assert_allclose(ours[real], theirs_google[real], atol=1e-4)
    assert np.abs(theirs - theirs_google)[real].max() > 1e-3  # the two differ
    if version == "t5.1.0":
        default, = outputs_of(native_build(config_path, prefix, model="t5"),
                              [T5_ENCODER, T5_DECODER])
        np.testing.assert_array_equal(default, ours)


# ------------------------------------------------------------------ layers
def assert_scores_equal(ours, theirs):
    """Equal within TOL, with ``-inf`` at the same (padded) places."""
    ours = keras.ops.convert_to_numpy(ours)
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
    np.testing.assert_allclose(np.where(np.isinf(ours), 0, ours),
                               np.where(np.isinf(theirs), 0, theirs), atol=TOL)


def test_crf_output_loss_and_accuracy_equal_bert4keras(oracle):
    crf = layers.ConditionalRandomField(lr_multiplier=CRF["lr_multiplier"])
    crf.build(CRF["emissions"].shape)
    crf.set_weights([CRF["trans"] / CRF["lr_multiplier"]])
    output = crf(CRF["emissions"], mask=CRF["mask"])
    theirs = oracle.result("crf")
    assert_scores_equal(output, theirs["output"])
    np.testing.assert_allclose(crf.sparse_loss(CRF["labels"], output), theirs["sparse_loss"],
                               atol=TOL)
    assert abs(float(crf.sparse_accuracy(CRF["labels"], output))
               - theirs["sparse_accuracy"]) < TOL


@pytest.mark.parametrize("hidden_dim", list(MEMM_CASES), ids=str)
def test_memm_output_losses_accuracies_and_paths_equal_bert4keras(oracle, hidden_dim):
    multiplier = CRF["lr_multiplier"]
    memm = layers.MaximumEntropyMarkovModel(lr_multiplier=multiplier, hidden_dim=hidden_dim)
    memm.build(CRF["emissions"].shape)
    memm.set_weights([w / multiplier for w in MEMM_CASES[hidden_dim]])
    output = memm(CRF["emissions"], mask=CRF["mask"])
    labels, one_hot = CRF["labels"], np.eye(4, dtype="float32")[CRF["labels"]]
    theirs = oracle.result(f"memm_{hidden_dim}")
    assert_scores_equal(output, theirs["output"])
    for name, y_true in (("sparse", labels), ("dense", one_hot)):
        for kind in ("loss", "accuracy"):
            ours = float(getattr(memm, f"{name}_{kind}")(y_true, output))
            assert abs(ours - theirs[f"{name}_{kind}"]) < TOL, (name, kind)
    weights = MEMM_CASES[hidden_dim]
    trans = backend.K.eval(memm.trans)  # low rank: l_trans @ r_trans.T, checked by NumPy
    np.testing.assert_allclose(trans, weights[0] if len(weights) == 1
                               else weights[0] @ weights[1].T, atol=TOL)
    if hidden_dim is None:
        decoder = snippets.ViterbiDecoder(trans)
        for emissions, mask, path in zip(CRF["emissions"], CRF["mask"], theirs["paths"]):
            np.testing.assert_array_equal(decoder.decode(emissions[mask > 0].copy()), path)


def test_viterbi_paths_equal_bert4keras(oracle):
    decoder = snippets.ViterbiDecoder(VITERBI["trans"], VITERBI["starts"], VITERBI["ends"])
    ours = [decoder.decode(nodes.copy()) for nodes in VITERBI["nodes"]]
    for a, b in zip(ours, oracle.result("viterbi")):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("efficient", [False, True])
def test_global_pointer_scores_and_loss_equal_bert4keras(oracle, efficient):
    cls = layers.EfficientGlobalPointer if efficient else layers.GlobalPointer
    layer = cls(**POINTER_SETTINGS)
    layer.build(POINTER_X.shape)
    dense = [layer.p_dense, layer.q_dense] if efficient else [layer.dense]
    for d, (kernel, bias) in zip(dense, POINTER_WEIGHTS[efficient]):
        d.set_weights([kernel, bias])
    output = keras.ops.convert_to_numpy(layer(POINTER_X, mask=POINTER_MASK))
    theirs = oracle.result(f"pointer_{efficient}")
    np.testing.assert_array_equal(np.isinf(output), np.isinf(theirs["output"]))
    finite = np.isfinite(output)
    np.testing.assert_allclose(output[finite], theirs["output"][finite], atol=TOL)
    loss = backend.multilabel_categorical_crossentropy(
        POINTER_TRUE.reshape(6, -1), output.reshape(6, -1))
    np.testing.assert_allclose(loss, theirs["loss"], atol=TOL)
    restored = cls.from_config(layer.get_config())
    assert restored.get_config() == layer.get_config()


def test_conditional_layer_norm_equals_bert4keras(oracle):
    layer = layers.LayerNormalization(conditional=True, hidden_units=NORM["hidden_units"],
                                      hidden_activation=NORM["hidden_activation"])
    layer([NORM["x"], NORM["c"]])
    w = NORM["weights"]
    layer.gamma.assign(w["gamma"])
    layer.beta.assign(w["beta"])
    layer.hidden_dense.set_weights([w["hidden"]])
    layer.gamma_dense.set_weights([w["gamma_dense"]])
    layer.beta_dense.set_weights([w["beta_dense"]])
    output = keras.ops.convert_to_numpy(layer([NORM["x"], NORM["c"]]))
    np.testing.assert_allclose(output, oracle.result("layer_norm"), atol=TOL)


def test_layer_norm_variants_equal_bert4keras(oracle):
    """RMS norms, norms without gamma or beta, and a conditional RMS norm with gamma
    only (T5's kind), in bert4x's layer and bert4x.bert4keras's."""
    w = NORM["weights"]
    theirs = oracle.result("layer_norm_variants")
    for (zero_mean, scale, offset, conditional), expected in zip(NORM_VARIANTS, theirs):
        options = dict(zero_mean=zero_mean, scale=scale, offset=offset,
                       conditional=conditional)
        for layer in (native_layers.LayerNormalization(1e-6, **options),
                      layers.LayerNormalization(epsilon=1e-6, **options)):
            inputs = [NORM["x"], NORM["c"]]
            native = not isinstance(layer, layers.LayerNormalization)
            call = ((lambda: layer(inputs[0], condition=inputs[1])) if native and conditional
                    else (lambda: layer(inputs if conditional else inputs[0])))
            call()
            assert [v.name for v in layer.weights] == [
                name for name, used in (("gamma", scale), ("beta", offset),
                                        ("kernel", conditional and scale),
                                        ("kernel", conditional and offset)) if used]
            if scale:
                layer.gamma.assign(w["gamma"])
                if conditional:
                    layer.gamma_dense.set_weights([NORM_C_DENSE])
            if offset:
                layer.beta.assign(w["beta"])
                if conditional:
                    layer.beta_dense.set_weights([NORM_C_DENSE[::-1]])
            np.testing.assert_allclose(keras.ops.convert_to_numpy(call()), expected,
                                       atol=TOL, err_msg=str(options))
            restored = type(layer).from_config(layer.get_config())
            assert restored.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="neither"):
        native_layers.LayerNormalization(conditional=True, scale=False, offset=False)


# ------------------------------------------------------------------ decoding
def test_decoder_beam_and_sampling_ids_equal_bert4keras(oracle):
    vocab_size = DECODER["vocab_size"]

    class Table(snippets.AutoRegressiveDecoder):
        @snippets.AutoRegressiveDecoder.wraps(default_rtype="logits")
        def predict(self, inputs, output_ids, states):
            return table_logits(output_ids, vocab_size)

    decoder = Table(start_id=DECODER["start_id"], end_id=DECODER["end_id"],
                    maxlen=DECODER["maxlen"], minlen=DECODER["minlen"])
    theirs = oracle.result("decoder")
    beams = [decoder.beam_search([np.array([1])], **b).tolist() for b in DECODER["beams"]]
    assert beams == theirs["beam"]
    sampled = []
    for settings in DECODER["samples"]:
        settings = dict(settings)
        np.random.seed(settings.pop("seed"))
        sampled.append([ids.tolist() for ids in
                        decoder.random_sample([np.array([1])], **settings)])
    assert sampled == theirs["sample"]


def test_snippets_equal_bert4keras(oracle):
    theirs = oracle.result("snippets")
    for (maxlen, index, sequences), (returned, modified) in zip(SNIPPETS["pairs"],
                                                                  theirs["truncated"]):
        sequences = [list(x) if x is not None else None for x in sequences]
        assert snippets.truncate_sequences(maxlen, index, *sequences) == returned
        assert sequences == modified  # shortened in place, as bert4keras does
    texts = SNIPPETS["texts"]
    assert [snippets.text_segmentate(t, 8, "\n。，", "。") for t in texts] == theirs["segmented"]
    assert [snippets.longest_common_substring(a, b)
            for a, b in zip(texts, texts[1:])] == theirs["substring"]
    assert [snippets.longest_common_subsequence(a, b)
            for a, b in zip(texts, texts[1:])] == theirs["subsequence"]
    assert snippets.parallel_apply(lambda x: x * x, list(range(20)), 3, 4, dummy=True,
                                   unordered=False) == theirs["applied"]
    # bert4keras 0.11.5's strQ2B calls Python 2's unichr and fails on Python 3.
    assert snippets.strQ2B("ＡＢＣ１２３！　？ｘ") == "ABC123! ?x"


# ------------------------------------------------------------------ tokenizer
@pytest.mark.parametrize("lower", [False, True])
def test_tokenizer_ids_rematch_decode_equal_bert4keras(oracle, lower):
    tok = tokenizers.Tokenizer(chinese_vocab_path(), do_lower_case=lower)
    theirs = oracle.result(f"tokenizer_{lower}")
    for index, text in enumerate(TEXTS):
        tokens = tok.tokenize(text)
        # bert4keras leaves an unknown word as it is; its id is [UNK] all the same.
        assert tokens == [t if t in tok._token_dict else "[UNK]"
                          for t in theirs["tokens"][index]]
        assert tok.encode(text)[0] == theirs["ids"][index]
        assert tok.rematch(text, tokens) == theirs["rematch"][index]
        assert tok.decode(tok.encode(text)[0]) == theirs["decode"][index]
    for index, (first, second) in enumerate(PAIRS):
        ours = [list(tok.encode(first, second, maxlen=12)),
                list(tok.encode(first, second, maxlen=12, pattern="S*ES*E",
                                truncate_from="left"))]
        assert ours == [list(pair) for pair in theirs["pairs"][index]]
    assert tok._token_start_id == tok.token_to_id("[CLS]")
    assert tok._token_mask_id == tok.token_to_id("[MASK]")


@pytest.mark.parametrize("module", ["bert4x", "bert4keras"])
def test_jieba_pre_tokenized_tokenizer_equals_bert4keras(oracle, jieba_vocab, module):
    """T5-PEGASUS's ``Tokenizer(dict_path, do_lower_case=True, pre_tokenize=lambda s:
    jieba.cut(s, HMM=False))``: the same tokens and ids, from bert4x's tokenizer and
    from bert4x.bert4keras's."""
    jieba = pytest.importorskip("jieba")
    jieba.setLogLevel(logging.WARNING)
    chosen = native_tokenizers if module == "bert4x" else tokenizers
    tok = chosen.Tokenizer(jieba_vocab, do_lower_case=True,
                           pre_tokenize=lambda text: jieba.cut(text, HMM=False))
    theirs = oracle.result("jieba_tokenizer")
    vocabulary = tok.token_dict
    for index, text in enumerate(JIEBA_TEXTS):
        # bert4keras leaves an unknown word as it is; its id is [UNK] all the same.
        assert tok.tokenize(text) == [t if t in vocabulary else "[UNK]"
                                      for t in theirs["tokens"][index]], text
        assert tok.encode(text)[0] == theirs["ids"][index], text
    words = {token for tokens in theirs["tokens"] for token in tokens}
    assert {"语言", "cafe", "北京大学", "resume", "istanbul", "ς"} <= words


def test_sentencepiece_tokenizer_equals_bert4keras(oracle, sentencepiece_model):
    tok = tokenizers.SpTokenizer(sentencepiece_model)
    theirs = oracle.result("sp_tokenizer")
    assert [list(tok.encode(text)) for text in SP_TEXTS] == [list(p) for p in theirs["ids"]]
    assert [list(tok.encode(a, b, maxlen=12)) for a, b in zip(SP_TEXTS, SP_TEXTS[1:])] == \
        [list(p) for p in theirs["pairs"]]
    assert [tok.decode(tok.encode(t)[0][1:-1]) for t in SP_TEXTS] == theirs["decoded"]
    split = tokenizers.SpTokenizer(sentencepiece_model, pre_tokenize=two_character_words)
    ours = [list(split.encode(text)) for text in SP_TEXTS]
    assert ours == [list(p) for p in theirs["pre_tokenized"]]
    assert ours != [list(p) for p in theirs["ids"]]  # the words did change the pieces


# ------------------------------------------------------------------ optimizers
@pytest.mark.parametrize("case", sorted(OPTIMIZER_CASES))
def test_optimizer_updates_equal_bert4keras(oracle, case):
    import tensorflow as tf

    factories, settings, steps, *options = OPTIMIZER_CASES[case]
    options = (options or [{}])[0]
    optimizer_class = getattr(optimizers, options.get("base", "Adam"))
    for name in factories:
        optimizer_class = getattr(optimizers, name)(optimizer_class)
    optimizer = optimizer_class(**settings)
    dense = keras.layers.Dense(2, name="Transformer-0-FeedForward")
    dense.build((None, 3))
    dense.set_weights(list(OPTIMIZER_W))
    for x in options.get("x", [OPTIMIZER_X] * steps):
        with tf.GradientTape() as tape:
            loss = keras.ops.mean(keras.ops.square(dense(x) - OPTIMIZER_Y))
        grads = tape.gradient(loss, dense.trainable_weights)
        optimizer.apply_gradients(zip(grads, dense.trainable_weights))
    snapshots = [dense.get_weights()]
    if options.get("ema"):
        for bias_correction in (True, False):
            optimizer.apply_ema_weights(bias_correction=bias_correction)
            snapshots.append(dense.get_weights())
            optimizer.reset_old_weights()
        snapshots.append(dense.get_weights())
    theirs = oracle.result(f"optimizer_{case}")
    assert len(snapshots) == len(theirs)
    for our_weights, their_weights in zip(snapshots, theirs):
        for ours, expected in zip(our_weights, their_weights):
            np.testing.assert_allclose(ours, expected, atol=TOL)


def test_sparse_multilabel_loss_equals_bert4keras(oracle):
    ours = [keras.ops.convert_to_numpy(backend.sparse_multilabel_categorical_crossentropy(
        SPARSE_MULTILABEL["y_true"], SPARSE_MULTILABEL["y_pred"], mask_zero))
        for mask_zero in (False, True)]
    theirs = oracle.result("sparse_multilabel")
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL)
    # Without mask_zero, index 0 is class 0: the dense loss of the classes {1, 3, 0}.
    y_pred = SPARSE_MULTILABEL["y_pred"][0, :1]
    dense = np.zeros_like(y_pred)
    dense[0, [0, 1, 3]] = 1
    np.testing.assert_allclose(
        ours[0][0, :1], keras.ops.convert_to_numpy(
            backend.multilabel_categorical_crossentropy(dense, y_pred)), rtol=TOL)


def test_crf_loss_traces_with_an_unknown_length(oracle):
    # Batches padded to their own longest sequence reach the loss with an
    # unknown length (a traced step); the loss is still bert4keras's.
    import tensorflow as tf

    crf = layers.ConditionalRandomField(lr_multiplier=CRF["lr_multiplier"])
    crf.build(CRF["emissions"].shape)
    crf.set_weights([CRF["trans"] / CRF["lr_multiplier"]])
    output = crf(CRF["emissions"], mask=CRF["mask"])
    traced = tf.function(crf.sparse_loss, input_signature=[
        tf.TensorSpec((None, None), "int32"), tf.TensorSpec((None, None, 4), "float32")])
    np.testing.assert_allclose(traced(CRF["labels"], output).numpy(),
                               oracle.result("crf")["sparse_loss"], atol=TOL)


# ------------------------------------------------------- Keras 2 backend (K)
# Keras 2 backend functions with their arguments: (name, args, kwargs).
_X = np.linspace(-2.0, 2.5, 24, dtype=np.float32).reshape(2, 3, 4)
KERAS2_CASES = [
    ("permute_dimensions", (_X, (2, 0, 1)), {}), ("pow", (_X, 3), {}),
    ("gather", (_X, np.array([1, 0, 1])), {}), ("batch_flatten", (_X,), {}),
    ("flatten", (_X,), {}), ("expand_dims", (_X,), {}), ("expand_dims", (_X, 1), {}),
    ("repeat", (_X[:, 0], 3), {}), ("repeat_elements", (_X, 2, 1), {}),
    ("reverse", (_X, 1), {}), ("reverse", (_X, (0, 2)), {}), ("relu", (_X,), {}),
    ("relu", (_X,), dict(alpha=0.1, max_value=1.5, threshold=0.5)),
    ("hard_sigmoid", (_X,), {}), ("bias_add", (_X, np.arange(4, dtype=np.float32)), {}),
    ("temporal_padding", (_X, (1, 2)), {}), ("cumprod", (_X,), {}),
    ("cumprod", (_X, 2), {}), ("arange", (2, 9, 3), {}), ("dot", (_X, _X[0].T), {}),
    ("transpose", (_X,), {}), ("sum", (_X, 1), {}), ("mean", (_X,), dict(keepdims=True)),
    ("max", (_X, -1), {}), ("std", (_X, 0), {}), ("var", (_X,), {}),
    ("logsumexp", (_X, 1), {}), ("softmax", (_X,), {}), ("elu", (_X, 0.5), {}),
    ("softplus", (_X,), {}), ("softsign", (_X,), {}), ("square", (_X,), {}),
    ("sqrt", (np.abs(_X),), {}), ("sign", (_X,), {}), ("round", (_X * 2,), {}),
    ("tile", (_X, (1, 2, 1)), {}), ("stack", ([_X, _X], 1), {}),
    ("squeeze", (_X[:, :1], 1), {}), ("maximum", (_X, 0.3), {}),
    ("l2_normalize", (_X, 1), {}), ("one_hot", (np.array([[0, 2], [1, 1]]), 3), {}),
    ("in_top_k", (_X[0], np.array([3, 0, 2]), 2), {}), ("cumsum", (_X, 1), {}),
]


def test_K_has_the_keras2_functions(oracle):
    """``K.permute_dimensions``, ``K.pow``, ``K.gather`` ... (missing or different
    before: ``K.repeat`` was ``ops.repeat``, ``K.hard_sigmoid`` Keras 3's) equal
    ``tf.keras.backend``'s."""
    import keras

    from bert4x.bert4keras.backend import K
    expected = oracle.result("keras2_backend")
    for (name, args, kwargs), theirs in zip(KERAS2_CASES, expected):
        ours = keras.ops.convert_to_numpy(getattr(K, name)(*args, **kwargs))
        assert ours.shape == theirs.shape, name
        np.testing.assert_allclose(ours.astype(np.float64), theirs.astype(np.float64),
                                   atol=1e-5, err_msg=f"K.{name}")
