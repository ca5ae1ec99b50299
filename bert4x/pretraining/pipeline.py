"""The tf.data input pipeline: parsing, vocabulary trimming and dynamic masking.

Every example gets a fresh mask each epoch, drawn with stateless random ops seeded by
``(seed + epoch, position of the example in the epoch)``. The stream is therefore a
pure function of the seed: a resumed run rebuilds it from the number of examples
already consumed, and every worker of a multi-worker run sees the same masks for the
same example, whatever the sharding.

Each objective yields the same features, so one training model serves all three:

* ``token_ids`` ``[L]`` int32 (masked, for MLM), ``segment_ids`` ``[L]`` int32;
* ``positions`` ``[P]`` int32: the positions whose token is predicted;
* ``labels`` ``[P]`` int32: the token to predict there; ``weights`` ``[P]`` float32:
  1 for a real target, 0 for padding.

MLM: whole words are chosen (``round(mask_rate * words)`` of them, at least one, in a
random order, stopping before ``max_predictions`` tokens would be exceeded); of their
tokens 80% become ``[MASK]``, 10% a random token, 10% stay. ``P = max_predictions``.
LM: every token predicts the next one (``P = L - 1``).
UniLM seq2seq: a word boundary is drawn uniformly among the sequence's words; tokens
from there on are the target (segment 1), each predicting the next target token.
"""

import numpy as np
import tensorflow as tf

from bert4x.snippets import fixed_prefetch

OBJECTIVES = ("mlm", "lm", "unilm")


def parse_features(serialized, seq_length):
    """Parse serialized records into ``input_ids`` and ``word_ids`` (int32)."""
    spec = {"input_ids": tf.io.FixedLenFeature([seq_length], tf.int64),
            "word_ids": tf.io.FixedLenFeature([seq_length], tf.int64)}
    parsed = tf.io.parse_single_example(serialized, spec)
    return {key: tf.cast(value, tf.int32) for key, value in parsed.items()}


