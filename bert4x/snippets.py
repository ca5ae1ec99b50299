"""Data helpers in the spirit of bert4keras: padding, truncation, segmentation, batching.

`DataGenerator` keeps bert4keras's interface (subclass it and write `__iter__`), and
offers three ways to feed Keras:

- `forfit()`: an endless Python generator for ``model.fit(gen.forfit(),
  steps_per_epoch=len(gen))``, run in the training process;
- `to_dataset(...)`: a `tf.data.Dataset` (optionally with padded batches); tf.data runs
  the Python generator in a single thread, so nothing is shared between workers;
- `as_pydataset(workers=..., use_multiprocessing=...)`: a `keras.utils.PyDataset`,
  the route Keras 3 offers for parallel loading. Each worker builds whole batches from
  its own slice of the (shuffled) data on a copy of the generator, so `__iter__` never
  runs concurrently on shared state.
"""

import copy

import numpy as np

__all__ = [
    "sequence_padding",
    "truncate_sequences",
    "text_segmentate",
    "as_keras_batch",
    "length_bucketed_order",
    "fixed_prefetch",
    "DataGenerator",
]


def sequence_padding(
    inputs, length=None, value=0, seq_dims=1, mode="post", truncating="post", dtype=None
):
    """Pads (and truncates) sequences of arrays to one shape and stacks them.

    Args:
        inputs: list of array-likes; their first `seq_dims` axes are padded.
        length: target length: an int (for ``seq_dims=1``) or one int per padded axis;
            None pads to the longest along each axis.
        value: the padding value.
        seq_dims: number of leading axes to pad (e.g. 2 for [len, len] matrices).
        mode: ``"post"`` pads at the end, ``"pre"`` at the start.
        truncating: ``"post"`` keeps the first `length` items of a longer sequence
            (bert4keras's behaviour), ``"pre"`` keeps the last ones.
        dtype: output dtype; defaults to the inputs' common dtype (int for lists of
            ints).

    Returns:
        A NumPy array of shape ``[len(inputs), *length, *trailing_dims]``.

    Example:
        >>> sequence_padding([[1, 2, 3], [4]])
        array([[1, 2, 3],
               [4, 0, 0]])
        >>> sequence_padding([[1, 2, 3], [4]], length=2, mode="pre")
        array([[1, 2],
               [0, 4]])
    """
    if mode not in ("post", "pre"):
        raise ValueError(f'mode must be "post" or "pre", got {mode!r}.')
    if truncating not in ("post", "pre"):
        raise ValueError(f'truncating must be "post" or "pre", got {truncating!r}.')
    if len(inputs) == 0:
        raise ValueError("sequence_padding needs at least one sequence.")
    arrays = [np.asarray(x) for x in inputs]
    for index, x in enumerate(arrays):
        if x.ndim < seq_dims:
            raise ValueError(
                f"inputs[{index}] has shape {x.shape}, fewer than seq_dims={seq_dims} "
                "axes."
            )
    trailing = {x.shape[seq_dims:] for x in arrays if x.size > 0}
    if len(trailing) > 1:
        raise ValueError(
            f"Sequences differ beyond the first {seq_dims} axes: shapes "
            f"{sorted(trailing)}."
        )
    trailing = trailing.pop() if trailing else arrays[0].shape[seq_dims:]
    if length is None:
        length = np.max([x.shape[:seq_dims] for x in arrays], axis=0)
    elif np.ndim(length) == 0:
        length = [length] * seq_dims
    length = [int(n) for n in length]
    if len(length) != seq_dims:
        raise ValueError(f"length has {len(length)} entries for seq_dims={seq_dims}.")
    if dtype is None:
        non_empty = [x.dtype for x in arrays if x.size > 0]
        dtype = np.result_type(*non_empty) if non_empty else np.asarray(value).dtype
    output = np.full([len(arrays), *length, *trailing], value, dtype=dtype)
    for index, x in enumerate(arrays):
        if x.size == 0:
            continue
        source, target = [], []
        for axis in range(seq_dims):
            kept = min(x.shape[axis], length[axis])
            start = 0 if truncating == "post" else x.shape[axis] - kept
            source.append(slice(start, start + kept))
            offset = 0 if mode == "post" else length[axis] - kept
            target.append(slice(offset, offset + kept))
        output[(index, *target)] = x[tuple(source)]
    return output


