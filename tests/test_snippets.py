"""bert4x.snippets: padding, truncation, segmentation and DataGenerator feeding."""

import threading

import numpy as np
import pytest

from bert4x.snippets import (
    DataGenerator,
    length_bucketed_order,
    sequence_padding,
    text_segmentate,
    truncate_sequences,
)


# ---------------------------------------------------------------- sequence_padding


def test_padding_post_and_pre_to_longest():
    np.testing.assert_array_equal(
        sequence_padding([[1, 2, 3], [4], []]), [[1, 2, 3], [4, 0, 0], [0, 0, 0]]
    )
    np.testing.assert_array_equal(
        sequence_padding([[1, 2, 3], [4]], mode="pre", value=-1), [[1, 2, 3], [-1, -1, 4]]
    )
    assert sequence_padding([[1, 2], [3]]).dtype.kind == "i"


def test_padding_truncates_head_or_tail():
    np.testing.assert_array_equal(sequence_padding([[1, 2, 3, 4], [5]], length=2), [[1, 2], [5, 0]])
    np.testing.assert_array_equal(
        sequence_padding([[1, 2, 3, 4], [5]], length=2, truncating="pre", mode="pre"),
        [[3, 4], [0, 5]],
    )


def test_padding_n_dimensional_and_trailing_axes():
    a = np.arange(4).reshape(2, 2)
    b = np.arange(9).reshape(3, 3) + 10
    out = sequence_padding([a, b], seq_dims=2)
    assert out.shape == (2, 3, 3)
    expected_a = np.zeros((3, 3), int)
    expected_a[:2, :2] = a
    np.testing.assert_array_equal(out[0], expected_a)
    np.testing.assert_array_equal(out[1], b)
    pre = sequence_padding([a, b], length=[3, 2], seq_dims=2, mode="pre")
    np.testing.assert_array_equal(pre[0], [[0, 0], [0, 1], [2, 3]])
    np.testing.assert_array_equal(pre[1], b[:, :2])
    # Only the first axis is padded; a trailing feature axis is kept.
    vectors = sequence_padding([np.ones((1, 2)), np.ones((3, 2)) * 2], value=0.5)
    assert vectors.shape == (2, 3, 2) and vectors.dtype == np.float64
    np.testing.assert_array_equal(vectors[0], [[1, 1], [0.5, 0.5], [0.5, 0.5]])


def test_padding_errors():
    with pytest.raises(ValueError, match="mode"):
        sequence_padding([[1]], mode="middle")
    with pytest.raises(ValueError, match="at least one"):
        sequence_padding([])
    with pytest.raises(ValueError, match="differ beyond"):
        sequence_padding([np.ones((2, 3)), np.ones((2, 4))])


# ------------------------------------------------------------- truncate_sequences


def test_truncate_pops_from_the_longest():
    first, second = [1, 2, 3, 4, 5], [6, 7, 8]
    assert truncate_sequences(6, -1, first, second) == [[1, 2, 3], [6, 7, 8]]
    assert first == [1, 2, 3, 4, 5]  # inputs untouched
    # Ties go to the first sequence; alternate pops keep both balanced.
    assert truncate_sequences(4, -1, [1, 2, 3], [4, 5, 6]) == [[1, 2], [4, 5]]


def test_truncate_per_sequence_indices_keep_final_token():
    a = ["[CLS]", "a1", "a2", "a3", "[SEP]"]
    b = ["b1", "b2", "[SEP]"]
    # 8 > 6: pop a's "a3" (5 > 3), then "a2" (4 > 3); 3 + 3 fits.
    assert truncate_sequences(6, [-2, -2], a, b) == [["[CLS]", "a1", "[SEP]"], b]
    assert truncate_sequences(4, [-2, -2], a, b) == [["[CLS]", "[SEP]"], ["b1", "[SEP]"]]
    assert truncate_sequences(3, 0, [1, 2, 3, 4]) == [[2, 3, 4]]


def test_truncate_edge_cases():
    assert truncate_sequences(10, -1, [1, 2], [3]) == [[1, 2], [3]]
    assert truncate_sequences(0, -1, [1, 2], [3]) == [[], []]
    # An empty sequence keeps its slot, so per-sequence indices stay aligned.
    assert truncate_sequences(2, [0, -1, -1], [], [1, 2], [3]) == [[], [1], [3]]


# ---------------------------------------------------------------- text_segmentate


