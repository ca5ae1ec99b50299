"""Helpers shared by the bert4keras oracle worker and the tests (plain NumPy)."""

import numpy as np


def table_logits(output_ids, vocab_size, seed=7):
    """Deterministic next-token logits for each row of ``output_ids``."""
    rows = []
    for row in np.asarray(output_ids):
        rng = np.random.default_rng([seed, len(row)] + [int(t) for t in row])
        rows.append(rng.normal(0.0, 2.0, vocab_size))
    return np.stack(rows)


def two_character_words(text):
    """A stand-in word splitter (like jieba.cut): two-character chunks of each word."""
    return [word[i:i + 2] for word in text.split() for i in range(0, len(word), 2)]