def truncate_sequences(maxlen, indices, *sequences):
    """Shortens sequences until their total length is at most `maxlen`.

    As in bert4keras, one item at a time is removed from the currently longest
    sequence (the first one on ties), at position ``indices[i]`` of that sequence
    (``-1`` = the end, ``0`` = the start, ``-2`` keeps a final ``[SEP]``).

    Unlike bert4keras, the inputs are not modified, and empty sequences keep their
    place in the result (so per-sequence `indices` stay aligned).

    Args:
        maxlen: the largest allowed total length.
        indices: one index for all sequences, or one per sequence.
        *sequences: lists (or other sequences) to shorten.

    Returns:
        A list of new lists, one per input sequence.

    Example:
        >>> truncate_sequences(5, -1, [1, 2, 3, 4], [5, 6, 7])
        [[1, 2, 3], [5, 6]]
    """
    if maxlen < 0:
        raise ValueError(f"maxlen must be >= 0, got {maxlen}.")
    sequences = [list(s) for s in sequences]
    if not isinstance(indices, (list, tuple)):
        indices = [indices] * len(sequences)
    if len(indices) != len(sequences):
        raise ValueError(
            f"Got {len(indices)} indices for {len(sequences)} sequences."
        )
    lengths = [len(s) for s in sequences]
    while sum(lengths) > maxlen:
        longest = int(np.argmax(lengths))
        sequences[longest].pop(indices[longest])
        lengths[longest] -= 1
    return sequences


def text_segmentate(text, maxlen, seps="\n", strips=None):
    """Splits text into pieces of at most `maxlen` characters at separators.

    As bert4keras: the text is split at the first separator in `seps`, consecutive
    pieces are greedily merged while they fit, and a piece still longer than `maxlen`
    is split again at the next separator. Separators stay attached to the piece they
    end. A piece with no separator left is returned whole even when too long. Pieces
    are stripped of whitespace and of the characters in `strips`.

    Args:
        text: the text.
        maxlen: the largest piece length wanted.
        seps: separator characters, strongest first, e.g. ``"\\n。！？，"``.
        strips: extra characters to strip from both ends of each piece.

    Returns:
        A list of non-empty strings (empty for a blank text).

    Example:
        >>> text_segmentate("Hello there. How are you? Fine.", 14, seps=".?")
        ['Hello there.', 'How are you?', 'Fine.']
    """
    if maxlen < 1:
        raise ValueError(f"maxlen must be >= 1, got {maxlen}.")
    text = text.strip().strip(strips) if strips else text.strip()
    if not text:
        return []
    if not seps or len(text) <= maxlen:
        return [text]
    separator = seps[0]
    pieces = text.split(separator)
    segments, current = [], ""
    for index, piece in enumerate(pieces):
        if current and piece and len(current) + len(piece) > maxlen - 1:
            segments.extend(text_segmentate(current, maxlen, seps[1:], strips))
            current = ""
        current += piece if index + 1 == len(pieces) else piece + separator
    if current:
        segments.extend(text_segmentate(current, maxlen, seps[1:], strips))
    return segments


