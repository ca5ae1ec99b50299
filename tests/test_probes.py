"""Probes (``intermediate_model``, ``attention_model``) of every family against
Hugging Face ``transformers``' ``output_hidden_states`` / ``output_attentions``.

The weights are random ``transformers`` models on PyTorch, written in the
official layout by ``test_families``'s name rules; shared ALBERT layers are
probed per call.
"""

import os
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_families import (ALBERT_RULES, BASE, BERT_RULES, DISCRIMINATOR_RULES,  # noqa: E402
                           ROBERTA_RULES, ROFORMER_RULES, inputs_for, official_weights,
                           randomised)
from _official_checkpoint import write_official  # noqa: E402

from bert4x.models import attention_model, build_transformer_model, intermediate_model  # noqa: E402
from _oracle import import_oracle  # noqa: E402

torch = import_oracle("torch")
transformers = import_oracle("transformers")

TOL = 1e-4
HIDDEN_TOL = 1e-3  # hidden states of these large random weights reach about 10
SMALL = dict(BASE, hidden_size=12, intermediate_size=20, num_attention_heads=2,
             max_position_embeddings=24)


def _case(hf_class, config_class, config, rules, family, seed, pad=0, bert4x_config=None,
          two_segments=True):
    return dict(hf_class=hf_class, config_class=config_class, config=config, rules=rules,
                family=family, seed=seed, pad=pad, bert4x_config=bert4x_config or config,
                two_segments=two_segments)


