"""Host time of one sampling step: bert4x's filter and draw against a full sort.

What a sampling step does on the host after the model: temperature, top-k / top-p
filtering of each row's next-token distribution and one draw per row. The
baseline is the straightforward way (the way bert4x worked before): argsort the
whole vocabulary in float64, cumulative-sum the ranked probabilities, put the kept
ones back in id order and invert their CDF. bert4x's ``sampling_choice`` keeps
the same tokens and makes the same draws without sorting the vocabulary.

Rows are ``normal * scale`` log-softmaxed over the 21,128-token Chinese
vocabulary: scale 0.5 is near-flat (a random-weight model: the top-p 0.9 nucleus
is most of the vocabulary), scale 4 is peaked (more like a trained model). Prints
milliseconds per step (CPU time of this process, best of ``--repeats``) and the
ratio baseline / bert4x, after checking that both draw the same tokens.

Usage:
    python benchmarks/sampling_filter.py [--rows 4] [--vocab 21128] [--repeats 7]
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from bert4x.search import logsumexp, sampling_choice  # noqa: E402


def full_sort_choice(rng, temperature, top_k, top_p):
    """The baseline sampler: rank the whole vocabulary (stable: ties by lower id)."""
    def choose(log_probs, live):
        draws = rng.random(len(log_probs))
        scores = np.asarray(log_probs, dtype=np.float64) / temperature
        order = np.argsort(-scores, axis=-1, kind="stable")
        ranked = np.take_along_axis(scores, order, axis=-1)
        keep = np.isfinite(ranked)
        if top_k is not None:
            keep[:, top_k:] = False
        probs = np.where(keep, np.exp(ranked - ranked[:, :1]), 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
        if top_p is not None and top_p < 1:
            keep &= np.cumsum(probs, axis=-1) - probs < top_p
            probs = np.where(keep, probs, 0.0)
        in_id_order = np.zeros_like(probs)
        np.put_along_axis(in_id_order, order, probs, axis=-1)
        cumulative = np.cumsum(in_id_order, axis=-1)
        tokens = (cumulative <= draws[:, None] * cumulative[:, -1:]).sum(-1)
        return np.where(live, np.minimum(tokens, log_probs.shape[1] - 1), 0)
    return choose


def best_time(choose, log_probs, repeats, number=20):
    live = np.ones(len(log_probs), dtype=bool)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(number):
            choose(log_probs, live)
        best = min(best, (time.process_time() - start) / number)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=21128)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"host time of one sampling step, {args.rows} rows x {args.vocab} tokens, "
          f"CPU ms, best of {args.repeats}")
    print(f"{'rows':<8} {'filter':<12} {'full sort':>10} {'bert4x':>8} {'ratio':>7}")
    for name, scale in (("flat", 0.5), ("peaked", 4.0)):
        scores = rng.normal(size=(args.rows, args.vocab)) * scale
        log_probs = scores - logsumexp(scores, axis=-1, keepdims=True)
        for label, top_k, top_p in (("top-p 0.9", None, 0.9), ("top-k 4", 4, None)):
            samplers = [make(np.random.default_rng(1), 1.0, top_k, top_p)
                        for make in (full_sort_choice, sampling_choice)]
            live = np.ones(args.rows, dtype=bool)
            drawn = [choose(log_probs, live).tolist() for choose in samplers]
            if drawn[0] != drawn[1]:
                raise SystemExit(f"the draws differ ({name}, {label}): {drawn}")
            baseline, ours = (best_time(choose, log_probs, args.repeats) * 1e3
                              for choose in samplers)
            print(f"{name:<8} {label:<12} {baseline:>10.2f} {ours:>8.2f} "
                  f"{baseline / ours:>6.2f}x")


if __name__ == "__main__":
    main()