class Masker:
    """Build the training features of one example (see the module docstring).

    Args:
        vocab_size: size of the (possibly trimmed) vocabulary the model sees.
        mask_id, pad_id: ids of ``[MASK]`` and ``[PAD]``.
        special_ids: ids never drawn as random replacements.
        seq_length: L.
        objective: ``"mlm"``, ``"lm"`` or ``"unilm"``.
        mask_rate: fraction of words chosen for MLM.
        max_predictions: P for MLM (default L).
        seed: base seed of the stateless draws.
        id_map: optional int array mapping full-vocabulary ids to the trimmed ids.

    Example:
        >>> masker = Masker(100, mask_id=4, pad_id=0, special_ids=[0, 1, 2, 3, 4],
        ...                 seq_length=8, max_predictions=4, seed=1)
        >>> features = masker(tf.constant([2, 10, 11, 12, 3, 0, 0, 0]),
        ...                   tf.constant([-1, 0, 1, 1, -1, -1, -1, -1]),
        ...                   epoch=tf.constant(0, tf.int64), position=tf.constant(0, tf.int64))
        >>> sorted(features)
        ['labels', 'positions', 'segment_ids', 'token_ids', 'weights']
    """

    def __init__(self, vocab_size, mask_id, pad_id, special_ids, seq_length, objective="mlm",
                 mask_rate=0.15, max_predictions=None, seed=0, id_map=None):
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
        if not 0.0 < mask_rate < 1.0:
            raise ValueError(f"mask_rate must be in (0, 1), got {mask_rate}")
        self.vocab_size, self.mask_id, self.pad_id = int(vocab_size), int(mask_id), int(pad_id)
        self.seq_length = int(seq_length)
        self.objective, self.mask_rate = objective, float(mask_rate)
        self.max_predictions = int(max_predictions or seq_length)
        if objective != "mlm":
            self.max_predictions = self.seq_length - 1
        self.seed = int(seed)
        specials = set(int(i) for i in special_ids)
        candidates = np.array([i for i in range(self.vocab_size) if i not in specials], np.int32)
        if candidates.size == 0:
            raise ValueError("the vocabulary has no token besides the special ones")
        self.random_candidates = tf.constant(candidates)
        self.id_map = None if id_map is None else tf.constant(np.asarray(id_map, np.int32))

    @property
    def num_predictions(self):
        """P, the length of ``positions``/``labels``/``weights``."""
        return self.max_predictions

    def _seeds(self, epoch, position):
        base = tf.stack([tf.cast(epoch, tf.int64) + self.seed, tf.cast(position, tf.int64)])
        return [base + tf.constant([0, offset], tf.int64) * (1 << 40) for offset in range(4)]

    def __call__(self, input_ids, word_ids, epoch, position):
        if self.id_map is not None:
            input_ids = tf.gather(self.id_map, input_ids)
        seeds = self._seeds(epoch, position)
        if self.objective == "mlm":
            return self._mlm(input_ids, word_ids, seeds)
        return self._next_token(input_ids, word_ids, seeds)

    def _mlm(self, input_ids, word_ids, seeds):
        length = self.seq_length
        num_words = tf.reduce_max(word_ids) + 1
        word_range = tf.range(length)
        valid_word = word_range < num_words
        keys = tf.where(valid_word, tf.random.stateless_uniform([length], seeds[0]), 2.0)
        order = tf.argsort(keys, stable=True)                 # words in random order
        rank = tf.math.invert_permutation(order)
        # Tokens per word (index `length` collects the -1 tokens and is dropped).
        word_lengths = tf.math.unsorted_segment_sum(
            tf.ones_like(word_ids), tf.where(word_ids >= 0, word_ids, length), length + 1)[:length]
        wanted = tf.maximum(1, tf.cast(tf.round(self.mask_rate * tf.cast(num_words, tf.float32)),
                                       tf.int32))
        wanted = tf.where(num_words > 0, wanted, 0)
        cumulative = tf.cumsum(tf.gather(word_lengths, order))
        chosen_in_order = (word_range < wanted) & (cumulative <= self.max_predictions)
        chosen_word = tf.gather(chosen_in_order, rank)
        selected = (word_ids >= 0) & tf.gather(chosen_word, tf.maximum(word_ids, 0))

        draw = tf.random.stateless_uniform([length], seeds[1])
        random_tokens = tf.gather(self.random_candidates, tf.random.stateless_uniform(
            [length], seeds[2], maxval=tf.shape(self.random_candidates)[0], dtype=tf.int32))
        replaced = tf.where(draw < 0.8, self.mask_id,
                            tf.where(draw < 0.9, random_tokens, input_ids))
        token_ids = tf.where(selected, replaced, input_ids)

        positions = tf.cast(tf.where(selected)[:, 0], tf.int32)[:self.max_predictions]
        count = tf.shape(positions)[0]
        padding = self.max_predictions - count
        weights = tf.concat([tf.ones([count]), tf.zeros([padding])], 0)
        labels = tf.concat([tf.gather(input_ids, positions), tf.zeros([padding], tf.int32)], 0)
        positions = tf.concat([positions, tf.zeros([padding], tf.int32)], 0)
        shape = [self.max_predictions]
        return {"token_ids": tf.ensure_shape(token_ids, [length]),
                "segment_ids": tf.zeros([length], tf.int32),
                "positions": tf.ensure_shape(positions, shape),
                "labels": tf.ensure_shape(labels, shape),
                "weights": tf.ensure_shape(weights, shape)}

    def _next_token(self, input_ids, word_ids, seeds):
        length = self.seq_length
        real = input_ids != self.pad_id
        if self.objective == "unilm":
            num_words = tf.reduce_max(word_ids) + 1
            # The target starts at a word drawn from 1 .. num_words - 1 (the source
            # keeps at least one word).
            split_word = tf.random.stateless_uniform(
                [], seeds[3], minval=1, maxval=tf.maximum(num_words, 2), dtype=tf.int32)
            is_split = tf.cast(word_ids == split_word, tf.int32)
            split = tf.where(tf.reduce_any(is_split > 0), tf.argmax(is_split, output_type=tf.int32),
                             length)
            segment_ids = tf.cast((tf.range(length) >= split) & real, tf.int32)
            target = segment_ids[1:] > 0
        else:
            segment_ids = tf.zeros([length], tf.int32)
            target = real[1:]
        return {"token_ids": input_ids, "segment_ids": segment_ids,
                "positions": tf.range(length - 1, dtype=tf.int32),
                "labels": input_ids[1:],
                "weights": tf.cast(target, tf.float32)}


def damaged_data_error(files, error):
    """The error to raise when reading ``files`` failed with ``error`` (a
    ``tf.errors.DataLossError``, which does not say which file): it names the first
    damaged shard, found by reading each one through.

    Example:
        >>> try:  # doctest: +SKIP
        ...     next(iter(dataset))
        ... except tf.errors.DataLossError as error:
        ...     raise damaged_data_error(files, error) from error
    """
    for path in files:
        try:
            tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda count, _: count + 1)
        except tf.errors.DataLossError as file_error:
            return ValueError(
                f"the data file {path} is damaged ({file_error.message.strip()}); delete it "
                "and run make_data.py again, which rewrites missing shards")
    return ValueError(f"reading the data files failed ({error.message.strip()}), but each "
                      f"of the {len(files)} files reads through on its own")


def numpy_batches(dataset, files):
    """Iterate ``dataset`` as NumPy; a damaged file of ``files`` is named in the error."""
    iterator = dataset.as_numpy_iterator()
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except tf.errors.DataLossError as error:
            raise damaged_data_error(files, error) from error
        yield batch


