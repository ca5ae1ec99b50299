"""Helpers shared by the bert4keras oracle worker and the tests (plain NumPy)."""

import numpy as np


def table_logits(output_ids, vocab_size, seed=7):
    """Deterministic next-token logits for each row of ``output_ids``."""
    rows = []
    for row in np.asarray(output_ids):
        rng = np.random.default_rng([seed, len(row)] + [int(t) for t in row])
        rows.append(rng.normal(0.0, 2.0, vocab_size))
    return np.stack(rows)
