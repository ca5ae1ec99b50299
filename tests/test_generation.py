"""Generation: masks, the key/value cache, CLN, the loss and every decoding route.

References are independent of the decoder: NumPy double loops for masks, full
re-runs of the Keras model for logits, brute-force enumeration of every sequence
for beam search. JAX and PyTorch run ``_generation_worker.py`` in subprocesses
started at the beginning of the module, so they overlap the TensorFlow tests.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _generation_worker as worker  # noqa: E402
from bert4x import layers  # noqa: E402
from bert4x.decoding import (Decoder, GenerationResult, RerunDecoder,  # noqa: E402
                             filter_log_probs)
from bert4x.search import (sample_until_ended, sampling_choice,  # noqa: E402
                           topk_beam_search)
from bert4x.losses import (GenerationLoss, generation_loss,  # noqa: E402
                           generation_loss_weights, generation_targets)
from bert4x.models import BERT  # noqa: E402

END = worker.END_ID
SMALL_VOCAB = 8


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def other_backends(request):
    """Start the selected JAX and PyTorch workers now; tests at the end collect them."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    # The workers run tiny models a few times each, so their CPU goes to overheads:
    # PyTorch's second OpenMP thread spins on every small operation (one thread
    # needs a third of the CPU), and JAX compiles each model's decoding functions
    # and each eagerly run operation once, where LLVM's optimisation of the
    # generated code costs more than the code runs (without it, 40% less).
    settings = {"torch": dict(OMP_NUM_THREADS="1"),
                "jax": dict(XLA_FLAGS=" ".join(filter(None, [
                    os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0",
                    "--xla_llvm_disable_expensive_passes=true"])))}
    processes = {}
    selected = {item.callspec.params["backend"] for item in request.session.items
                if item.originalname == "test_cache_and_greedy_on_other_backends"}
    for backend in sorted(selected):
        processes[backend] = subprocess.Popen(
            [sys.executable, worker.__file__],
            env=dict(env, KERAS_BACKEND=backend, **settings[backend]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield processes
    for process in processes.values():
        if process.poll() is None:
            process.kill()


@pytest.fixture(scope="module")
def builders():
    """The worker's four tiny builders (unilm/lm, with/without CLN), built on demand."""
    built = {}

    def get(application, conditional=False):
        if (application, conditional) not in built:
            built[application, conditional] = worker.build(application, conditional)
        return built[application, conditional]
    return get


@pytest.fixture(scope="module")
def unilm(builders):
    return builders("unilm")


@pytest.fixture(scope="module")
def small_unilm():
    return worker.build("unilm", conditional=False, seed=3, vocab_size=SMALL_VOCAB)


def log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def rerun_log_probs(builder, source, prefixes, additional_inputs=()):
    """Next-token log-probs after ``source + prefix`` for each prefix, by full re-runs.

    ``additional_inputs`` (e.g. a CLN class id ``[1, 1]``) are repeated for every row.
    """
    rows = len(prefixes)
    token_ids = np.zeros((rows, worker.REFERENCE_LENGTH), "int32")
    segment_ids = np.zeros_like(token_ids)
    for row, prefix in enumerate(prefixes):
        sequence = source + list(prefix)
        token_ids[row, :len(sequence)] = sequence
        segment_ids[row, len(source):len(sequence)] = worker.target_segment(
            builder.application)
    extras = [np.repeat(np.asarray(extra), rows, axis=0) for extra in additional_inputs]
    logits = np.asarray(builder.model.predict_on_batch(
        worker.model_inputs(builder, token_ids, segment_ids) + extras))
    last = np.array([len(source) + len(p) - 1 for p in prefixes])
    return log_softmax(logits[np.arange(rows), last])


def next_log_probs(builder, source, prefixes):
    """Like :func:`rerun_log_probs`; ``source`` may be a list of sources scored jointly
    (mean of probabilities)."""
    sources = source if isinstance(source[0], list) else [source]
    stacked = np.stack([rerun_log_probs(builder, member, prefixes) for member in sources])
    return np.log(np.exp(stacked).mean(axis=0))


def enumerate_sequences(next_fn, vocab, max_length, end_id, min_length=0, allowed=None,
                        first_id=1):
    """Every sequence the decoder may produce, with its summed log-probability.

    ``allowed(prefix)`` (optional) gives the allowed next ids. Returns a list of
    ``(tokens, total, ended)``.
    """
    finished = []
    frontier = [([], 0.0)]
    for step in range(max_length):
        if not frontier:
            break
        log_probs = next_fn([prefix for prefix, _ in frontier])
        grown = []
        for (prefix, total), row in zip(frontier, log_probs):
            for token in range(first_id, vocab):
                if allowed is not None and token not in allowed(prefix):
                    continue
                if token == end_id:
                    if step >= min_length:
                        finished.append((prefix, total + row[token], True))
                    continue
                extended = (prefix + [token], total + row[token])
                if step == max_length - 1:
                    finished.append(extended + (False,))
                else:
                    grown.append(extended)
        frontier = grown
    return finished


def rank(sequences, length_penalty):
    scored = [(total / (len(tokens) + ended) ** length_penalty, tokens, total, ended)
              for tokens, total, ended in sequences]
    return sorted(scored, key=lambda item: -item[0])


def assert_same_ranking(results, expected, count):
    assert len(results) == count
    for result, (score, tokens, total, ended) in zip(results, expected[:count]):
        assert result.token_ids == tokens
        assert result.ended == ended
        np.testing.assert_allclose(result.score, score, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(result.log_prob, total, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------- masks
def rule_mask(token_ids, segment_ids, application):
    """The mask rules of docs/model.md ("Attention masks"), written as loops."""
    batch, length = token_ids.shape
    allowed = np.zeros((batch, length, length), bool)
    for b in range(batch):
        cumulative, running = [], 0
        for s in segment_ids[b]:
            running += int(s)
            cumulative.append(running)
        for i in range(length):
            for j in range(length):
                if token_ids[b, j] == 0:
                    continue
                if application == "unilm":
                    allowed[b, i, j] = cumulative[j] <= cumulative[i]
                else:
                    allowed[b, i, j] = j <= i
    return allowed


def test_masks_follow_the_design_rule():
    token_ids = np.array([[2, 5, 6, 3, 7, 8, 3, 0, 0],
                          [2, 9, 3, 4, 3, 0, 0, 0, 0],
                          [2, 5, 5, 5, 5, 5, 5, 6, 3]])
    segment_ids = np.array([[0, 0, 0, 0, 1, 1, 1, 0, 0],
                            [0, 0, 0, 1, 1, 1, 1, 1, 1],
                            [0, 0, 0, 0, 0, 0, 0, 0, 0]])
    for application in ("unilm", "lm"):
        mask = keras.ops.convert_to_numpy(
            layers.attention_mask(token_ids, segment_ids, application))
        np.testing.assert_array_equal(mask, rule_mask(token_ids, segment_ids, application))


def test_unilm_source_outputs_ignore_the_target(unilm):
    source = [2, 5, 6, 7, 3]
    first = np.array([source + [11, 12, 13]])
    second = np.array([source + [21, 4, 17]])
    segments = np.array([[0] * 5 + [1] * 3])
    a = unilm.model.predict_on_batch([first, segments])
    b = unilm.model.predict_on_batch([second, segments])
    np.testing.assert_allclose(a[0, :5], b[0, :5], atol=1e-5)
    assert np.abs(a[0, 5:] - b[0, 5:]).max() > 1e-3  # the targets do see each other


def test_lm_outputs_ignore_later_tokens(builders):
    first = np.array([[2, 5, 6, 7, 4, 5]])
    second = np.array([[2, 5, 6, 1, 2, 7]])
    segments = np.zeros_like(first)
    model = builders("lm").model
    a, b = (keras.ops.convert_to_numpy(model([ids, segments], training=False))
            for ids in (first, second))
    np.testing.assert_allclose(a[0, :3], b[0, :3], atol=1e-5)
    assert np.abs(a[0, 3:] - b[0, 3:]).max() > 1e-3


# ------------------------------------------------------------------------ cache
@pytest.mark.parametrize("application", ["unilm", "lm"])
@pytest.mark.parametrize("conditional", [False, True])
def test_cache_and_greedy_match_full_reruns_tensorflow(builders, application, conditional):
    builder = builders(application, conditional)
    assert worker.check_cache(builder) < 1e-4
    assert worker.check_greedy(builder)


@pytest.mark.parametrize("family", sorted(worker.FAMILY_CONFIGS))
def test_families_cache_and_greedy_match_full_reruns(family):
    """Every family's prefill + step graphs give the logits of full re-runs (fairseq
    RoBERTa: padding id 1 and positions offset by 2; ALBERT: one cache entry per
    application of the shared layer; factorised embeddings)."""
    builder = worker.build_family(family)
    assert len(builder.schedule) == builder.config.num_hidden_layers
    assert worker.check_cache(builder) < 1e-4
    assert worker.check_greedy(builder)


@pytest.mark.parametrize("family", ["roberta", "albert"])
def test_families_with_cln_and_lm(family):
    """Conditional Layer Normalization (random condition weights, so it matters) and
    the left-to-right LM keep cached decoding exact on the other families too."""
    conditional = worker.build_family(family, conditional=True)
    assert worker.check_cache(conditional) < 1e-4
    assert worker.check_greedy(conditional)
    assert worker.check_cache(worker.build_family(family, application="lm")) < 1e-4


def test_cache_models_take_and_return_named_tensors(builders):
    """The prefill and step graphs are addressed by name; the condition's input keeps
    the name of its keras.Input (``class_id``)."""
    prefill, step = builders("unilm", conditional=True).cache_models()
    assert set(prefill.input) == {"token_ids", "segment_ids", "last_index", "class_id"}
    assert set(step.input) == {"token_ids", "segment_ids", "position_ids", "source_cache",
                               "source_key_mask", "cache", "key_mask", "write_mask",
                               "class_id"}
    assert set(prefill.output) == set(step.output) == {"logits", "cache"}
    outputs = prefill({"token_ids": np.array([[2, 7, 9, 3]]),
                       "segment_ids": np.zeros((1, 4), "int32"),
                       "last_index": np.array([3]), "class_id": np.array([[1]])})
    assert keras.ops.shape(outputs["logits"]) == (1, builders("unilm").config.vocab_size)
    assert keras.ops.shape(outputs["cache"])[4] == 4  # the source's 4 slots


def test_an_additional_input_named_like_a_decoding_input_is_refused():
    cache = keras.Input((1,), dtype="int32", name="cache")
    condition = keras.layers.Flatten()(keras.layers.Embedding(2, 4)(cache))
    builder = BERT(worker.tiny_config(), application="unilm", layer_norm_cond=condition,
                   additional_input_layers=[cache])
    with pytest.raises(ValueError, match="'cache' clashes with another input"):
        builder.cache_models()


def test_next_token_log_probs_are_the_full_runs_log_softmax(unilm):
    """One prefill gives each source's first-token distribution; a group of sources
    gets the mean of its members' probabilities."""
    decoder = Decoder(unilm, end_id=END)
    got = decoder.next_token_log_probs(worker.SOURCES + [worker.SOURCES[:2]])
    expected = []
    for source in worker.SOURCES:
        logits = worker.full_logits(unilm, source, [])[0].astype(np.float64)
        expected.append(logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max())
    mean = np.log((np.exp(expected[0]) + np.exp(expected[1])) / 2)
    np.testing.assert_allclose(got, np.stack(expected + [mean]), atol=1e-4)


def test_step_is_traced_once_whatever_the_shapes(unilm):
    builder = unilm
    decoder = Decoder(builder, end_id=END, max_length=4)
    decoder.greedy([[2, 5, 3]])
    decoder.greedy([[2, 5, 6, 7, 8, 9, 3], [2, 4, 3]], max_length=7)
    decoder.beam_search([[2, 5, 6, 3]], beam_size=3, max_length=5)
    decoder.sample([[2, 5, 3], [2, 6, 7, 3]], n=2, seed=0, max_length=3)
    Decoder(builder, end_id=None, max_length=6).beam_search([[2, 5, 3]], beam_size=2)
    assert decoder.step_traces == 1


def test_xla_step_gives_the_same_results(unilm):
    sources = [[2, 5, 6, 7, 3], [2, 9, 3]]
    settings = dict(beam_size=3, num_return=2, max_length=5)
    plain = Decoder(unilm, end_id=END).beam_search(sources, **settings)
    xla = Decoder(unilm, end_id=END, jit_compile=True).beam_search(sources, **settings)
    for a, b in zip(plain, xla):
        assert [r.token_ids for r in a] == [r.token_ids for r in b]
        np.testing.assert_allclose([r.score for r in a], [r.score for r in b], atol=1e-5)


# ---------------------------------------------------------------- beam search
@pytest.mark.parametrize("length_penalty, min_length", [(1.0, 0), (0.0, 0), (-0.5, 1),
                                                        (2.0, 2)])
def test_wide_beam_search_equals_brute_force(small_unilm, length_penalty, min_length):
    sources = [[2, 5, 6, 4, 3], [2, 7, 3]]
    max_length = 3
    beam = (SMALL_VOCAB - 2) ** (max_length - 1)  # every live prefix fits
    decoder = Decoder(small_unilm, end_id=END, max_length=max_length,
                      min_length=min_length)
    found = decoder.beam_search(sources, beam_size=beam, num_return=4,
                                length_penalty=length_penalty)
    for source, results in zip(sources, found):
        expected = rank(enumerate_sequences(
            lambda prefixes: next_log_probs(small_unilm, source, prefixes),
            SMALL_VOCAB, max_length, END, min_length), length_penalty)
        assert_same_ranking(results, expected, 4)


@pytest.mark.parametrize("early_stopping", [True, False])
def test_batched_beam_search_equals_brute_force_either_stopping(small_unilm, early_stopping):
    """Sources of three lengths in one batch, length penalty 0.7: each source's ranking
    is its own brute-force ranking, whether settled sources stop early or not."""
    sources = [[2, 5, 6, 4, 3], [2, 7, 3], [2, 4, 4, 6, 5, 7, 3]]
    max_length, beam = 3, (SMALL_VOCAB - 2) ** 2
    decoder = Decoder(small_unilm, end_id=END, max_length=max_length, min_length=1)
    found = decoder.beam_search(sources, beam_size=beam, num_return=5, length_penalty=0.7,
                                early_stopping=early_stopping)
    for source, results in zip(sources, found):
        expected = rank(enumerate_sequences(
            lambda prefixes: next_log_probs(small_unilm, source, prefixes),
            SMALL_VOCAB, max_length, END, 1), 0.7)
        assert_same_ranking(results, expected, 5)


class FixedTable(RerunDecoder):
    """Crafted scores: a deterministic pseudo-random distribution per prefix."""

    rtype = "logits"

    def __init__(self, vocab=6, end_bias=1.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab, self.end_bias, self.calls = vocab, end_bias, 0

    def logits(self, prefix):
        rng = np.random.default_rng([len(prefix)] + list(prefix))
        row = rng.normal(0, 2, self.vocab)
        row[self.end_id] += self.end_bias
        return row

    def predict(self, inputs, output_ids, states):
        self.calls += 1
        return np.stack([self.logits(list(row)) for row in output_ids])

    def reference(self, prefixes):
        return log_softmax([self.logits(p) for p in prefixes])


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, -1.0, 2.0])
def test_predict_route_beam_search_equals_brute_force(length_penalty):
    table = FixedTable(vocab=6, end_id=1, max_length=4)
    beam = 5 ** 3
    results = table.beam_search([np.array([1, 2])], beam_size=beam, num_return=5,
                                length_penalty=length_penalty)
    expected = rank(enumerate_sequences(table.reference, 6, 4, 1, first_id=0),
                    length_penalty)
    assert_same_ranking(results, expected, 5)


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, -1.0])
@pytest.mark.parametrize("beam_size", [1, 2, 3])
def test_early_stopping_never_changes_the_results(length_penalty, beam_size):
    settings = dict(beam_size=beam_size, num_return=beam_size, length_penalty=length_penalty)
    eager = FixedTable(vocab=12, end_id=1, end_bias=2.5, max_length=12)
    patient = FixedTable(vocab=12, end_id=1, end_bias=2.5, max_length=12)
    stopped = eager.beam_search([np.array([1])], early_stopping=True, **settings)
    full = patient.beam_search([np.array([1])], early_stopping=False, **settings)
    assert [(r.token_ids, r.score) for r in stopped] == [(r.token_ids, r.score) for r in full]
    assert eager.calls <= patient.calls
    if length_penalty <= 0:
        assert eager.calls < patient.calls  # the likely end token settles it early


def test_cached_and_predict_routes_agree(unilm):
    source = [2, 5, 6, 7, 3]

    class FullRerun(RerunDecoder):
        rtype = "log_probs"

        def predict(self, inputs, output_ids, states):
            scores = next_log_probs(unilm, source, [list(ids) for ids in output_ids])
            scores[:, 0] = -np.inf  # the cached decoder never emits padding
            return scores

    settings = dict(beam_size=3, num_return=3, length_penalty=0.7, max_length=5)
    cached = Decoder(unilm, end_id=END).beam_search([source], **settings)[0]
    rerun = FullRerun(end_id=END).beam_search([np.array(source)], **settings)
    assert [r.token_ids for r in cached] == [r.token_ids for r in rerun]
    np.testing.assert_allclose([r.score for r in cached], [r.score for r in rerun],
                               atol=1e-4)


class PrefixTable:
    """A scorer of :mod:`bert4x.search` over fixed next-token log-probabilities per
    prefix (``table[tuple(prefix)]``), recording the prefixes it was asked about."""

    def __init__(self, table):
        self.table, self.asked, self.prefixes = table, [], [()]

    def _rows(self):
        self.asked.append(list(self.prefixes))
        return np.log(np.array([self.table[prefix] for prefix in self.prefixes]))

    def first(self):
        return self._rows()

    def next(self, parents, tokens):
        self.prefixes = [self.prefixes[p] + (int(t),) for p, t in zip(parents, tokens)]
        return self._rows()


def test_bert4keras_beam_rule_drops_finished_rows_and_stops_at_the_best():
    # end id 2. After (): 1 (0.5) and 2 (0.3) are kept; the ended [2] is not the
    # best, so it leaves; after (1,): 2 wins (0.5 * 0.7), the best and ended.
    table = PrefixTable({(): [0.2, 0.5, 0.3], (1,): [0.1, 0.2, 0.7]})
    ids = topk_beam_search(table, 2, 5, 1, end_id=2, first_ids=[7])
    assert ids.tolist() == [7, 1, 2]
    assert table.asked == [[()], [(1,)]]
    # min_length 3 (first id included) keeps ended rows until then.
    table = PrefixTable({(): [0.2, 0.5, 0.3], (1,): [0.1, 0.2, 0.7],
                         (2,): [0.1, 0.2, 0.7]})
    ids = topk_beam_search(table, 2, 2, 3, end_id=2, first_ids=[7])
    assert ids.tolist() == [7, 1, 2]


def test_bert4keras_sampling_rule_returns_rows_in_the_order_they_end():
    table = PrefixTable({(): [0.5, 0.5], (0,): [0.5, 0.5], (1,): [0.5, 0.5]})
    draws = iter([np.array([1, 0, 0]), np.array([0, 1])])
    results = sample_until_ended(table, 3, 2, 1, end_id=1, first_ids=[],
                                 draw=lambda scores: next(draws))
    assert [ids.tolist() for ids in results] == [[1], [0, 1], [0, 0]]
    assert table.asked == [[()], [(0,), (0,)]]


# ----------------------------------------------------------------- constraints
def passage_constraint(source_index, prefix):
    """Only tokens of a per-source 'passage', never the previous token again."""
    passage = [{4, 5, 6, END}, {2, 5, 7, END}][source_index]
    return sorted(passage - set(prefix[-1:]))


def test_constraint_beam_search_equals_brute_force(small_unilm):
    sources = [[2, 5, 6, 4, 3], [2, 7, 3]]
    decoder = Decoder(small_unilm, end_id=END, max_length=4)
    found = decoder.beam_search(sources, beam_size=27, num_return=3,
                                constraint=passage_constraint)
    for index, (source, results) in enumerate(zip(sources, found)):
        expected = rank(enumerate_sequences(
            lambda prefixes: next_log_probs(small_unilm, source, prefixes), SMALL_VOCAB, 4,
            END, allowed=lambda prefix: passage_constraint(index, prefix)), 1.0)
        assert_same_ranking(results, expected, 3)


def test_constraint_greedy_and_boolean_masks(small_unilm):
    sources = [[2, 5, 6, 4, 3], [2, 7, 3]]
    decoder = Decoder(small_unilm, end_id=END, max_length=6)
    by_ids = decoder.greedy(sources, constraint=passage_constraint)

    def as_mask(source_index, prefix):
        mask = np.zeros(SMALL_VOCAB, bool)
        mask[passage_constraint(source_index, prefix)] = True
        return mask

    by_mask = decoder.greedy(sources, constraint=as_mask)
    for index, source in enumerate(sources):
        generated = []
        for _ in range(6):
            row = next_log_probs(small_unilm, source, [generated])[0]
            allowed = passage_constraint(index, generated)
            token = allowed[int(np.argmax(row[allowed]))]
            if token == END:
                break
            generated.append(token)
        assert by_ids[index].token_ids == generated
        assert by_mask[index].token_ids == generated


# --------------------------------------------------------------- joint scoring
def test_joint_scoring_averages_member_distributions(small_unilm):
    group = [[2, 5, 6, 4, 3], [2, 7, 3], [2, 6, 6, 3]]
    single = [2, 4, 5, 3]
    decoder = Decoder(small_unilm, end_id=END, max_length=3)
    found = decoder.beam_search([group, single], beam_size=36, num_return=3)
    for source, results in zip([group, single], found):
        expected = rank(enumerate_sequences(
            lambda prefixes: next_log_probs(small_unilm, source, prefixes),
            SMALL_VOCAB, 3, END), 1.0)
        assert_same_ranking(results, expected, 3)
    greedy = decoder.greedy([group, single], max_length=5)
    generated = []
    for _ in range(5):
        token = 1 + int(np.argmax(next_log_probs(small_unilm, group, [generated])[0, 1:]))
        if token == END:
            break
        generated.append(token)
    assert greedy[0].token_ids == generated


# -------------------------------------------------------------------- sampling
def test_top_k_one_sampling_is_greedy(unilm):
    decoder = Decoder(unilm, end_id=END, max_length=6)
    sources = [[2, 5, 6, 7, 3], [2, 9, 3]]
    greedy = decoder.greedy(sources)
    sampled = decoder.sample(sources, n=3, top_k=1, seed=11)
    for best, samples in zip(greedy, sampled):
        assert all(sample.token_ids == best.token_ids for sample in samples)
        # float32 rounding only: 3 samples share their source's keys in one grouped
        # product, where greedy's single row has a product of its own
        np.testing.assert_allclose([s.log_prob for s in samples], best.log_prob, atol=2e-5)


def test_top_p_keeps_the_smallest_nucleus():
    probs = np.array([[0.05, 0.5, 0.15, 0.3]])
    cases = {0.5: [1], 0.7: [1, 3], 0.81: [1, 2, 3], 0.96: [0, 1, 2, 3], 1.0: [0, 1, 2, 3]}
    for top_p, nucleus in cases.items():
        kept = np.exp(filter_log_probs(np.log(probs), top_p=top_p))[0]
        assert np.flatnonzero(kept > 0).tolist() == nucleus
        np.testing.assert_allclose(kept[nucleus], probs[0, nucleus] / probs[0, nucleus].sum())
    # Top-k first, then top-p over the renormalised survivors: {1: .625, 3: .375}.
    kept = np.exp(filter_log_probs(np.log(probs), top_k=2, top_p=0.6))[0]
    assert np.flatnonzero(kept > 0).tolist() == [1]
    # Temperature 2 flattens: p ** 0.5 renormalised.
    tempered = np.exp(filter_log_probs(np.log(probs), temperature=2.0))[0]
    np.testing.assert_allclose(tempered, np.sqrt(probs[0]) / np.sqrt(probs[0]).sum())


def _filter_by_full_sort(log_probs, temperature, top_k, top_p):
    """Reference filter: rank the whole vocabulary (stable: ties by lower id)."""
    scores = np.asarray(log_probs, dtype=np.float64) / temperature
    order = np.argsort(-scores, axis=-1, kind="stable")
    ranked = np.take_along_axis(scores, order, axis=-1)
    keep = np.isfinite(ranked)
    if top_k is not None:
        keep[:, top_k:] = False
    probs = np.where(keep, np.exp(ranked), 0.0)
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1:
        keep &= np.cumsum(probs, axis=-1) - probs < top_p
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    filtered = np.zeros_like(probs)
    np.put_along_axis(filtered, order, probs, axis=-1)
    return filtered


def test_partial_selection_filter_and_draws_equal_a_full_sort():
    # Ties (rounded scores), removed tokens (-inf), flat and peaked rows, nuclei
    # larger than the first candidate set: the filter keeps exactly what ranking
    # the whole vocabulary keeps, and a draw inverts the same id-ordered CDF.
    rng = np.random.default_rng(0)
    for trial in range(120):
        vocab = int(rng.integers(2, 2000))
        scores = np.round(rng.normal(size=(3, vocab)) * rng.choice([0.05, 1, 6]),
                          int(rng.integers(0, 3)))
        scores[rng.random(scores.shape) < 0.1] = -np.inf
        scores[:, 0] = np.maximum(scores[:, 0], 0.0)
        top_k = [None, 1, 3, 50, 5000][trial % 5]
        top_p = [None, 0.3, 0.9, 0.995, 1.0, 0.6][trial % 6]
        temperature = [1.0, 0.5, 2.0][trial % 3]
        expected = _filter_by_full_sort(scores, temperature, top_k, top_p)
        found = np.exp(filter_log_probs(scores, temperature, top_k, top_p))
        assert np.array_equal(found > 0, expected > 0), (trial, top_k, top_p)
        np.testing.assert_allclose(found, expected, atol=1e-12)
        tokens = sampling_choice(np.random.default_rng(trial), temperature, top_k,
                                  top_p)(scores, np.ones(3, dtype=bool))
        draws = np.random.default_rng(trial).random(3)[:, None]
        cumulative = np.cumsum(expected, axis=-1)
        assert tokens.tolist() == (cumulative <= draws * cumulative[:, -1:]).sum(-1).tolist()


def test_nucleus_near_one_never_keeps_removed_tokens():
    # A nucleus of nearly all the mass can end in the last bucket of log-probability
    # (everything far below the peak, removed tokens included, where rounding leaves
    # the cumulative mass just under top_p): a removed token never gets mass, and
    # away from rounding the nucleus is what a full sort keeps.
    rng = np.random.default_rng(1)
    for top_p in (1 - 1e-16, 1 - 1e-15, 1 - 1e-9, 1 - 1e-6):
        scores = rng.normal(size=(4, 300)) * np.array([[0.1], [1], [10], [40]])
        scores[rng.random(scores.shape) < 0.3] = -np.inf
        found = np.exp(filter_log_probs(scores, top_p=top_p))
        assert not found[np.isinf(scores)].any()
        np.testing.assert_allclose(found.sum(axis=-1), 1.0, rtol=1e-12)
        if top_p <= 1 - 1e-9:
            expected = _filter_by_full_sort(scores, 1.0, None, top_p)
            assert np.array_equal(found > 0, expected > 0), top_p
            np.testing.assert_allclose(found, expected, atol=1e-12)


def test_filter_removes_nan_and_inf_scores_and_sampling_an_empty_row_fails():
    scores = np.log([[0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], [1.0, 1.0, 1.0, 1.0]])
    scores[0, 1] = np.nan
    scores[1, 2] = np.inf
    scores[2] = -np.inf
    for top_k, top_p in ((None, None), (None, 0.9), (3, None), (3, 0.8)):
        found = np.exp(filter_log_probs(scores, top_k=top_k, top_p=top_p))
        clean = np.where(np.isfinite(scores), scores, -np.inf)
        expected = _filter_by_full_sort(clean[:2], 1.0, top_k, top_p)
        np.testing.assert_allclose(found[:2], expected, atol=1e-12)
        assert not found[2].any()
    with pytest.raises(ValueError, match="no token left"):
        sampling_choice(np.random.default_rng(0), 1.0, None, 0.9)(scores, np.ones(3, bool))


def test_draws_at_the_ends_of_the_unit_interval_pick_kept_tokens():
    # A draw just below one lands where rounding can put the target past the last
    # token summed: the draw must still be a kept token (the last one), never a
    # removed token after it, and a draw of zero is the first kept token.
    rng = np.random.default_rng(3)
    for vocab in (7, 512, 513, 3000):
        scores = rng.normal(size=(2, vocab))
        scores[rng.random(scores.shape) < 0.5] = -np.inf
        scores[:, :2] = [[0.0, -np.inf], [-np.inf, 0.0]]
        scores[:, -3:] = -np.inf
        kept = [np.flatnonzero(np.isfinite(row)) for row in scores]

        class Draws:
            def __init__(self, value):
                self.value = value

            def random(self, size):
                return np.full(size, self.value)

        for top_p in (None, 0.999999):
            last = sampling_choice(Draws(1 - 2 ** -53), 1.0, None, top_p)(scores, np.ones(2, bool))
            first = sampling_choice(Draws(0.0), 1.0, None, top_p)(scores, np.ones(2, bool))
            assert first.tolist() == [row[0] for row in kept]
            assert all(np.isfinite(scores[row, token]) for row, token in enumerate(last))
            if top_p is None:
                assert last.tolist() == [row[-1] for row in kept]


def test_sampling_draws_from_the_nucleus_only():
    probs = np.array([0.05, 0.5, 0.15, 0.3])

    class Fixed(RerunDecoder):
        def predict(self, inputs, output_ids, states):
            return np.tile(probs, (len(output_ids), 1))

    samples = Fixed(end_id=None, max_length=1).random_sample(
        [np.array([1])], n=4000, top_p=0.7, seed=3)
    tokens = np.array([s.token_ids[0] for s in samples])
    assert set(tokens.tolist()) == {1, 3}
    assert abs((tokens == 1).mean() - 0.625) < 0.03


def test_same_seed_same_samples(unilm):
    decoder = Decoder(unilm, end_id=END, max_length=6)
    sources = [[2, 5, 6, 7, 3], [2, 9, 3]]
    settings = dict(n=4, temperature=1.5, top_k=10, top_p=0.95)
    first = decoder.sample(sources, seed=7, **settings)
    again = decoder.sample(sources, seed=7, **settings)
    other = decoder.sample(sources, seed=8, **settings)

    def ids(found):
        return [[s.token_ids for s in samples] for samples in found]

    assert ids(first) == ids(again)
    assert ids(first) != ids(other)
    assert len({tuple(t) for t in ids(first)[0]}) > 1  # the samples vary


# ------------------------------------------------------------------------ CLN
def test_cln_zero_init_then_trained_by_class(unilm):
    plain = unilm
    conditional = worker.build("unilm", conditional=True, seed=6,
                               randomise_conditions=False)
    plain_weights = {v.path: v for v in plain.model.weights}
    copied = 0
    for variable in conditional.model.weights:
        if variable.path in plain_weights:
            variable.assign(plain_weights[variable.path])
            copied += 1
    assert copied == len(plain_weights)
    source = [2, 5, 6, 7, 3]
    tokens = np.array([source + [8, 9]] * 2)
    segments = np.array([[0] * 5 + [1, 1]] * 2)
    classes = np.array([[0], [1]], "int32")
    # Direct calls: a predict function would be traced for each model (and again
    # after compile) for these two batches.
    expected = plain.model([tokens, segments], training=False)
    found = conditional.model([tokens, segments, classes], training=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(found),
                               keras.ops.convert_to_numpy(expected), atol=1e-5)

    # Class 0 answers 11, class 1 answers 12: only the CLN weights can tell them apart.
    train_tokens = np.array([source + [11, END], source + [12, END]] * 4, "int32")
    train_segments = np.array([[0] * 5 + [1, 1]] * 8, "int32")
    train_classes = np.array([[0], [1]] * 4, "int32")
    model = conditional.model
    # Eagerly: tracing the training step costs more than its ten steps (which leave
    # each class's answer above 0.7 over seeds 0-6 of the condition weights).
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=GenerationLoss("unilm", from_logits=True), run_eagerly=True)
    model.fit([train_tokens, train_segments, train_classes],
              generation_targets(train_tokens, train_segments), epochs=10, batch_size=8,
              shuffle=False,
              verbose=0)
    first = keras.ops.convert_to_numpy(model(
        [np.array([source] * 2), np.zeros((2, 5), "int32"), classes], training=False))[:, -1]
    probs = np.exp(log_softmax(first))
    assert probs[0, 11] > probs[1, 11] + 0.2 and probs[1, 12] > probs[0, 12] + 0.2
    decoder = Decoder(conditional, end_id=END, max_length=3)
    results = decoder.greedy([source, source], additional_inputs=[classes])
    assert [r.token_ids[:1] for r in results] == [[11], [12]]