def masked_dataset(files, seq_length, masker, batch_size, examples_per_epoch, start_example=0,
                   shuffle_buffer=10000, seed=0, num_shards=1, shard_index=0, repeat=True,
                   rows=None):
    """The training stream: shuffled per epoch, masked, sharded, batched.

    Args:
        files: TFRecord shards (read in this order before shuffling).
        seq_length: L.
        masker: a :class:`Masker`.
        batch_size: examples per batch of this pipeline (per replica).
        examples_per_epoch: records in ``files`` (from ``dataset.json``).
        start_example: examples of the global stream already consumed (resume).
        shuffle_buffer: records shuffled together (0: no shuffling); the file
            order is shuffled too, each epoch anew.
        seed: shuffling seed (with the epoch number).
        num_shards, shard_index: this pipeline's share of the global stream
            (example ``i`` goes to pipeline ``i % num_shards``).
        repeat: run epochs forever (False: one epoch from ``start_example``).
        rows: ``(first, stop, period)``: keep only rows ``first .. stop - 1`` of every
            ``period`` examples of the global stream (one process's contiguous block
            of each global batch of ``period`` examples, for ``keras.distribution``
            over several processes); ``batch_size`` is then ``stop - first``. The
            rows left out are never parsed or masked. ``start_example`` must be a
            multiple of ``period``.

    Returns:
        A ``tf.data.Dataset`` of feature dicts batched to ``batch_size``.

    Example:
        >>> dataset = masked_dataset(["train-0.tfrecord"], 128, masker, 32,  # doctest: +SKIP
        ...                          examples_per_epoch=1000)
    """
    if examples_per_epoch <= 0:
        raise ValueError("the training data has no example")
    if start_example % num_shards:
        raise ValueError(f"start_example {start_example} is not a multiple of the "
                         f"{num_shards} shards")
    if rows is not None:
        first, stop, period = (int(value) for value in rows)
        if not 0 <= first < stop <= period or num_shards != 1:
            raise ValueError(f"rows {rows} must be (first, stop, period) with "
                             "0 <= first < stop <= period, without num_shards")
        if start_example % period:
            raise ValueError(f"start_example {start_example} is not a multiple of the "
                             f"{period} examples of a global batch")
    files = [str(f) for f in files]
    # Each epoch keeps a multiple of num_shards examples, so every pipeline gets
    # the same count and the global batches stay contiguous across epochs.
    kept_per_epoch = int(examples_per_epoch) - int(examples_per_epoch) % num_shards
    if kept_per_epoch <= 0:
        raise ValueError(f"{examples_per_epoch} examples cannot feed {num_shards} pipelines")
    start_epoch, offset = divmod(int(start_example), kept_per_epoch)

    file_names = tf.constant(files)

    def one_epoch(epoch):
        epoch_seed = tf.stack([tf.cast(seed, tf.int64), epoch])
        if shuffle_buffer:
            # Stateless shuffling (file order, then within windows of shuffle_buffer
            # records), seeded by (seed, epoch): the stream can be rebuilt at any point.
            # Dataset.shuffle cannot take a per-epoch tensor seed once a global seed
            # is set (TF 2.21), hence this.
            order = tf.argsort(tf.random.stateless_uniform([len(files)], epoch_seed))
            records = tf.data.TFRecordDataset(tf.gather(file_names, order))
            records = records.batch(shuffle_buffer).enumerate().flat_map(
                lambda window, batch: tf.data.Dataset.from_tensor_slices(tf.gather(
                    batch, tf.argsort(tf.random.stateless_uniform(
                        tf.shape(batch)[:1], epoch_seed + tf.stack([tf.constant(0, tf.int64), (window + 1) * (1 << 32)])))))
            )
        else:
            records = tf.data.TFRecordDataset(file_names)
        records = records.take(kept_per_epoch).enumerate()
        # Skipping happens before parsing and masking, so resuming is cheap.
        records = records.skip(tf.where(epoch == start_epoch, tf.constant(offset, tf.int64),
                                        tf.constant(0, tf.int64)))
        if num_shards > 1:
            records = records.shard(num_shards, shard_index)
        if rows is not None:
            # The row in its global batch of the example's index in the whole stream.
            records = records.filter(lambda position, record: tf.logical_and(
                (epoch * kept_per_epoch + position) % period >= first,
                (epoch * kept_per_epoch + position) % period < stop))
        return records.map(lambda position, record: (epoch, position, record))

    epochs = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max if repeat
                                   else start_epoch + 1)
    dataset = epochs.flat_map(one_epoch)

    def build(epoch, position, record):
        features = parse_features(record, seq_length)
        return masker(features["input_ids"], features["word_ids"], epoch, position)

    dataset = dataset.map(build, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=repeat)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return fixed_prefetch(dataset.with_options(options))


def evaluation_dataset(files, seq_length, masker, batch_size):
    """Held-out examples with the mask of epoch 0, every example once, in file order."""
    records = tf.data.TFRecordDataset([str(f) for f in files]).enumerate()

    def build(position, record):
        features = parse_features(record, seq_length)
        return masker(features["input_ids"], features["word_ids"],
                      tf.constant(0, tf.int64), position)

    return fixed_prefetch(records.map(build, num_parallel_calls=tf.data.AUTOTUNE,
                                      deterministic=True).batch(batch_size))
