"""``bert4x.search.NgramCopyConstraint``: its allowed sets against brute force, by hand,
and through the beam search of ``bert4x.search`` (every result copies a span); the beam
search's candidate selection (``top_candidates``) against a full sort."""

import random

import numpy as np

from bert4x.search import NgramCopyConstraint, beam_search, top_candidates


def _brute_force_allowed(passages, prefix, end_id):
    allowed = {end_id}
    n = len(prefix)
    for passage in passages:
        for start in range(len(passage) - n):
            if list(passage[start:start + n]) == list(prefix):
                allowed.add(passage[start + n])
    return allowed


def test_ngram_constraint_matches_brute_force():
    rng = random.Random(0)
    end_id = 99
    for _ in range(30):
        passages = [[rng.randrange(1, 6) for _ in range(rng.randrange(1, 12))]
                    for _ in range(rng.randrange(1, 4))]
        constraint = NgramCopyConstraint(passages, end_id)
        # Prefixes that occur (walks along allowed tokens) and random ones.
        for _ in range(20):
            prefix = []
            for _ in range(rng.randrange(0, 6)):
                options = sorted(constraint.allowed(prefix) - {end_id})
                if not options:
                    break
                prefix.append(rng.choice(options))
            assert constraint.allowed(prefix) == _brute_force_allowed(passages, prefix, end_id)
            noise = [rng.randrange(1, 6) for _ in range(rng.randrange(1, 4))]
            assert constraint.allowed(noise) == _brute_force_allowed(passages, noise, end_id)


def test_ngram_constraint_example():
    constraint = NgramCopyConstraint([[5, 6, 7], [6, 8]], end_id=2)
    assert constraint.allowed([]) == {2, 5, 6, 7, 8}
    assert constraint.allowed([6]) == {2, 7, 8}
    assert constraint.allowed([5, 6, 7]) == {2}
    assert constraint.allowed([7, 5]) == {2}
    assert constraint.occurrences([6]) == [(0, 1), (1, 0)]


class _RandomScorer:
    """Fixed random next-token log-probabilities per step (the search's scorer API)."""

    banned_ids = ()

    def __init__(self, units, vocab, seed):
        self.rng = np.random.default_rng(seed)
        self.units, self.vocab = units, vocab

    def _scores(self):
        logits = self.rng.normal(size=(self.units, self.vocab))
        return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))

    def first(self):
        return self._scores()

    def next(self, parents, tokens):
        return self._scores()


def _contiguous_in(tokens, sequences):
    return any(list(sequence[start:start + len(tokens)]) == list(tokens)
               for sequence in sequences for start in range(len(sequence) - len(tokens) + 1))


def test_beam_search_under_the_constraint_copies_a_span():
    """Whatever the model prefers, every result is a contiguous piece of its own
    source's sequences (the constraint of source i is consulted for source i)."""
    end_id, vocab, beam = 1, 12, 3
    sources = [[[2, 3, 4, 5, 6], [7, 8]], [[9, 10, 11], [3, 9, 10]]]
    constraints = [NgramCopyConstraint(sequences, end_id) for sequences in sources]
    for seed in range(5):
        results = beam_search(_RandomScorer(len(sources) * beam, vocab, seed), len(sources),
                              beam_size=beam, max_length=6, min_length=0, end_id=end_id,
                              length_penalty=1.0, num_return=beam,
                              constraint=lambda i, prefix: constraints[i].allowed(prefix),
                              early_stopping=True)
        for sequences, found in zip(sources, results):
            assert found
            for result in found:
                tokens = [t for t in result.token_ids if t != end_id]
                assert _contiguous_in(tokens, sequences), (tokens, sequences)


def test_top_candidates_equal_a_full_sort():
    """Long rows (found through block maxima) and short ones (sorted whole) give a
    full sort's best, ties by index; ties, -inf and rows of few finite values included."""
    rng = np.random.default_rng(0)
    for trial in range(60):
        rows, width = int(rng.integers(1, 4)), int(rng.integers(1, 9))
        size = int(rng.choice([rng.integers(width, 600), rng.integers(9000, 30000)]))
        candidates = np.round(rng.normal(size=(rows, size)), int(rng.integers(0, 3)))
        candidates[rng.random(candidates.shape) < rng.choice([0.3, 0.999])] = -np.inf
        found = top_candidates(candidates, width)
        for row in range(rows):
            expected = sorted(range(size), key=lambda i: (-candidates[row, i], i))[:width]
            assert found[row].tolist() == expected, trial