def test_segmentate_respects_maxlen_and_keeps_text():
    text = "第一句话。第二句稍微长一点的话！第三句？短。"
    pieces = text_segmentate(text, 11, seps="。！？")
    assert pieces == ["第一句话。", "第二句稍微长一点的话！", "第三句？短。"]
    assert "".join(pieces) == text and all(len(p) <= 11 for p in pieces)


def test_segmentate_falls_back_to_weaker_separators():
    text = "aaaa,bbbb,cccc.dd"
    # "." splits first ("aaaa,bbbb,cccc." + "dd"); the 15-character part is too long
    # and is split again at "," with greedy merging ("aaaa," + "bbbb," fits in 10).
    assert text_segmentate(text, 10, seps=".,") == ["aaaa,bbbb,", "cccc.", "dd"]
    assert text_segmentate(text, 20, seps=".,") == [text]
    # No separator left: the piece is returned whole even when too long.
    assert text_segmentate("abcdefghijkl", 5, seps=",") == ["abcdefghijkl"]


def test_segmentate_edge_cases():
    assert text_segmentate("   ", 5) == []
    assert text_segmentate("short", 10) == ["short"]
    assert text_segmentate("a\nb\n\nc", 2, seps="\n") == ["a", "b", "c"]
    assert text_segmentate("--hello--", 20, strips="-") == ["hello"]


# ------------------------------------------------------------------ DataGenerator


class PaddedBatches(DataGenerator):
    """bert4keras-style generator yielding padded (token_ids, labels) batches."""

    def __iter__(self, random=False):
        tokens, labels = [], []
        for is_end, (ids, label) in self.sample(random):
            tokens.append(ids)
            labels.append([label])
            if len(tokens) == self.batch_size or is_end:
                yield sequence_padding(tokens), np.array(labels)
                tokens, labels = [], []


class Samples(DataGenerator):
    """Yields single samples, for to_dataset(padded_batch=True)."""

    def __iter__(self, random=False):
        for _, (ids, label) in self.sample(random):
            yield np.array(ids, "int32"), np.array(label, "int32")


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(0)
    return [
        (list(rng.integers(1, 50, size=rng.integers(1, 8))), int(rng.integers(0, 2)))
        for _ in range(11)
    ]


def test_generator_length_and_sampling(samples):
    generator = PaddedBatches(samples, batch_size=4, seed=1)
    assert len(generator) == 3
    ends = [is_end for is_end, _ in generator.sample()]
    assert ends == [False] * 10 + [True]
    shuffled = [item for _, item in generator.sample(random=True)]
    assert sorted(map(str, shuffled)) == sorted(map(str, samples)) and shuffled != samples
    batches = list(generator)  # __iter__ with random=False
    assert [b[0].shape[0] for b in batches] == [4, 4, 3]
    np.testing.assert_array_equal(batches[2][1][:, 0], [s[1] for s in samples[8:]])


def test_length_bucketed_order_is_a_permutation_of_similar_length_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 130, size=1000)
    order = length_bucketed_order(lengths, 32, np.random.default_rng(1), window=10)
    assert sorted(order.tolist()) == list(range(1000))
    batches = [lengths[order[i:i + 32]] for i in range(0, 1000, 32)]
    padded = sum(len(b) * b.max() for b in batches)
    shuffled = rng.permutation(lengths)
    padded_random = sum(len(b) * b.max() for b in (shuffled[i:i + 32]
                                                  for i in range(0, 1000, 32)))
    # Sorting windows of 320 examples leaves little padding; a shuffle pads ~1.9x.
    assert padded < 1.15 * lengths.sum() and padded < 0.65 * padded_random
    assert len(batches[-1]) == 1000 % 32  # the incomplete batch comes last
    # The batches are shuffled: their lengths are not in sorted order.
    assert [b.max() for b in batches[:-1]] != sorted(b.max() for b in batches[:-1])
    again = length_bucketed_order(lengths, 32, np.random.default_rng(1), window=10)
    np.testing.assert_array_equal(order, again)
    with pytest.raises(ValueError, match="window"):
        length_bucketed_order(lengths, 32, window=0)


def test_length_bucketed_order_keeps_examples_of_one_length_step_mixed():
    # Two kinds of examples whose lengths differ by one token (a one-token target
    # against a two-token one, say): sorting by exact length would give batches of
    # one kind; within one step of 8 tokens they stay mixed.
    lengths = np.array([41, 42] * 320)
    mixed = [set(lengths[order[i:i + 32]]) for order in
             [length_bucketed_order(lengths, 32, np.random.default_rng(0))]
             for i in range(0, 640, 32)]
    assert all(kinds == {41, 42} for kinds in mixed)
    exact = length_bucketed_order(lengths, 32, np.random.default_rng(0), bucket_width=1)
    assert all(len(set(lengths[exact[i:i + 32]])) == 1 for i in range(0, 640, 32))
    with pytest.raises(ValueError, match="bucket_width"):
        length_bucketed_order(lengths, 32, bucket_width=0)