def length_bucketed_order(lengths, batch_size, rng=None, window=50, bucket_width=8):
    """A random order of examples in which every ``batch_size`` run has similar lengths.

    Padding a batch to its longest example wastes the compute of the padding: on
    text whose lengths vary (the QA demo's examples run from 34 to 129 tokens
    around a mean of 55) about half of a randomly drawn batch is padding. This
    order shuffles the examples, sorts each window of ``window`` batches by length,
    cuts it into batches and shuffles the batches, so batches stay random in what
    they hold and in their order while their lengths are nearly uniform (bucketing
    as in fairseq's and tf.data's ``bucket_by_sequence_length``, without fixed
    bucket boundaries). The one incomplete batch, if any, comes last.

    Lengths are compared in steps of ``bucket_width``: examples whose lengths fall
    in one step keep their random order. Sorting by exact length would group
    examples by what decides their length, e.g. every example with a one-token
    target of a given source length together, and batches of one kind train worse
    (a model then sees "answer nothing" batches and "copy a title" batches in turn).
    Batches padded to a multiple of 8 (as the demos pad them) cost the same either way.

    Args:
        lengths: the length of each example.
        batch_size: examples per batch.
        rng: a NumPy ``Generator`` (default: a new unseeded one).
        window: batches sorted together; 1 gives a plain shuffle.
        bucket_width: lengths within one step of this many tokens count as equal.

    Returns:
        An integer array, a permutation of ``range(len(lengths))``.

    Example:
        >>> order = length_bucketed_order([len(x) for x in token_ids], 32, rng)
        >>> batches = [order[i:i + 32] for i in range(0, len(order), 32)]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if window < 1:
        raise ValueError(f"window must be >= 1 batch, got {window}.")
    if bucket_width < 1:
        raise ValueError(f"bucket_width must be >= 1 token, got {bucket_width}.")
    rng = np.random.default_rng() if rng is None else rng
    steps = -(-np.asarray(lengths) // bucket_width)
    order = rng.permutation(len(steps))
    span = batch_size * window
    for start in range(0, len(order), span):
        chunk = order[start:start + span]
        # A stable sort keeps the shuffled order among examples of one length step.
        order[start:start + span] = chunk[np.argsort(steps[chunk], kind="stable")]
    full = len(order) // batch_size
    batches = order[:full * batch_size].reshape(full, batch_size)[rng.permutation(full)]
    return np.concatenate([batches.reshape(-1), order[full * batch_size:]])


def fixed_prefetch(dataset, buffer_size=2):
    """``dataset.prefetch(buffer_size)`` with tf.data's autotuning off.

    Deleting an autotuned iterator waits for its tuning thread to wake up, and that
    thread sleeps longer the longer the iterator has run. ``fit`` makes a new iterator
    at every epoch, and a training loop drops its iterator at the end. On 2 CPU cores,
    each new epoch of the QA demo started after 5 to 28 idle seconds, and pretraining
    ended with up to 57 idle seconds. A fixed prefetch has nothing to tune. A parallel
    ``map(num_parallel_calls=tf.data.AUTOTUNE)`` then runs one call per core.

    Example:
        >>> import tensorflow as tf
        >>> fixed_prefetch(tf.data.Dataset.range(3)).options().autotune.enabled
        False
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options).prefetch(buffer_size)


def _specs(types, shapes):
    """`tf.TensorSpec`s from matching structures of dtypes and shapes.

    Shapes are lists themselves, so the walk follows the structure of `types` only.
    """
    import tensorflow as tf

    if isinstance(types, dict):
        return {key: _specs(types[key], shapes[key]) for key in types}
    if isinstance(types, (list, tuple)):
        if len(types) != len(shapes):
            raise ValueError(f"types {types} and shapes {shapes} differ in length.")
        return tuple(_specs(t, s) for t, s in zip(types, shapes))
    return tf.TensorSpec(tf.TensorShape(shapes), tf.as_dtype(types))


def _holds_arrays(item):
    """Whether a list/tuple is a structure of arrays rather than one nested array."""
    if isinstance(item, dict) or item is None:
        return True
    if isinstance(item, (list, tuple)):
        return any(_holds_arrays(element) for element in item)
    return hasattr(item, "shape") and np.ndim(item) > 0