# ------------------------------------------------------------------- guidance
def guided_next_log_probs(builder, source, label, negative_label, scale, prefixes):
    """Classifier-free guidance by full re-runs of a CLN model, combined in NumPy."""
    positive, negative = (rerun_log_probs(builder, source, prefixes,
                                          [np.full((1, 1), class_id, "int32")])
                          for class_id in (label, negative_label))
    return log_softmax(negative + scale * (positive - negative))


@pytest.fixture(scope="module")
def small_cln():
    return worker.build("unilm", conditional=True, seed=4, vocab_size=SMALL_VOCAB)


@pytest.mark.parametrize("scale", [2.5, 0.5])
def test_guided_beam_search_equals_brute_force(small_cln, scale):
    sources = [[2, 5, 6, 4, 3], [2, 7, 3]]
    labels, negatives = np.array([[0], [1]], "int32"), np.array([[1], [0]], "int32")
    decoder = Decoder(small_cln, end_id=END, max_length=3)
    found = decoder.beam_search(sources, beam_size=36, num_return=3,
                                additional_inputs=[labels], guidance_scale=scale,
                                negative_additional_inputs=[negatives])
    plain = decoder.beam_search(sources, beam_size=36, num_return=3,
                                additional_inputs=[labels])
    for index, (source, results) in enumerate(zip(sources, found)):
        expected = rank(enumerate_sequences(
            lambda prefixes: guided_next_log_probs(
                small_cln, source, labels[index, 0], negatives[index, 0], scale, prefixes),
            SMALL_VOCAB, 3, END), 1.0)
        assert_same_ranking(results, expected, 3)
    # Guidance changes the scores (it would be vacuous if the classes agreed).
    assert [r.score for r in found[0]] != [r.score for r in plain[0]]