def test_generator_bucket_by_draws_batches_of_similar_lengths():
    rng = np.random.default_rng(0)
    many = [(list(rng.integers(1, 50, size=rng.integers(1, 60))), 0) for _ in range(200)]
    generator = PaddedBatches(many, batch_size=4, seed=3, bucket_by=lambda s: len(s[0]))
    widths = [batch[0].shape[1] for batch in generator.__iter__(random=True)]
    plain = PaddedBatches(many, batch_size=4, seed=3)
    plain_widths = [batch[0].shape[1] for batch in plain.__iter__(random=True)]
    assert sum(widths) < sum(plain_widths)
    drawn = [item for _, item in generator.sample(random=True)]
    assert sorted(map(str, drawn)) == sorted(map(str, many))
    assert [item for _, item in generator.sample()] == many  # random=False: in order


def test_generator_on_iterable_without_length(samples):
    generator = PaddedBatches(iter(samples), batch_size=4, buffer_size=3, seed=0)
    with pytest.raises(TypeError):
        len(generator)
    shuffled = [item for _, item in generator.sample(random=True)]
    assert sorted(map(str, shuffled)) == sorted(map(str, samples))


def test_forfit_repeats_epochs(samples):
    generator = PaddedBatches(samples, batch_size=4)
    stream = generator.forfit(random=False)
    first_pass = [next(stream) for _ in range(3)]
    second_pass = [next(stream) for _ in range(3)]
    for a, b in zip(first_pass, second_pass):
        np.testing.assert_array_equal(a[0], b[0])


def test_to_dataset_equals_python_batches(samples):
    generator = PaddedBatches(samples, batch_size=4)
    expected = list(generator.__iter__(False))
    dataset = generator.to_dataset(random=False, repeat=False)
    actual = [(x.numpy(), y.numpy()) for x, y in dataset]
    assert len(actual) == len(expected)
    for (ax, ay), (ex, ey) in zip(actual, expected):
        np.testing.assert_array_equal(ax, ex)
        np.testing.assert_array_equal(ay, ey)
    named = generator.to_dataset(names=("token_ids", "labels"), random=False)
    first = next(iter(named))
    np.testing.assert_array_equal(first["token_ids"].numpy(), expected[0][0])
    # fit makes an iterator per epoch; an autotuned one stalls each epoch's start.
    assert dataset.options().autotune.enabled is False
    assert named.options().autotune.enabled is False


def test_to_dataset_padded_batch_equals_sequence_padding(samples):
    generator = Samples(samples, batch_size=4)
    dataset = generator.to_dataset(
        types=("int32", "int32"), shapes=([None], []), padded_batch=True, random=False
    )
    all_batches = list(dataset.take(6))  # two passes, each ending with a batch of 3
    assert [b[0].shape[0] for b in all_batches] == [4, 4, 3] * 2
    for index, (x, y) in enumerate(all_batches):
        chunk = samples[index % 3 * 4:(index % 3 + 1) * 4]
        np.testing.assert_array_equal(x.numpy(), sequence_padding([ids for ids, _ in chunk]))
        np.testing.assert_array_equal(y.numpy(), [label for _, label in chunk])


def test_pydataset_with_thread_workers_equals_python_batches(samples):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    class RecordingBatches(PaddedBatches):
        """Records the thread that builds each batch."""

        threads = set()

        def __iter__(self, random=False):
            type(self).threads.add(threading.get_ident())
            yield from super().__iter__(random)

    generator = RecordingBatches(samples, batch_size=4, seed=3)
    expected = list(generator.__iter__(False))
    RecordingBatches.threads.clear()
    pydataset = generator.as_pydataset(random=False, workers=2)
    assert len(pydataset) == 3
    # Keras's own adapter (what fit uses) runs __getitem__ on its worker threads.
    adapter = PyDatasetAdapter(pydataset, shuffle=False)
    adapter.on_epoch_begin()
    batches = list(adapter.get_numpy_iterator())
    adapter.on_epoch_end()
    assert len(batches) == 3
    for (x, y), (expected_x, expected_y) in zip(batches, expected):
        np.testing.assert_array_equal(x, expected_x)
        np.testing.assert_array_equal(y, expected_y)
    assert RecordingBatches.threads and threading.get_ident() not in RecordingBatches.threads
    shuffled = generator.as_pydataset(random=True)
    labels = np.concatenate([shuffled[i][1][:, 0] for i in range(3)])
    assert sorted(labels) == sorted(s[1] for s in samples)