def _as_arrays(item, path):
    """Lists of arrays become tuples (what Keras 3 and tf.data take); leaves arrays."""
    if isinstance(item, dict):
        return {key: _as_arrays(value, f"{path}[{key!r}]") for key, value in item.items()}
    if isinstance(item, (list, tuple)) and _holds_arrays(item):
        return tuple(_as_arrays(element, f"{path}[{index}]")
                     for index, element in enumerate(item))
    if item is None:
        raise ValueError(f"{path} is None; only the labels (or sample weights) of a "
                         "batch may be None.")
    if hasattr(item, "shape") and not isinstance(item, np.ndarray):
        return item  # a framework tensor
    try:
        array = np.asarray(item)
    except ValueError:
        array = None
    if array is None or array.dtype == object:
        raise ValueError(f"{path} is ragged (its sequences differ in length); pad it, "
                         "e.g. with sequence_padding.")
    return array


def as_keras_batch(batch):
    """Normalises a bert4keras-style batch into the structure Keras 3 feeds to `fit`.

    A batch is ``x``, ``(x, y)`` or ``(x, y, sample_weight)``, each part an array,
    a list or tuple of arrays (several model inputs) or a dict. Lists become tuples
    (Keras 3 and tf.data reject lists of arrays in generator signatures), and a
    ``None`` label (``[x1, x2], None``: inputs only, as bert4keras's Loss-layer
    models are fed) is dropped.

    Args:
        batch: what a `DataGenerator.__iter__` yielded.

    Returns:
        The batch as a tuple ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``
        (or ``x`` alone when `batch` was one array or dict).

    Example:
        >>> x, y = as_keras_batch(([np.zeros((2, 3)), np.ones((2, 3))], np.zeros((2, 1))))
        >>> type(x).__name__, len(x)
        ('tuple', 2)
    """
    if isinstance(batch, dict) or (hasattr(batch, "shape") and np.ndim(batch) > 0):
        return _as_arrays(batch, "batch")
    if not isinstance(batch, (list, tuple)) or not 1 <= len(batch) <= 3:
        size = f"{len(batch)} parts" if isinstance(batch, (list, tuple)) else type(batch).__name__
        raise ValueError(
            f"A batch must be x, (x, y) or (x, y, sample_weight), with x a list of "
            f"arrays for several inputs (e.g. `yield [token_ids, segment_ids], labels`); "
            f"got {size}.")
    parts = list(batch)
    while len(parts) > 1 and parts[-1] is None:
        parts.pop()
    names = ("x", "y", "sample_weight")
    return tuple(_as_arrays(part, f"batch {names[index]}") for index, part in enumerate(parts))


def _probed_shape(shapes, fixed_first_axis):
    """A TensorShape keeping the axes whose size agrees across probed batches."""
    import tensorflow as tf

    dims = []
    for axis, sizes in enumerate(zip(*shapes)):
        varies = len(set(sizes)) > 1 or (axis == 0 and not fixed_first_axis)
        dims.append(None if varies else sizes[0])
    return tf.TensorShape(dims)


