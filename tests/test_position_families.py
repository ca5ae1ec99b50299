"""RoFormer and NEZHA in generation: UniLM decoding with positions inside attention.

Parity with the references (transformers ``RoFormerForMaskedLM``, a NumPy NEZHA), the
checkpoint formats and the cached step on every backend are in ``test_families.py``
and ``test_generation.py``. Here the cached ``Decoder`` of tiny RoFormer and NEZHA
UniLM models with Conditional Layer Normalization is checked against brute-force
enumeration over full re-runs (``test_generation``'s references), for beam search
and classifier-free guidance; an LM with CLN against full re-runs step by step.
"""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _generation_worker as generation_worker  # noqa: E402
import test_generation as generation  # noqa: E402
from bert4x.decoding import Decoder  # noqa: E402
from bert4x.models import build_transformer_model  # noqa: E402

SMALL_VOCAB = generation.SMALL_VOCAB
# Sources of up to 7 tokens: NEZHA's K = 3 clips the relative distances.
FAMILY_CONFIG = {"roformer": {}, "nezha": dict(max_relative_position=3)}
TINY = dict(vocab_size=20, hidden_size=12, num_hidden_layers=1, num_attention_heads=3,
            intermediate_size=10)


def test_unsupported_position_settings_are_refused():
    with pytest.raises(NotImplementedError, match="rotary_value"):
        build_transformer_model(model="roformer", rotary_value=True, **TINY)
    with pytest.raises(ValueError, match="use_relative_position"):
        build_transformer_model(model="nezha", use_relative_position=False, **TINY)
    with pytest.raises(ValueError, match="max_relative_position"):
        build_transformer_model(model="nezha", max_relative_position=0, **TINY)
    with pytest.raises(ValueError, match="model='nezha'"):
        build_transformer_model(model="bert", use_relative_position=True, **TINY)
    with pytest.raises(ValueError, match="must be even"):
        build_transformer_model(model="roformer", **dict(TINY, hidden_size=9))


@pytest.fixture(scope="module")
def small_builders():
    """Tiny UniLM builders of each family over an 8-token vocabulary (CLN for guidance)."""
    return {family: generation_worker.build("unilm", conditional=True, seed=5,
                                            vocab_size=SMALL_VOCAB, model=family,
                                            **FAMILY_CONFIG[family])
            for family in ("roformer", "nezha")}


@pytest.mark.parametrize("family", ["roformer", "nezha"])
def test_lm_cache_with_cln_matches_full_reruns(family):
    """UniLM caches are checked on every backend in ``test_generation.py``; here LM
    with CLN."""
    builder = generation_worker.build("lm", True, model=family, **FAMILY_CONFIG[family])
    assert generation_worker.check_cache(builder) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("family", ["roformer", "nezha"])
@pytest.mark.parametrize("application,conditional", [("unilm", False), ("unilm", True),
                                                     ("lm", False), ("lm", True)])
def test_cache_and_greedy_match_full_reruns(family, application, conditional):
    builder = generation_worker.build(application, conditional, model=family,
                                      **FAMILY_CONFIG[family])
    assert generation_worker.check_cache(builder) < 1e-4
    assert generation_worker.check_greedy(builder)


@pytest.mark.parametrize("family", ["roformer", "nezha"])
def test_beam_search_equals_brute_force(small_builders, family):
    builder = small_builders[family]
    sources = [[2, 5, 6, 4, 3, 7, 5], [2, 7, 3]]
    labels = np.array([[0], [1]], "int32")
    max_length = 3
    beam = (SMALL_VOCAB - 2) ** (max_length - 1)
    found = Decoder(builder, end_id=generation.END, max_length=max_length).beam_search(
        sources, beam_size=beam, num_return=4, additional_inputs=[labels])
    for index, (source, results) in enumerate(zip(sources, found)):
        expected = generation.rank(generation.enumerate_sequences(
            lambda prefixes: generation.rerun_log_probs(builder, source, prefixes,
                                                        [labels[index:index + 1]]),
            SMALL_VOCAB, max_length, generation.END), 1.0)
        generation.assert_same_ranking(results, expected, 4)


@pytest.mark.parametrize("family", ["roformer", "nezha"])
def test_sampling_and_guidance(small_builders, family):
    """top_k=1 sampling is greedy; guided beam search equals brute force."""
    builder = small_builders[family]
    sources = [[2, 5, 6, 4, 3], [2, 7, 3]]
    labels, negatives = np.array([[0], [1]], "int32"), np.array([[1], [0]], "int32")
    decoder = Decoder(builder, end_id=generation.END, max_length=3)
    greedy = decoder.greedy(sources, additional_inputs=[labels])
    sampled = decoder.sample(sources, n=2, top_k=1, seed=3, additional_inputs=[labels])
    for best, samples in zip(greedy, sampled):
        assert all(sample.token_ids == best.token_ids for sample in samples)
    scale = 2.5
    found = decoder.beam_search(sources, beam_size=36, num_return=3,
                                additional_inputs=[labels], guidance_scale=scale,
                                negative_additional_inputs=[negatives])
    for index, (source, results) in enumerate(zip(sources, found)):
        expected = generation.rank(generation.enumerate_sequences(
            lambda prefixes: generation.guided_next_log_probs(
                builder, source, labels[index, 0], negatives[index, 0], scale, prefixes),
            SMALL_VOCAB, 3, generation.END), 1.0)
        generation.assert_same_ranking(results, expected, 3)