CASES = {
    "bert": _case("BertForMaskedLM", "BertConfig", SMALL, BERT_RULES, "bert", 1),
    "roberta": _case("RobertaForMaskedLM", "RobertaConfig",
                     dict(SMALL, type_vocab_size=1, max_position_embeddings=26,
                          pad_token_id=1, layer_norm_eps=1e-5), ROBERTA_RULES, "roberta", 2,
                     pad=1, two_segments=False,
                     bert4x_config=dict(SMALL, type_vocab_size=1, max_position_embeddings=26,
                                        pad_token_id=1, layer_norm_eps=1e-5,
                                        model_type="roberta")),
    # One shared block run three times, E != H.
    "albert": _case("AlbertForMaskedLM", "AlbertConfig",
                    dict(SMALL, embedding_size=8, num_hidden_layers=3), ALBERT_RULES,
                    "albert", 3),
    # Two groups of two inner blocks over four layers: eight attention calls.
    "albert_groups": _case("AlbertForMaskedLM", "AlbertConfig",
                           dict(SMALL, embedding_size=8, num_hidden_layers=4,
                                num_hidden_groups=2, inner_group_num=2), ALBERT_RULES,
                           "albert", 4),
    # The unshared layout with E == H (the mapping is still there) and E != H.
    "albert_unshared_same_width": _case("AlbertForMaskedLM", "AlbertConfig",
                                        dict(SMALL, embedding_size=12), ALBERT_RULES,
                                        "albert_unshared", 5),
    "albert_unshared": _case("AlbertForMaskedLM", "AlbertConfig", dict(SMALL, embedding_size=8),
                             ALBERT_RULES, "albert_unshared", 6),
    "electra": _case("ElectraForPreTraining", "ElectraConfig", dict(SMALL, embedding_size=8),
                     DISCRIMINATOR_RULES, "electra", 7),
    "roformer": _case("RoFormerForMaskedLM", "RoFormerConfig", SMALL, ROFORMER_RULES, "roformer", 8),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def probed(request, tmp_path_factory):
    """``(case, transformers outputs, bert4x model)`` of one family."""
    case = CASES[request.param]
    torch.manual_seed(case["seed"])
    hf_config = getattr(transformers, case["config_class"])(
        **case["config"], attn_implementation="eager")
    hf = randomised(getattr(transformers, case["hf_class"])(hf_config), case["seed"])
    ids, segments = inputs_for(case["pad"], case["two_segments"])
    ids_t = torch.from_numpy(ids.astype(np.int64))
    with torch.no_grad():
        out = getattr(hf, hf.base_model_prefix)(ids_t, attention_mask=(ids_t != case["pad"]).long(),
                 token_type_ids=torch.from_numpy(segments.astype(np.int64)),
                 output_hidden_states=True, output_attentions=True)
    folder = str(tmp_path_factory.mktemp(request.param))
    prefix = write_official(folder, official_weights(hf, case["rules"]), case["bert4x_config"],
                            config_name="config.json")
    model = build_transformer_model(os.path.join(folder, "config.json"), prefix,
                                    model=case["family"])
    reference = dict(hidden=[h.numpy() for h in out.hidden_states],
                     attentions=[a.numpy() for a in out.attentions])
    return dict(case, name=request.param, ids=ids, segments=segments), reference, model


def _run(probe, case):
    outputs = probe([ids for ids in (case["ids"], case["segments"])], training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [np.asarray(output) for output in outputs]


def test_attention_model_equals_transformers_attentions(probed):
    case, reference, model = probed
    expected = reference["attentions"]
    found = _run(attention_model(model, list(range(len(expected)))), case)
    assert len(found) == len(expected)
    for index, (ours, theirs) in enumerate(zip(found, expected)):
        valid = np.broadcast_to((case["ids"] != case["pad"])[:, None, None, :], ours.shape)
        np.testing.assert_allclose(ours[valid], theirs[valid], atol=TOL,
                                   err_msg=f"{case['name']} attention call {index}")
        assert np.all(ours[~valid] == 0.0)


def _hidden_probes(model, case):
    """The embedding output the first layer reads, then the output of each block call
    in running order (``transformers`` records ALBERT's inner layers one by one)."""
    config = case["config"]
    names = [layer.name for layer in model.layers]
    embedding = "Embedding-Mapping" if "Embedding-Mapping" in names else "Embedding-Norm"
    if "Transformer-FeedForward-Norm" in names:  # one shared block
        return [embedding] + [("Transformer-FeedForward-Norm", i)
                              for i in range(config["num_hidden_layers"])]
    if case["family"] != "albert":
        return [embedding] + [f"Transformer-{i}-FeedForward-Norm"
                              for i in range(config["num_hidden_layers"])]
    groups, inner = config["num_hidden_groups"], config["inner_group_num"]
    schedule = [group * inner + k for layer in range(config["num_hidden_layers"])
                for group in [layer * groups // config["num_hidden_layers"]]
                for k in range(inner)]
    return [embedding] + [(f"Transformer-{block}-FeedForward-Norm", schedule[:j].count(block))
                          for j, block in enumerate(schedule)]


def test_intermediate_model_equals_transformers_hidden_states(probed):
    case, reference, model = probed
    expected = reference["hidden"]
    probes = _hidden_probes(model, case)
    found = _run(intermediate_model(model, probes), case)
    assert len(found) == len(expected)
    real = case["ids"] != case["pad"]
    for probe, ours, theirs in zip(probes, found, expected):
        np.testing.assert_allclose(ours[real], theirs[real], atol=HIDDEN_TOL,
                                   err_msg=f"{case['name']} {probe}")


@pytest.fixture(scope="module")
def shared_albert():
    return build_transformer_model(model="albert", **dict(
        SMALL, embedding_size=8, num_hidden_layers=3))


def test_shared_layer_needs_its_call(shared_albert):
    """A shared layer named alone used to give its first call's output silently."""
    with pytest.raises(ValueError, match=r"runs 3 times .*\('Transformer-FeedForward-Norm', "
                                         r"2\)"):
        intermediate_model(shared_albert, "Transformer-FeedForward-Norm")
    with pytest.raises(ValueError, match="runs 3 times .* no call 3"):
        intermediate_model(shared_albert, ("Transformer-FeedForward-Norm", 3))
    with pytest.raises(ValueError, match="runs 3 attention layers .* got 3"):
        attention_model(shared_albert, 3)


def test_probes_of_a_reloaded_shared_model(shared_albert, tmp_path):
    """The last call's output is the model's output, and the attention calls of a
    model loaded from ``.keras`` equal those of the model saved."""
    import keras

    ids, segments = inputs_for(0)
    last = intermediate_model(shared_albert, ("Transformer-FeedForward-Norm", -1))
    np.testing.assert_allclose(np.asarray(last([ids, segments])),
                               np.asarray(shared_albert([ids, segments])), atol=1e-6)
    path = str(tmp_path / "albert.keras")
    shared_albert.save(path)
    loaded = keras.saving.load_model(path)
    for ours, theirs in zip(attention_model(loaded, [0, 1, 2])([ids, segments]),
                            attention_model(shared_albert, [0, 1, 2])([ids, segments])):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-6)


def test_probe_indices_as_numpy_ints_and_bad_ones_named(shared_albert):
    """NumPy ints count as ints (they used to fail with "not iterable" or name the
    layer without its call); a bool or an empty list is refused by name."""
    ids, segments = inputs_for(0)
    second = np.asarray(attention_model(shared_albert, np.int64(1))([ids, segments]))
    assert second.shape == (len(ids), SMALL["num_attention_heads"]) + ids.shape[1:] * 2
    intermediate_model(shared_albert, ("Transformer-FeedForward-Norm", np.int64(1)))
    with pytest.raises(ValueError, match="got True"):
        attention_model(shared_albert, True)
    with pytest.raises(ValueError, match="layer_indices is empty"):
        attention_model(shared_albert, [])
    with pytest.raises(ValueError, match="layer_names is empty"):
        intermediate_model(shared_albert, [])
