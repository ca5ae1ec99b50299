"""Training batches of ``(source_ids, target_ids)`` pairs for a UniLM seq2seq model whose
MLM head runs at the target positions alone (``builder.mlm_positions_model()``).

A pair becomes ``source + target`` with segment 0 on the source and 1 on the target;
the hidden state at position ``i`` predicts the token at ``i + 1``, so the target
tokens are predicted from the positions just before them. The loss then needs the
vocabulary logits at those positions only, which on a CPU is several times cheaper
than the full ``[batch, length, vocab]`` softmax for the same loss.

Example:
    >>> (token_ids, segment_ids, positions), targets = seq2seq_batch(
    ...     [([2, 7, 3], [8, 3])])
    >>> positions[0, :2].tolist(), targets[0, :2].tolist()
    ([2, 3], [8, 3])
"""

import numpy as np

from bert4x.snippets import fixed_prefetch, length_bucketed_order, sequence_padding

__all__ = ["seq2seq_batch", "EpochBatches"]


def seq2seq_batch(pairs):
    """Pad ``(source_ids, target_ids)`` pairs into model inputs and targets.

    Lengths are rounded up to multiples of 8, so that few distinct shapes are traced.

    Returns:
        ``((token_ids, segment_ids, target_positions), target_ids)``: position
        ``target_positions[b, k]`` holds the hidden state that predicts
        ``target_ids[b, k]`` (the token after it); padded targets are 0.
    """
    token_ids, segment_ids, positions, targets = [], [], [], []
    for source, target in pairs:
        token_ids.append(source + target)
        segment_ids.append([0] * len(source) + [1] * len(target))
        positions.append(list(range(len(source) - 1, len(source) + len(target) - 1)))
        targets.append(target)
    length = -(-max(len(t) for t in token_ids) // 8) * 8
    target_length = -(-max(len(t) for t in targets) // 8) * 8
    return ((sequence_padding(token_ids, length), sequence_padding(segment_ids, length),
             sequence_padding(positions, target_length)),
            sequence_padding(targets, target_length))


class EpochBatches:
    """:func:`seq2seq_batch` batches for ``fit``, new pairs drawn at every epoch.

    Each epoch calls ``draw_epoch(rng)`` for its pairs (e.g. new negatives, shuffled)
    and orders them with :func:`bert4x.snippets.length_bucketed_order`, so that a
    batch pads little. The number of pairs must be the same at every epoch.

    Args:
        draw_epoch: ``draw_epoch(rng)`` -> a list of ``(source_ids, target_ids)``.
        batch_size: pairs per batch.
        seed: seed of the NumPy ``Generator`` shared by the draws and the order.
        bucket_window: batches sorted by length together; 1 draws batches at random.

    Example:
        >>> batches = EpochBatches(lambda rng: pairs, 32, seed=0)  # doctest: +SKIP
        >>> model.compile(..., steps_per_execution=16)  # doctest: +SKIP
        >>> model.fit(batches.dataset(), epochs=3)  # doctest: +SKIP
    """

    def __init__(self, draw_epoch, batch_size, seed, bucket_window=50):
        self.draw_epoch = draw_epoch
        self.batch_size = batch_size
        self.bucket_window = bucket_window
        self.rng = np.random.default_rng(seed)
        self.steps = -(-len(self.epoch()) // batch_size)

    def epoch(self):
        """One epoch's ``(source_ids, target_ids)`` pairs (a new draw at each call)."""
        return self.draw_epoch(self.rng)

    def __len__(self):
        return self.steps

    def epoch_batches(self):
        """One epoch's batches: a new draw, ordered by length, cut into batches."""
        pairs = self.epoch()
        order = length_bucketed_order([len(s) + len(t) for s, t in pairs],
                                      self.batch_size, self.rng, self.bucket_window)
        for start in range(0, len(order), self.batch_size):
            yield seq2seq_batch([pairs[i] for i in order[start:start + self.batch_size]])

    def __iter__(self):
        """Endless batches, epoch after epoch."""
        while True:
            yield from self.epoch_batches()

    def dataset(self):
        """The batches as a ``tf.data.Dataset`` of one epoch per pass (lengths vary per
        batch): with ``fit``, each epoch is one pass, and the last
        ``steps_per_execution`` call of an epoch runs only the updates left."""
        import tensorflow as tf
        matrix = tf.TensorSpec((None, None), tf.int32)
        dataset = tf.data.Dataset.from_generator(
            self.epoch_batches, output_signature=((matrix, matrix, matrix), matrix))
        # A known length: Keras then ends each epoch at its last batch without warning
        # that the input "ran out of data".
        return fixed_prefetch(dataset.apply(tf.data.experimental.assert_cardinality(len(self))))
