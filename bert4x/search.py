"""The search algorithms of bert4x's decoders: greedy, beam search and sampling.

The functions here see only a *scorer* (see :mod:`bert4x.decoding`): ``first()``
gives the next-token log-probabilities ``[units, vocab]`` after the sources,
``next(parents, tokens)`` reorders the units, appends ``tokens`` and gives the
following ones. They also hold the checks of the decoding settings and the
top-k / top-p filtering (:func:`filter_log_probs`), and a ready-made constraint for
the decoders' ``constraint`` hook: :class:`NgramCopyConstraint`, which keeps the
output a contiguous piece of given token sequences (extractive answers).
"""

import dataclasses

import numpy as np

__all__ = ["GenerationResult", "filter_log_probs", "NgramCopyConstraint"]


@dataclasses.dataclass
class GenerationResult:
    """One generated sequence.

    Attributes:
        token_ids: the generated ids, the end token excluded.
        score: the ranking score (``log_prob / length ** length_penalty`` for beam
            search, ``log_prob`` otherwise).
        log_prob: the summed log-probability of the generated tokens, the end
            token included.
        ended: whether the sequence ended with the end token (otherwise it
            stopped at ``max_length``).

    Example:
        >>> result = GenerationResult([5, 9], score=-0.7, log_prob=-2.1, ended=True)
        >>> len(result)
        2
    """

    token_ids: list
    score: float
    log_prob: float
    ended: bool

    def __len__(self):
        return len(self.token_ids)