def test_pydataset_feeds_fit_with_workers(samples):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.layers.Embedding(50, 4), keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2)]
    )
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    generator = PaddedBatches(samples, batch_size=4, seed=0)
    history = model.fit(generator.as_pydataset(workers=2), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


def test_pydataset_rejects_generators_that_regroup(samples):
    class TwoPerBatch(DataGenerator):
        def __iter__(self, random=False):
            items = [item for _, item in self.sample(random)]
            for start in range(0, len(items), 2):
                yield np.array([len(ids) for ids, _ in items[start:start + 2]]), np.zeros(1)

    with pytest.raises(ValueError, match="exactly one batch"):
        TwoPerBatch(samples, batch_size=4).as_pydataset(random=False)[0]


# ------------------------------------------- bert4keras batch structures in Keras 3


class TwoInputBatches(DataGenerator):
    """bert4keras's classifier idiom: ``[token_ids, segment_ids], labels``."""

    def __init__(self, data, batch_size, as_tuple=False, labels=True):
        super().__init__(data, batch_size)
        self.as_tuple, self.labels = as_tuple, labels

    def __iter__(self, random=False):
        tokens, segments, labels = [], [], []
        for is_end, (ids, label) in self.sample(random):
            tokens.append(ids)
            segments.append([0] * len(ids))
            labels.append([label])
            if len(tokens) == self.batch_size or is_end:
                # A fixed length: Keras fixes a PyDataset's shapes from its first
                # batches (see as_pydataset), and the samples are up to 7 long.
                inputs = [sequence_padding(tokens, 8), sequence_padding(segments, 8)]
                inputs = tuple(inputs) if self.as_tuple else inputs
                yield inputs, (sequence_padding(labels) if self.labels else None)
                tokens, segments, labels = [], [], []


@pytest.fixture(scope="module")
def two_input_classifier():
    import keras

    keras.utils.set_random_seed(0)
    token_ids = keras.Input((None,), dtype="int32")
    segment_ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Add()([keras.layers.Embedding(50, 4)(token_ids),
                            keras.layers.Embedding(2, 4)(segment_ids)])
    logits = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model([token_ids, segment_ids], logits)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.parametrize("as_tuple", [False, True])
@pytest.mark.parametrize("feed", ["forfit", "as_pydataset", "to_dataset"])
def test_list_and_tuple_input_batches_feed_fit(samples, two_input_classifier, feed, as_tuple):
    generator = TwoInputBatches(samples, batch_size=4, as_tuple=as_tuple)
    if feed == "as_pydataset":
        arguments = dict(x=generator.as_pydataset())
    else:
        arguments = dict(x=getattr(generator, feed)(), steps_per_epoch=len(generator))
    history = two_input_classifier.fit(epochs=1, verbose=0, **arguments)
    assert np.isfinite(history.history["loss"]).all()


def test_none_labels_mean_inputs_only(samples):
    generator = TwoInputBatches(samples, batch_size=4, labels=False)
    batch = next(generator.forfit(random=False))
    assert len(batch) == 1 and len(batch[0]) == 2
    assert generator.as_pydataset(random=False)[0][0][1].shape == (4, batch[0][1].shape[1])


def test_to_dataset_keeps_the_unit_label_axis(samples):
    dataset = TwoInputBatches(samples, batch_size=4).to_dataset(random=False, repeat=False)
    (token_spec, segment_spec), label_spec = dataset.element_spec
    assert label_spec.shape.as_list() == [None, 1]
    assert token_spec.shape.as_list()[0] is None


def test_wrong_batch_structures_are_named():
    class Bad(DataGenerator):
        def __init__(self, batch):
            super().__init__([0], 1)
            self.batch = batch

        def __iter__(self, random=False):
            yield self.batch

    with pytest.raises(ValueError, match=r"x, \(x, y\) or \(x, y, sample_weight\)"):
        next(Bad((np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2))).forfit())
    with pytest.raises(ValueError, match=r"batch x\[1\] is ragged"):
        next(Bad(([np.zeros((1, 2)), [[1, 2], [3]]], np.zeros(2))).forfit())
    with pytest.raises(ValueError, match="7 parts|int"):
        next(Bad(7).forfit())