def test_guidance_with_negative_sources_and_validation(small_cln):
    source, negative = [2, 5, 6, 3], [2, 7, 3]
    classes = np.array([[1]], "int32")
    decoder = Decoder(small_cln, end_id=END, max_length=4)
    greedy = decoder.greedy([source], additional_inputs=[classes], guidance_scale=3.0,
                            negative_sources=[negative])[0]
    generated = []
    for _ in range(4):
        positive = rerun_log_probs(small_cln, source, [generated], [classes])[0]
        # The negative source is a different prompt: its next token comes after it.
        negative_row = rerun_log_probs(small_cln, negative, [generated], [classes])[0]
        guided = log_softmax(negative_row + 3.0 * (positive - negative_row))
        token = 1 + int(np.argmax(guided[1:]))
        if token == END:
            break
        generated.append(token)
    assert greedy.token_ids == generated
    cases = [
        (dict(guidance_scale=2.0), "needs something to steer away from"),
        (dict(guidance_scale=float("nan"), negative_sources=[negative]), "finite number"),
        (dict(guidance_scale=2.0, negative_sources=[negative, negative]),
         "negative_sources has 2 sources; expected one per source \\(1\\)"),
        (dict(guidance_scale=2.0, negative_additional_inputs=[np.zeros((3, 1))]),
         "expected one per source"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            decoder.greedy([source], additional_inputs=[classes], **kwargs)
    with pytest.raises(TypeError, match="negative_sources"):
        decoder.sample([source], additional_inputs=[classes], negative_source=[negative])


def test_guidance_never_boosts_what_the_positive_rules_out():
    from bert4x.decoding import _guided
    with np.errstate(divide="ignore"):
        positive = np.log(np.array([[0.5, 0.5, 0.0, 0.0]]))
        negative = np.log(np.array([[0.9, 0.0, 0.1, 0.0]]))
    guided = _guided(positive, negative, 2.0)
    assert np.isneginf(guided[0, 2:]).all()
    # Token 1 is impossible under the negative: charged the row's lowest finite
    # log-probability (log 0.1) instead of -inf, which would give +inf.
    expected = np.array([np.log(0.1) + 2 * (np.log(0.5) - np.log(0.1)),
                         np.log(0.9) + 2 * (np.log(0.5) - np.log(0.9))])[::-1]
    np.testing.assert_allclose(guided[0, :2], expected - np.log(np.exp(expected).sum()))


# ----------------------------------------------------------------------- loss
def test_generation_loss_matches_numpy():
    rng = np.random.default_rng(0)
    token_ids = np.array([[2, 5, 6, 3, 7, 8, 3, 0], [2, 9, 3, 4, 3, 0, 0, 0]])
    segment_ids = np.array([[0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0, 0, 0]])
    logits = rng.normal(size=(2, 8, 10)).astype("float32")
    for application in ("unilm", "lm"):
        total, count = 0.0, 0
        for b in range(2):
            for i in range(7):
                target = token_ids[b, i + 1]
                counted = target != 0 and (application == "lm" or segment_ids[b, i + 1] == 1)
                if counted:
                    total -= log_softmax(logits[b, i])[target]
                    count += 1
        expected = total / count
        value = generation_loss(token_ids, segment_ids, logits, application, from_logits=True)
        np.testing.assert_allclose(float(value), expected, rtol=1e-5)
        probs = np.exp(log_softmax(logits)).astype("float32")
        np.testing.assert_allclose(
            float(generation_loss(token_ids, segment_ids, probs, application)), expected,
            rtol=1e-4)
        as_keras = GenerationLoss(application, from_logits=True)(
            generation_targets(token_ids, segment_ids), logits)
        np.testing.assert_allclose(float(as_keras), expected, rtol=1e-5)
    weights = keras.ops.convert_to_numpy(generation_loss_weights(token_ids, segment_ids))
    np.testing.assert_array_equal(weights, [[0, 0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0, 0]])


# ---------------------------------------------------------------------- errors
def test_bad_settings_raise_clear_errors(unilm):
    decoder = Decoder(unilm, end_id=END, max_length=4)
    source = [[2, 5, 3]]
    cases = [
        (lambda: decoder.beam_search(source, beam_size=0), "beam_size"),
        (lambda: decoder.beam_search(source, beam_size=2, num_return=3), "num_return"),
        (lambda: decoder.greedy(source, max_length=2, min_length=3),
         r"max_length \(2\) is smaller than min_length \(3\)"),
        (lambda: decoder.greedy([[]]), "source 0 is empty"),
        (lambda: decoder.greedy([]), "non-empty"),
        (lambda: decoder.greedy([[2, 5, 3], [2, 99, 3]]), "source 1 has ids outside"),
        (lambda: decoder.greedy([[2] * 30], max_length=20),
         "30 tokens plus max_length 20 .* 49 positions .*; the position table has 40"),
        (lambda: Decoder(unilm, end_id=500), "end_id 500"),
        (lambda: decoder.sample(source, top_p=0.0), "top_p"),
        (lambda: decoder.sample(source, top_p=1.5), "top_p"),
        (lambda: decoder.sample(source, top_k=0), "top_k"),
        (lambda: decoder.sample(source, temperature=0), "temperature"),
        (lambda: decoder.sample(source, n=0), "n \\(samples"),
        (lambda: decoder.greedy(source, additional_inputs=[np.zeros((1, 1))]),
         "0 additional inputs"),
        (lambda: decoder.greedy(source, constraint=lambda i, p: [SMALL_VOCAB + 100]),
         "outside the vocabulary"),
        (lambda: decoder.greedy(source, constraint=lambda i, p: []), "no token is allowed"),
        (lambda: Decoder(BERT(worker.tiny_config()), end_id=END), "application='unilm'"),
    ]
    for action, message in cases:
        with pytest.raises(ValueError, match=message):
            action()


def test_predict_route_checks_its_output():
    class Wrong(RerunDecoder):
        def predict(self, inputs, output_ids, states):
            return np.ones((1, 5)) / 5

    with pytest.raises(ValueError, match=r"shape \[3, vocab\]"):
        Wrong(end_id=1, max_length=3).beam_search([np.array([1])], beam_size=3)
    with pytest.raises(NotImplementedError):
        RerunDecoder(end_id=1).greedy([np.array([1])])
    result = GenerationResult([4, 5], -1.0, -2.0, True)
    assert len(result) == 2


# ---------------------------------------------------------- other backends
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_cache_and_greedy_on_other_backends(other_backends, backend):
    output, _ = other_backends[backend].communicate(timeout=600)
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, f"the {backend} worker failed:\n{output[-3000:]}"
    results = json.loads(lines[-1][len("RESULT "):])
    assert results["backend"] == backend
    for key, value in results.items():
        if key.startswith("cache:"):
            assert value < 1e-4, (key, value)
        elif key.startswith("greedy:"):
            assert value is True, key
    assert len(results) == 9 + 2 * len(worker.FAMILY_CONFIGS) + 2 * len(worker.T5_CONFIGS)


def test_start_id_is_what_the_first_predict_sees():
    class LastTokenPlusOne(RerunDecoder):
        rtype = "logits"

        def predict(self, inputs, output_ids, states):
            # bert4keras scripts read output_ids[:, -1], which needs a start token.
            logits = np.full((len(output_ids), 6), -5.0)
            logits[np.arange(len(output_ids)), (output_ids[:, -1] + 1) % 6] = 5.0
            return logits

    decoder = LastTokenPlusOne(end_id=5, max_length=8, start_id=2)
    assert decoder.greedy([np.array([0])]).token_ids == [3, 4]
    assert decoder.beam_search([np.array([0])], beam_size=2)[0].token_ids == [3, 4]
    assert [r.token_ids for r in decoder.random_sample([np.array([0])], 2, seed=0)] == [[3, 4]] * 2
    with pytest.raises(ValueError, match="start_id"):
        LastTokenPlusOne(end_id=5, start_id="[CLS]")