# --------------------------------------------------------------------- settings
def is_int(value):
    """An integer, but not a bool (``beam_size=True`` is a mistake, not 1)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_lengths(max_length, min_length):
    if not is_int(max_length) or max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
    if not is_int(min_length) or min_length < 0:
        raise ValueError(f"min_length must be a non-negative integer, got {min_length!r}")
    if max_length < min_length:
        raise ValueError(f"max_length ({max_length}) is smaller than min_length "
                         f"({min_length})")


def check_end_id(end_id, vocab_size):
    if end_id is None:
        return None
    if not is_int(end_id) or not 0 <= end_id < vocab_size:
        raise ValueError(f"end_id {end_id!r} is not a token id of the vocabulary "
                         f"(0..{vocab_size - 1})")
    return int(end_id)


def check_sampling(n, temperature, top_k, top_p):
    if not is_int(n) or n < 1:
        raise ValueError(f"n (samples per source) must be a positive integer, got {n!r}")
    _check_filter(temperature, top_k, top_p)


def _check_filter(temperature, top_k, top_p):
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def check_beam(beam_size, num_return, length_penalty):
    if not is_int(beam_size) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive integer, got {beam_size!r}")
    if not is_int(num_return) or not 1 <= num_return <= beam_size:
        raise ValueError(f"num_return must be between 1 and beam_size ({beam_size}), "
                         f"got {num_return!r}")
    if (not isinstance(length_penalty, (int, float, np.number))
            or isinstance(length_penalty, bool) or not np.isfinite(length_penalty)):
        raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")


# ----------------------------------------------------------------- filtering
def filter_log_probs(log_probs, temperature=1.0, top_k=None, top_p=None):
    """Temperature, then top-k, then top-p (nucleus) filtering of distributions.

    Top-k keeps the ``k`` most likely tokens (ties broken by the lower id, as
    ``argmax`` does). Top-p then keeps the smallest set of most likely tokens
    whose probability (after temperature and top-k) reaches ``top_p``: a token
    is kept when the probability of the tokens ranked before it is below
    ``top_p``, so the most likely token always stays.

    Args:
        log_probs: ``[rows, vocab]`` log-probabilities (or logits).
        temperature: divides the log-probabilities; < 1 sharpens.
        top_k: number of tokens kept, or None.
        top_p: nucleus mass in (0, 1], or None.

    Returns:
        ``[rows, vocab]`` normalised log-probabilities, ``-inf`` where removed.

    Example:
        >>> p = np.log([[0.5, 0.3, 0.15, 0.05]])
        >>> np.exp(filter_log_probs(p, top_p=0.7)).round(3)
        array([[0.625, 0.375, 0.   , 0.   ]])
    """
    _check_filter(temperature, top_k, top_p)
    scores = np.asarray(log_probs, dtype=np.float64) / temperature
    filtered = np.full_like(scores, -np.inf)
    for row, row_scores in enumerate(scores):
        probs, peak, kept, _ = _kept_probs(row_scores, top_k, top_p)
        if kept is None:
            kept = np.isfinite(row_scores)
        else:
            probs = probs * kept
        if kept.any():
            log_mass = peak + np.log(probs.sum())
            filtered[row, kept] = row_scores[kept] - log_mass
    return filtered


def _kept_probs(scores, top_k, top_p):
    """One row's filter: the unnormalised probabilities of the kept tokens.

    Nothing is argsorted: the kept tokens are those at or above a threshold score
    found by partial selection (``np.partition``, linear in the vocabulary) for
    top-k, and by the masses of buckets of log-probability for top-p over the
    whole row, so neither a peaked nor a flat distribution pays for sorting the
    vocabulary. The row is exponentiated once and every pass works in place on
    one array: a flat distribution's nucleus is most of the vocabulary, and in
    float64 an ``exp`` over it costs as much as sorting it.

    Returns:
        ``(probs, peak, kept, count)``: ``exp(score - peak)`` (0 for removed
        tokens; NaN and +inf scores count as removed), the row's largest finite
        score, the boolean mask of the kept tokens, or ``None`` when every finite
        score is kept, and the number of kept tokens (``None`` with ``kept``).
    """
    peak = scores.max()
    if not np.isfinite(peak):  # a NaN or +inf somewhere, or nothing left
        scores = np.where(np.isfinite(scores), scores, -np.inf)
        peak = scores.max()
        if peak == -np.inf:
            return np.zeros(len(scores)), 0.0, np.zeros(len(scores), dtype=bool), 0
    probs = scores - peak
    whole_nucleus = top_k is None and top_p is not None and top_p < 1
    buckets = _bucket_ids(probs) if whole_nucleus else None
    np.exp(probs, out=probs)
    if whole_nucleus:
        threshold, count = _nucleus_by_buckets(scores, probs, peak, buckets, top_p)
    elif top_k is not None:
        threshold, count = _top_k_threshold(scores, probs, top_k, top_p)
    else:
        return probs, peak, None, None
    # A threshold of -inf (fewer tokens left than top-k asks) keeps no removed token.
    kept = scores >= max(threshold, np.finfo(np.float64).min)
    found = int(np.count_nonzero(kept))
    if found > count:  # ties at the threshold: the lower ids stay
        tied = np.flatnonzero(scores == threshold)
        kept[tied[len(tied) - (found - count):]] = False
    return probs, peak, kept, min(found, count)


def _top_k_threshold(scores, probs, top_k, top_p):
    """The lowest kept score and the number of kept tokens under top-k (then top-p)."""
    keep = min(top_k, len(scores))
    if top_p is not None and top_p < 1:
        total = _largest(probs, keep, ordered=False).sum()
        keep = max(_nucleus_size(probs, keep, total, top_p), 1)
    return np.partition(scores, len(scores) - keep)[len(scores) - keep], keep


def _largest(values, count, ordered=True):
    """The ``count`` largest values, in decreasing order (any order if not ``ordered``)."""
    if count < len(values):
        values = np.partition(values, len(values) - count)[len(values) - count:]
    return np.sort(values)[::-1] if ordered else values


# Buckets of log-probability below the row's peak for the nucleus of a whole row:
# 1/16 nat wide, the last one holding everything 64 nats or more below the peak.
_BUCKETS, _BUCKETS_PER_NAT = 1024, 16.0


def _bucket_ids(below_peak):
    """The bucket of each score, from ``score - peak`` (<= 0, -inf where removed)."""
    buckets = below_peak * -_BUCKETS_PER_NAT
    np.minimum(buckets, _BUCKETS - 1, out=buckets)
    return buckets.astype(np.intp)


def _nucleus_by_buckets(scores, probs, peak, buckets, top_p):
    """Top-p over a whole row: the lowest kept score and the number of kept tokens.

    The mass of each bucket of log-probability is summed in one pass; only the
    tokens of the bucket where the cumulative mass reaches ``top_p`` are sorted,
    so a flat distribution, whose nucleus is most of the vocabulary, costs no
    sort of the vocabulary either.
    """
    total = probs.sum()
    sizes = np.bincount(buckets, minlength=_BUCKETS)
    cumulative = np.cumsum(np.bincount(buckets, weights=probs, minlength=_BUCKETS) / total)
    # The first bucket whose cumulative mass reaches top_p: every token above it
    # is kept, none below it, and within it a token is kept while the mass ranked
    # before it is below top_p (the first one always is). Rounding can leave the
    # whole row under a top_p near one; then the last bucket holding tokens ends it.
    crossing = int(np.count_nonzero(cumulative < top_p))
    crossing = int(np.flatnonzero(sizes[:crossing + 1])[-1])
    member_scores = np.sort(scores[buckets == crossing])[::-1]
    ranked = np.exp(member_scores - peak) / total
    before = (cumulative[crossing - 1] if crossing else 0.0) + np.cumsum(ranked) - ranked
    inside = max(int(np.count_nonzero(before < top_p)), 1)
    return member_scores[inside - 1], int(sizes[:crossing].sum()) + inside


def _nucleus_size(probs, keep, total, top_p):
    """How many of the ``keep`` most likely tokens top-p keeps.

    ``probs`` are unnormalised probabilities and ``total`` the mass of the ``keep``
    most likely. A token stays while the probability ranked before it is below
    ``top_p``; the candidates grow (64, 1024, ...) until the nucleus ends among
    them, or straight to all tokens when they hold too little mass to be near it
    (a flat distribution).
    """
    size = min(64, keep)
    while True:
        ranked = _largest(probs, size) / total
        cumulative = np.cumsum(ranked)
        inside = int(np.count_nonzero(cumulative - ranked < top_p))
        if inside < size or size == keep:
            return inside
        size = keep if cumulative[-1] < top_p / 16 else min(size * 16, keep)


# Tokens summed together when a draw looks for its token: the draw's chunk is found
# from the chunks' masses, and only that chunk is summed token by token.
_CDF_CHUNK = 512


def _draw(probs, draw):
    """The first token (in id order) whose cumulative probability exceeds
    ``draw * total``: a draw from the unnormalised ``probs``."""
    starts = np.arange(0, len(probs), _CDF_CHUNK)
    chunk_cumulative = np.cumsum(np.add.reduceat(probs, starts))
    target = draw * chunk_cumulative[-1]
    chunk = min(int(np.count_nonzero(chunk_cumulative <= target)), len(starts) - 1)
    start = starts[chunk]
    before = chunk_cumulative[chunk - 1] if chunk else 0.0
    index = start + int(np.count_nonzero(
        before + np.cumsum(probs[start:start + _CDF_CHUNK]) <= target))
    if index >= len(probs) or not probs[index]:  # rounding past the chunk's last token
        index = int(np.flatnonzero(probs[:index])[-1])
    return index


def logsumexp(x, axis, keepdims=False):
    peak = np.max(x, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - peak), axis=axis, keepdims=True)) + peak
    return out if keepdims else np.squeeze(out, axis=axis)


def to_log_probs(scores, kind):
    scores = np.asarray(scores, dtype=np.float64)
    if kind == "probas":
        with np.errstate(divide="ignore"):
            return np.log(scores)
    if kind == "logits":
        with np.errstate(invalid="ignore"):  # inf logits: NaN, named by the step rules
            return scores - logsumexp(scores, axis=-1, keepdims=True)
    if kind == "log_probs":
        return scores
    raise ValueError(f"rtype must be 'probas', 'logits' or 'log_probs', got {kind!r}")


# ----------------------------------------------------------------- step rules
class _StepRules:
    """Blocks the end token before ``min_length`` and applies the constraint hook."""

    def __init__(self, end_id, min_length, constraint, unit_source, banned_ids=()):
        self.end_id = end_id
        self.banned_ids = list(banned_ids)
        self.min_length = min_length
        self.constraint = constraint
        self.unit_source = unit_source
        self.vocab_size = None

    def apply(self, log_probs, step, prefixes, live):
        """The rules applied to the scores of every unit.

        Raises:
            ValueError: a live unit's scores hold NaN or +inf (the model is
                broken), or the rules leave a live unit no token at all.
        """
        log_probs = np.array(log_probs, dtype=np.float64)
        self.vocab_size = log_probs.shape[1]
        self._check_scores(log_probs, step, prefixes, live)
        if self.banned_ids:
            log_probs[:, self.banned_ids] = -np.inf
        if self.end_id is not None and step < self.min_length:
            log_probs[:, self.end_id] = -np.inf
        if self.constraint is not None:
            for unit in np.flatnonzero(live):
                allowed = self._allowed(self.unit_source[unit], prefixes[unit])
                log_probs[unit, ~allowed] = -np.inf
        stuck = live & ~(log_probs.max(axis=1) > -np.inf)  # every token ruled out
        if stuck.any():
            unit = int(np.flatnonzero(stuck)[0])
            raise ValueError(
                f"no token is allowed after prefix {prefixes[unit]} of source "
                f"{self.unit_source[unit]} (the constraint and min_length exclude all)")
        return log_probs

    def _check_scores(self, log_probs, step, prefixes, live):
        # -inf is a token the model rules out; NaN or +inf is a broken model. A row's
        # maximum is NaN when the row holds one, so one reduction finds both.
        broken = live & ~(log_probs.max(axis=1) < np.inf)
        if broken.any():
            unit = int(np.flatnonzero(broken)[0])
            raise ValueError(
                f"the model produced NaN/inf scores at step {step} (source "
                f"{self.unit_source[unit]}, prefix {prefixes[unit]}); check its weights "
                "and config (e.g. layer_norm_eps) and the inputs")

    def _allowed(self, source_index, prefix):
        result = self.constraint(int(source_index), list(prefix))
        result = np.asarray(list(result) if not hasattr(result, "shape") else result)
        if result.dtype == bool:
            if result.shape != (self.vocab_size,):
                raise ValueError(f"the constraint returned a boolean mask of shape "
                                 f"{result.shape}; expected ({self.vocab_size},)")
            return result
        mask = np.zeros(self.vocab_size, dtype=bool)
        if result.size:
            ids = result.astype(np.int64).ravel()
            bad = ids[(ids < 0) | (ids >= self.vocab_size)]
            if bad.size:
                raise ValueError(f"the constraint allowed ids outside the vocabulary "
                                 f"(0..{self.vocab_size - 1}): {bad[:10].tolist()}")
            mask[ids] = True
        return mask


class NgramCopyConstraint:
    """Allow only the tokens that keep the output a contiguous n-gram of given sequences.

    A generated prefix may grow by token ``t`` when ``prefix + [t]`` occurs
    contiguously in at least one of the sequences; the end token is always allowed
    (it closes the output). Decoding an answer under it copies a span of one of the
    passages. The occurrences of each prefix are found from those of the prefix one
    shorter and memoised, so a step costs time in the number of occurrences, not in
    the sequences' length.

    Use one per source with a decoder's ``constraint`` hook, which passes the source
    index and the prefix: ``constraint=lambda index, prefix:
    constraints[index].allowed(prefix)``.

    Args:
        sequences: token-id sequences to copy from (e.g. passages, without special
            tokens).
        end_id: the id that ends the output.

    Example:
        >>> constraint = NgramCopyConstraint([[5, 6, 7], [6, 8]], end_id=2)
        >>> sorted(constraint.allowed([6]))
        [2, 7, 8]
        >>> sorted(constraint.allowed([5, 6, 7]))  # nothing follows: only the end
        [2]
    """

    def __init__(self, sequences, end_id):
        self.sequences = [tuple(int(t) for t in sequence) for sequence in sequences]
        self.end_id = int(end_id)
        # prefix -> [(sequence index, start)] of its occurrences.
        self._occurrences = {(): [(p, s) for p, sequence in enumerate(self.sequences)
                                  for s in range(len(sequence))]}

    def occurrences(self, prefix):
        """``[(sequence index, start)]`` of every place where ``prefix`` occurs."""
        prefix = tuple(int(t) for t in prefix)
        known = self._occurrences.get(prefix)
        if known is not None:
            return known
        shorter = self.occurrences(prefix[:-1])
        offset, last = len(prefix) - 1, prefix[-1]
        found = [(p, s) for p, s in shorter if s + offset < len(self.sequences[p])
                 and self.sequences[p][s + offset] == last]
        self._occurrences[prefix] = found
        return found

    def allowed(self, prefix):
        """The set of token ids allowed after ``prefix`` (the end id included)."""
        prefix = tuple(int(t) for t in prefix)
        length = len(prefix)
        allowed = {self.sequences[p][s + length] for p, s in self.occurrences(prefix)
                   if s + length < len(self.sequences[p])}
        allowed.add(self.end_id)
        return allowed


# ----------------------------------------------------------------- algorithms
_BLOCK = 256  # candidates per block whose maximum top_candidates compares


def top_candidates(candidates, width):
    """Column indices ``[rows, width]`` of each row's ``width`` best candidates,
    by score, ties by index (so results are deterministic).

    A long row (beams times a large vocabulary: 4 x 50257 for GPT-2) is not
    sorted whole: with ``t`` the ``width``-th largest of its blocks' maxima, at
    least ``width`` candidates are ``>= t``, so its best ones are among those,
    which are few. A short row, or one with fewer than ``width`` finite blocks,
    is sorted whole.

    Example:
        >>> top_candidates(np.array([[0.1, 0.7, 0.2, 0.7]]), 2).tolist()
        [[1, 3]]
    """
    rows, size = candidates.shape
    starts = np.arange(0, size, _BLOCK)
    thresholds = np.full(rows, -np.inf)
    if len(starts) >= 4 * width:
        maxima = np.maximum.reduceat(candidates, starts, axis=1)
        thresholds = np.partition(maxima, len(starts) - width, axis=1)[:, len(starts) - width]
    top = np.empty((rows, width), dtype=np.int64)
    for row in range(rows):
        if np.isfinite(thresholds[row]):
            kept = np.flatnonzero(candidates[row] >= thresholds[row])
        else:
            kept = np.arange(size)
        top[row] = kept[np.lexsort((kept, -candidates[row, kept]))[:width]]
    return top


def beam_search(scorer, num_sources, beam_size, max_length, min_length, end_id,
                 length_penalty, num_return, constraint, early_stopping):
    """Beam search over ``scorer``; returns ``num_return`` results per source.

    Each step takes the ``2 * beam_size`` best extensions of the live beams of a
    source; extensions with the end token go to that source's finished pool
    (the ``beam_size`` best are kept), the best ``beam_size`` others stay live.

    Early stopping (exact, not Hugging Face's heuristic): a live beam with
    summed log-probability ``s`` after ``c`` tokens can only lose probability,
    so its final score is at most ``s / max_length ** lp`` if ``lp > 0``,
    ``s`` if ``lp == 0`` and ``s / (c + 1) ** lp`` if ``lp < 0``. A source stops
    when its pool holds ``num_return`` hypotheses and no live beam's bound
    exceeds the ``num_return``-th best finished score (or no beam is live):
    no live beam can then change the returned results.
    """
    K, N = beam_size, num_sources
    units = N * K
    unit_source = np.repeat(np.arange(N), K)
    rules = _StepRules(end_id, min_length, constraint, unit_source, scorer.banned_ids)
    sums = np.full((N, K), -np.inf)
    sums[:, 0] = 0.0  # the K copies start identical: only one may extend
    prefixes = [[] for _ in range(units)]
    pools = [[] for _ in range(N)]
    done = np.zeros(N, dtype=bool)

    def score(total, length):
        return total / (length ** length_penalty)

    def add(pool, hypothesis):
        pool.append(hypothesis)
        pool.sort(key=lambda h: -h.score)
        del pool[K:]

    log_probs = scorer.first()
    for step in range(max_length):
        live = np.isfinite(sums).ravel() & np.repeat(~done, K)
        log_probs = rules.apply(log_probs, step, prefixes, live)
        vocab = log_probs.shape[1]
        candidates = (sums.reshape(units, 1) + log_probs).reshape(N, K * vocab)
        candidates[done] = -np.inf
        top = top_candidates(candidates, min(2 * K, K * vocab))
        last_step = step == max_length - 1
        new_sums = np.full((N, K), -np.inf)
        parents = np.repeat(np.arange(N) * K, K)
        tokens = np.zeros(units, dtype=np.int64)
        for source in np.flatnonzero(~done):
            filled = 0
            for flat in top[source]:
                total = candidates[source, flat]
                if not np.isfinite(total) or filled == K:
                    break
                beam, token = divmod(int(flat), vocab)
                unit = source * K + beam
                if end_id is not None and token == end_id:
                    add(pools[source], GenerationResult(
                        list(prefixes[unit]), float(score(total, step + 1)),
                        float(total), True))
                    continue
                if last_step:
                    add(pools[source], GenerationResult(
                        prefixes[unit] + [token], float(score(total, step + 1)),
                        float(total), False))
                    filled += 1
                    continue
                new_sums[source, filled] = total
                parents[source * K + filled] = unit
                tokens[source * K + filled] = token
                filled += 1
            if last_step:
                done[source] = True
                continue
            pool = pools[source]
            best_live = new_sums[source, 0]
            if not np.isfinite(best_live):
                done[source] = True
            elif early_stopping and len(pool) >= num_return:
                length = step + 1
                if length_penalty > 0:
                    bound = score(best_live, max_length)
                elif length_penalty < 0:
                    bound = score(best_live, length + 1)
                else:
                    bound = best_live
                done[source] = bound <= pool[num_return - 1].score
        if done.all():
            break
        prefixes = [prefixes[parent] + [int(token)] for parent, token in zip(parents, tokens)]
        sums = new_sums
        log_probs = scorer.next(parents, tokens)
    return [pool[:num_return] for pool in pools]


def ancestral(scorer, num_sources, copies, max_length, min_length, end_id, constraint,
               choose):
    """Greedy decoding or sampling: every unit extends itself with ``choose``."""
    units = num_sources * copies
    unit_source = np.repeat(np.arange(num_sources), copies)
    rules = _StepRules(end_id, min_length, constraint, unit_source, scorer.banned_ids)
    prefixes = [[] for _ in range(units)]
    totals = np.zeros(units)
    live = np.ones(units, dtype=bool)
    ended = np.zeros(units, dtype=bool)
    identity = np.arange(units)
    log_probs = scorer.first()
    for step in range(max_length):
        ruled = rules.apply(log_probs, step, prefixes, live)
        ruled[~live] = 0.0  # finished units keep running; what they pick is ignored
        tokens = choose(ruled, live)
        for unit in np.flatnonzero(live):
            token = int(tokens[unit])
            totals[unit] += log_probs[unit, token]
            if end_id is not None and token == end_id:
                live[unit] = False
                ended[unit] = True
            else:
                prefixes[unit].append(token)
        if not live.any() or step == max_length - 1:
            break
        log_probs = scorer.next(identity, tokens)
    results = [GenerationResult(prefixes[u], float(totals[u]), float(totals[u]),
                                bool(ended[u])) for u in range(units)]
    return [results[i * copies:(i + 1) * copies] for i in range(num_sources)]


def greedy_choice(log_probs, live):
    return np.argmax(log_probs, axis=1)


def sampling_choice(rng, temperature, top_k, top_p):
    """Draw one token per live row by inverting the filtered CDF (in id order).

    One uniform draw per row, live or not, so that a seed gives the same draws
    whichever rows are still running; only the kept tokens are ever summed.
    """
    def choose(log_probs, live):
        draws = rng.random(len(log_probs))
        tokens = np.zeros(len(log_probs), dtype=np.int64)
        for row in np.flatnonzero(live):
            probs, _, kept, count = _kept_probs(
                np.asarray(log_probs[row], np.float64) / temperature, top_k, top_p)
            if count == 0:
                raise ValueError(f"row {row} has no token left to sample (all scores -inf)")
            if kept is None or count > _CDF_CHUNK:
                if kept is not None:
                    np.multiply(probs, kept, out=probs)
                tokens[row] = _draw(probs, draws[row])
            else:  # a small nucleus: sum only its tokens
                ids = np.flatnonzero(kept)
                cumulative = np.cumsum(probs[ids])
                index = int(np.count_nonzero(cumulative <= draws[row] * cumulative[-1]))
                tokens[row] = ids[min(index, count - 1)]
        return tokens
    return choose


# ------------------------------------------------------------- bert4keras's rules
def _ended_rows(output_ids, end_id, min_ends):
    """Rows whose last id is the end token, seen at least ``min_ends`` times."""
    is_end = output_ids[:, -1] == end_id
    return is_end & ((output_ids == end_id).sum(1) >= min_ends)


def topk_beam_search(scorer, topk, max_length, min_length, end_id, first_ids, min_ends=1):
    """bert4keras's beam search over one source; returns the best id array.

    It keeps the ``topk`` best of all extensions (finished ones included), ranked
    by raw summed log-probabilities, and stops as soon as the best has ended
    (``min_ends`` end tokens); finished rows that are not the best leave the beam.
    The ids returned start with ``first_ids`` and include the end token.
    ``min_length`` counts ``output_ids`` including ``first_ids``.

    ``scorer.first()`` gives the log-probabilities ``[1, vocab]`` after the
    source; ``scorer.next(parents, tokens)`` those of the rows continuing
    ``parents`` with ``tokens``.

    Example:
        >>> class Table:
        ...     def first(self):
        ...         return np.log([[0.2, 0.5, 0.3]])
        ...     def next(self, parents, tokens):
        ...         return np.log([[0.1, 0.2, 0.7]] * len(parents))
        >>> topk_beam_search(Table(), 2, 4, 1, end_id=2, first_ids=[]).tolist()
        [1, 2]
    """
    output_ids = np.asarray(first_ids, dtype=int).reshape(1, -1)
    output_scores = np.zeros(1)
    pending = None
    for _ in range(max_length):
        scores = scorer.first() if pending is None else scorer.next(*pending)
        scores = output_scores.reshape((-1, 1)) + scores
        indices = scores.argpartition(-topk, axis=None)[-topk:]
        rows, tokens = indices // scores.shape[1], indices % scores.shape[1]
        output_ids = np.concatenate([output_ids[rows], tokens[:, None]], 1)
        output_scores = np.take_along_axis(scores, indices, axis=None)
        finished = _ended_rows(output_ids, end_id, min_ends)
        if output_ids.shape[1] >= min_length:
            best = output_scores.argmax()
            if finished[best]:
                return output_ids[best]
            if finished.any():
                keep = ~finished
                rows, tokens = rows[keep], tokens[keep]
                output_ids, output_scores = output_ids[keep], output_scores[keep]
                topk = int(keep.sum())
        pending = (rows, tokens)
    return output_ids[output_scores.argmax()]


def sample_until_ended(scorer, n, max_length, min_length, end_id, first_ids, draw,
                       min_ends=1):
    """bert4keras's sampling of ``n`` sequences of one source, in the order they end.

    ``draw(scores)`` picks one id per row from the scorer's rows (whatever kind of
    scores the scorer and ``draw`` agree on); a row leaves when it has ended
    (``min_ends`` end tokens, ``min_length`` counting ``output_ids`` including
    ``first_ids``); rows still running at ``max_length`` come last. The scorer is
    as for :func:`topk_beam_search`, its first rows ``[1, vocab]``.

    Example:
        >>> class Fixed:
        ...     def first(self):
        ...         return np.array([[0.0, 1.0]])
        ...     next = lambda self, parents, tokens: np.array([[0.0, 1.0]] * len(parents))
        >>> [ids.tolist() for ids in sample_until_ended(
        ...     Fixed(), 2, 3, 1, end_id=0, first_ids=[9],
        ...     draw=lambda scores: scores.argmax(1))]
        [[9, 1, 1, 1], [9, 1, 1, 1]]
    """
    output_ids = np.asarray(first_ids, dtype=int).reshape(1, -1)
    results, pending = [], None
    for step in range(max_length):
        scores = scorer.first() if pending is None else scorer.next(*pending)
        rows = np.arange(len(scores))
        if step == 0:
            scores, rows = np.repeat(scores, n, axis=0), np.zeros(n, dtype=int)
            output_ids = np.repeat(output_ids, n, axis=0)
        tokens = np.asarray(draw(scores)).reshape(-1)
        output_ids = np.concatenate([output_ids, tokens[:, None]], 1)
        finished = _ended_rows(output_ids, end_id, min_ends)
        if output_ids.shape[1] >= min_length and finished.any():
            results.extend(output_ids[finished])
            keep = ~finished
            output_ids, rows, tokens = output_ids[keep], rows[keep], tokens[keep]
            if len(output_ids) == 0:
                break
        pending = (rows, tokens)
    results.extend(output_ids)
    return results