class DataGenerator:
    """Base class for batch generators (bert4keras's interface).

    Subclass it and write `__iter__(random=False)`: draw samples with
    ``for is_end, item in self.sample(random)``, collect them, and yield a batch when
    `batch_size` samples are collected or `is_end` is true. For
    ``to_dataset(padded_batch=True)`` yield single samples instead.

    Args:
        data: a list (or anything with `__len__` and indexing) or an iterable of
            samples. Iterables without a length are shuffled with a buffer.
        batch_size: examples per batch.
        buffer_size: shuffle buffer for iterables without a length (default
            ``1000 * batch_size``).
        seed: seed of the generator's own random number generator.
        bucket_by: a function giving a sample's length (e.g. ``lambda s: len(s[0])``):
            random passes over sized data then draw batches of similar lengths
            (:func:`length_bucketed_order`), so padding each batch to its longest
            sample costs little. Batches and their order stay random.

    Example:
        >>> class Batches(DataGenerator):
        ...     def __iter__(self, random=False):
        ...         tokens, labels = [], []
        ...         for is_end, (text_ids, label) in self.sample(random):
        ...             tokens.append(text_ids); labels.append([label])
        ...             if len(tokens) == self.batch_size or is_end:
        ...                 yield sequence_padding(tokens), np.array(labels)
        ...                 tokens, labels = [], []
        >>> batches = Batches(samples, batch_size=32)
        >>> model.fit(batches.forfit(), steps_per_epoch=len(batches), epochs=3)
        >>> model.fit(batches.as_pydataset(workers=4), epochs=3)
    """

    def __init__(self, data, batch_size=32, buffer_size=None, seed=None, bucket_by=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.data = data
        self.batch_size = batch_size
        if hasattr(data, "__len__"):
            self.steps = (len(data) + batch_size - 1) // batch_size
        else:
            self.steps = None
        self.buffer_size = buffer_size or batch_size * 1000
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.bucket_by = bucket_by
        self._lengths = None

    def __len__(self):
        if self.steps is None:
            raise TypeError("The data has no length, so neither has the generator.")
        return self.steps

    def sample(self, random=False):
        """Yields ``(is_end, item)`` over the data, `is_end` true for the last item.

        Args:
            random: shuffle (a permutation for sized data, bucketed by length
                when `bucket_by` is set; a buffer of `buffer_size` items otherwise).
        """
        if random and self.steps is not None:
            items = (self.data[i] for i in self._random_order())
        elif random:
            items = self._buffer_shuffle()
        else:
            items = iter(self.data)
        try:
            current = next(items)
        except StopIteration:
            return
        for following in items:
            yield False, current
            current = following
        yield True, current

    def _random_order(self):
        if self.bucket_by is None:
            return self.rng.permutation(len(self.data))
        if self._lengths is None or len(self._lengths) != len(self.data):
            self._lengths = np.array([self.bucket_by(item) for item in self.data])
        return length_bucketed_order(self._lengths, self.batch_size, self.rng)

    def _buffer_shuffle(self):
        buffer = []
        for item in self.data:
            buffer.append(item)
            if len(buffer) >= self.buffer_size:
                yield buffer.pop(int(self.rng.integers(len(buffer))))
        while buffer:
            yield buffer.pop(int(self.rng.integers(len(buffer))))

    def __iter__(self, random=False):
        raise NotImplementedError(
            f"{type(self).__name__} must implement __iter__(random=False) yielding "
            "batches (see the DataGenerator docstring)."
        )

    def forfit(self, random=True):
        """Yields batches endlessly, epoch after epoch (for ``model.fit``).

        Batches go through :func:`as_keras_batch`, so ``[x1, x2], y`` and
        ``[x1, x2], None`` batches feed Keras 3 as they fed Keras 2. On
        TensorFlow, Keras 3 reads a generator's shapes from its first two
        batches: an axis of the same size in both must keep that size later.
        For batches padded to their own longest sequence, feed
        ``to_dataset(shapes=...)`` with ``None`` on the length axes instead
        (``bert4x.bert4keras``'s ``forfit`` does that itself).
        """
        while True:
            for batch in self.__iter__(random):
                yield as_keras_batch(batch)

    def _probe(self, count=8):
        """The first `count` normalised elements of a non-random pass."""
        probed = []
        for batch in self.__iter__(False):
            probed.append(as_keras_batch(batch))
            if len(probed) == count:
                break
        if not probed:
            raise ValueError(f"{type(self).__name__}.__iter__ yielded nothing.")
        return probed

    def to_dataset(
        self,
        types=None,
        shapes=None,
        names=None,
        padded_batch=False,
        padding_values=None,
        random=True,
        repeat=True,
    ):
        """Wraps the generator in a `tf.data.Dataset`.

        Args:
            types: nested structure of dtypes matching what `__iter__` yields; None
                infers them from the first element.
            shapes: matching structure of shapes (None for a variable axis); None
                infers them from the first (up to 8) elements of a non-random
                pass: an axis keeps its size when it has the same size in all of
                them (e.g. the 1 of ``[batch, 1]`` labels, or a length padded to
                a fixed ``maxlen``), the batch axis and axes that differ are
                variable. Pass `shapes` when later batches may differ otherwise.
            names: optional names for a flat tuple of elements: each element becomes
                ``{name: tensor}`` with the names in order (bert4keras's form).
            padded_batch: `__iter__` yields single samples, and the dataset batches
                `batch_size` of them, padding the variable axes to the longest.
            padding_values: structure of padding values for `padded_batch` (0 by
                default).
            random: passed to `__iter__` (a new shuffle at each pass).
            repeat: repeat endlessly (for `fit` with `steps_per_epoch=len(gen)`).

        Returns:
            The `tf.data.Dataset`.

        Example:
            >>> dataset = samples.to_dataset(padded_batch=True, random=False)
        """
        import tensorflow as tf

        if types is None or shapes is None:
            probed = self._probe()
            if types is None:
                types = tf.nest.map_structure(lambda x: np.asarray(x).dtype, probed[0])
            if shapes is None:
                shapes = tf.nest.map_structure(
                    lambda *xs: _probed_shape([np.shape(x) for x in xs], padded_batch),
                    *probed,
                )
        signature = _specs(types, shapes)
        dataset = tf.data.Dataset.from_generator(
            lambda: map(as_keras_batch, self.__iter__(random)), output_signature=signature
        )
        if padded_batch:
            dataset = dataset.padded_batch(
                self.batch_size,
                padded_shapes=tf.nest.map_structure(lambda s: s.shape, signature),
                padding_values=padding_values,
            )
        if repeat:
            # After batching, so that each pass has len(self) batches, as __iter__ has.
            dataset = dataset.repeat()
        if names is not None:
            names = list(names)

            def name_elements(*elements):
                if len(elements) != len(names):
                    raise ValueError(
                        f"{len(names)} names for {len(elements)} elements."
                    )
                return dict(zip(names, elements))

            dataset = dataset.map(name_elements)
        return fixed_prefetch(dataset)

    def as_pydataset(self, random=True, **pydataset_kwargs):
        """A `keras.utils.PyDataset` over this generator's batches.

        Batch ``i`` is built by running `__iter__` on a copy of the generator whose
        data is the ``i``-th slice of `batch_size` items of the epoch's order, so
        workers (threads or processes) never share generator state. `__iter__` must
        yield exactly one batch per `batch_size` items (bert4keras style). The order
        is reshuffled at each epoch end when `random`.

        On the TensorFlow backend Keras fixes the shape of the batches from the
        first ones it reads: an axis with the same size in those (e.g. a
        sequence length) must keep it. Pad such axes to a fixed length
        (``sequence_padding(..., length=maxlen)``), or use `forfit` or
        `to_dataset`, when later batches may be longer.

        Args:
            random: shuffle the data each epoch.
            **pydataset_kwargs: `workers`, `use_multiprocessing`, `max_queue_size`.

        Returns:
            A `keras.utils.PyDataset` for ``model.fit(dataset)``.

        Example:
            >>> model.fit(batches.as_pydataset(workers=4), epochs=3)
        """
        if self.steps is None:
            raise TypeError(
                "as_pydataset needs data with a length and indexing (a list); use "
                "to_dataset or forfit for iterables."
            )
        import keras

        generator = self

        class _Batches(keras.utils.PyDataset):
            def __init__(self):
                super().__init__(**pydataset_kwargs)
                self.order = self._draw_order()

            def _draw_order(self):
                if random:
                    return generator._random_order()
                return np.arange(len(generator.data))

            def __len__(self):
                return len(generator)

            def __getitem__(self, index):
                if not 0 <= index < len(self):
                    raise IndexError(f"Batch {index} out of range 0..{len(self) - 1}.")
                size = generator.batch_size
                chunk = [generator.data[i] for i in self.order[index * size:(index + 1) * size]]
                view = copy.copy(generator)
                view.data = chunk
                view.steps = 1
                batches = list(view.__iter__(False))
                if len(batches) != 1:
                    raise ValueError(
                        f"{type(generator).__name__}.__iter__ produced {len(batches)} "
                        f"batches from {len(chunk)} items; as_pydataset needs exactly "
                        "one batch per batch_size items."
                    )
                return as_keras_batch(batches[0])

            def on_epoch_end(self):
                self.order = self._draw_order()

        return _Batches()
