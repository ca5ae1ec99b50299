"""bert4keras's ``snippets`` module: data helpers and decoders on bert4x.

``sequence_padding``, ``text_segmentate`` and ``DataGenerator`` are bert4x's own
(``DataGenerator`` batches of ``[x1, x2], y`` and ``[x1, x2], None`` feed Keras 3
as they fed Keras 2); ``truncate_sequences`` works in place as bert4keras's does.
``AutoRegressiveDecoder`` keeps bert4keras's search rules (see its docstring),
which differ from bert4x's :class:`bert4x.decoding.Decoder`.
"""

import json
import re
import unicodedata
from collections import defaultdict

import keras
import numpy as np

from bert4x import snippets as _native
from bert4x import storage
from bert4x.bert4keras.backend import K  # noqa: F401  (bert4keras re-exports it)
from bert4x.snippets import DataGenerator as _NativeDataGenerator
from bert4x.snippets import sequence_padding, text_segmentate  # noqa: F401

__all__ = ["to_array", "is_string", "strQ2B", "string_matching", "open", "parallel_apply",
           "parallel_apply_generator", "sequence_padding", "truncate_sequences",
           "text_segmentate", "DataGenerator", "ViterbiDecoder", "softmax",
           "AutoRegressiveDecoder", "insert_arguments", "delete_arguments",
           "longest_common_substring", "longest_common_subsequence",
           "lowercase_and_normalize", "uniout"]

#: ``from bert4keras.snippets import uniout`` loads the ``uniout`` package on
#: Python 2 (to print Chinese in lists) and gives None on Python 3; so here.
uniout = None


def to_array(*args):
    """``np.array`` of each argument; one argument gives one array."""
    arrays = [np.array(a) for a in args]
    return arrays[0] if len(args) == 1 else arrays


def is_string(s):
    """Whether ``s`` is a ``str``."""
    return isinstance(s, str)


def strQ2B(ustring):  # noqa: N802  (bert4keras's name)
    """Full-width characters (U+FF01-FF5E, the ideographic space) to their ASCII forms.

    (bert4keras 0.11.5's version calls Python 2's ``unichr`` and fails on Python 3.)
    """
    def half(char):
        code = ord(char)
        if code == 0x3000:
            return " "
        return chr(code - 0xFEE0) if 0xFF01 <= code <= 0xFF5E else char
    return "".join(half(char) for char in ustring)


def string_matching(s, keywords):
    """Whether one of the regular expressions ``keywords`` is found in ``s``."""
    return any(re.search(keyword, s) for keyword in keywords)


def lowercase_and_normalize(text):
    """Lower-case, NFD, and drop combining marks (what ``do_lower_case`` does)."""
    text = unicodedata.normalize("NFD", text.lower())
    return "".join(char for char in text if unicodedata.category(char) != "Mn")


class open:  # noqa: N801  (bert4keras's name, shadowing the built-in on purpose)
    """``open`` with line indexing: ``open(path, indexable=True)[i]`` is line ``i``.

    Files are opened through :mod:`bert4x.storage`, so ``name`` may be a
    ``gs://`` (or ``ram://``) path too.

    Args:
        name, mode, encoding, errors: as the built-in ``open`` (``mode`` one of
            ``r rb w wb a ab``).
        indexable: build the line offsets (``True``), or a path where they are
            cached as JSON (read if it exists, written otherwise).
    """

    def __init__(self, name, mode="r", encoding=None, errors="strict", indexable=False):
        self.name = name
        self.file = storage.open(name, mode, encoding=encoding, errors=errors)
        self.offsets = None
        if indexable:
            if isinstance(indexable, str) and storage.exists(indexable):
                self.offsets = json.loads(storage.read_text(indexable))
            else:
                self.offsets, offset = [], 0
                while self.file.readline():
                    self.offsets.append(offset)
                    offset = self.file.tell()
                self.file.seek(0)
                if isinstance(indexable, str):
                    storage.atomic_write(indexable, json.dumps(self.offsets))

    def __getitem__(self, index):
        self.file.seek(self.offsets[index])
        return self.file.readline()

    def __len__(self):
        if self.offsets is None:
            raise TypeError(f"{self.name} was opened without indexable=True")
        return len(self.offsets)

    def __iter__(self):
        return iter(self.file)

    def __next__(self):
        return next(self.file)

    def __getattr__(self, name):  # read, readline, readlines, write, tell, seek ...
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


_WORKER = {}


def _seed_worker(seeds):
    if not seeds.empty():
        np.random.seed(seeds.get())


def _apply_indexed(job):
    index, item = job
    return index, _WORKER["func"](item)


def parallel_apply_generator(func, iterable, workers, max_queue_size, dummy=False,
                             random_seeds=True):
    """Yield ``(index, func(item))`` as workers finish (unordered).

    Worker processes are forked, so ``func`` may be a lambda or closure, as in
    bert4keras.

    Args:
        func: applied to each item.
        iterable: the items.
        workers: processes (threads with ``dummy=True``).
        max_queue_size: items handed to a worker at a time at most.
        dummy: threads instead of processes.
        random_seeds: ``True`` reseeds NumPy in each worker from fresh entropy;
            a list gives one seed per worker; ``False``/None leaves it.
    """
    import multiprocessing
    import multiprocessing.dummy

    seeds = [None] * workers if random_seeds is True else list(random_seeds or [])
    context = multiprocessing.dummy if dummy else multiprocessing.get_context("fork")
    seed_queue = context.Queue()
    for seed in seeds:
        seed_queue.put(seed)
    _WORKER["func"] = func
    with context.Pool(workers, _seed_worker, (seed_queue,)) as pool:
        chunksize = max(1, min(int(max_queue_size), 64) // max(workers, 1))
        yield from pool.imap_unordered(_apply_indexed, enumerate(iterable), chunksize)


def parallel_apply(func, iterable, workers, max_queue_size, callback=None, dummy=False,
                   random_seeds=True, unordered=True):
    """``func`` over ``iterable`` in parallel (see `parallel_apply_generator`).

    Returns the results (in input order when ``unordered=False``), or None after
    calling ``callback(result)`` on each when a callback is given.
    """
    results = parallel_apply_generator(func, iterable, workers, max_queue_size, dummy,
                                       random_seeds)
    if callback is not None:
        for _, result in results:
            callback(result)
        return None
    if not unordered:
        results = sorted(results, key=lambda pair: pair[0])
    return [result for _, result in results]


def truncate_sequences(maxlen, indices, *sequences):
    """Shorten the lists, in place, until their total length is at most ``maxlen``.

    bert4keras's semantics: empty or None sequences are dropped first (so
    per-sequence ``indices`` refer to the non-empty ones), then items are
    popped at ``indices[i]`` from the longest (the first on ties). bert4x's
    :func:`bert4x.snippets.truncate_sequences` returns new lists instead.

    Returns:
        The non-empty input lists themselves, shortened.
    """
    sequences = [s for s in sequences if s]
    shortened = _native.truncate_sequences(maxlen, indices, *sequences)
    for sequence, new in zip(sequences, shortened):
        sequence[:] = new
    return sequences


class DataGenerator(_NativeDataGenerator):
    """bert4keras's data generator: subclass it and write ``__iter__(random=False)``.

    Same as :class:`bert4x.snippets.DataGenerator` plus ``fortest``, and a
    ``forfit`` whose batches may change length at any step. Shuffling
    uses the generator's own NumPy generator (``seed=``), not the global
    ``np.random`` state bert4keras drew from.
    """

    def forfit(self, random=True):
        """Batches endlessly, epoch after epoch, for ``model.fit``.

        On the TensorFlow backend this is a ``tf.data.Dataset`` whose axes
        are all variable, as tf.keras 2 read generators, but for arrays of shape
        ``[batch, 1]`` in the first batch (one label per row, which Keras 3's
        losses need to know is 1): Keras 3 fixes every axis that has one size in
        the first two batches of a generator, and fails on a later batch padded
        to another length (or with more spans, e.g. labels ``[batch, n_spans,
        2]``). On the other backends it is the generator.
        """
        if keras.backend.backend() != "tensorflow":
            return super().forfit(random)
        first = next(iter(self.__iter__(False)), None)
        if first is None:
            raise ValueError(f"{type(self).__name__}.__iter__ yielded nothing.")
        first = _native.as_keras_batch(first)
        flat = keras.tree.flatten(first)
        types = keras.tree.pack_sequence_as(first, [np.asarray(x).dtype for x in flat])
        shapes = keras.tree.pack_sequence_as(first, [
            [None, 1] if np.shape(x)[1:] == (1,) else [None] * np.ndim(x) for x in flat])
        return self.to_dataset(types=types, shapes=shapes, random=random)

    def fortest(self, random=False):
        """Yield the inputs ``x`` of each batch endlessly (for ``model.predict``)."""
        while True:
            for batch in self.__iter__(random):
                yield _native.as_keras_batch(batch)[0]


class ViterbiDecoder:
    """Best label path of a linear-chain CRF, as bert4keras decodes it.

    Args:
        trans: transition scores ``[labels, labels]`` (e.g. ``K.eval(crf.trans)``).
        starts: labels a path may start with (None: all).
        ends: labels a path may end with (None: all).
    """

    def __init__(self, trans, starts=None, ends=None):
        self.trans = np.asarray(trans)
        self.num_labels = len(self.trans)
        self.non_starts = [] if starts is None else [
            i for i in range(self.num_labels) if i not in starts]
        self.non_ends = [] if ends is None else [
            i for i in range(self.num_labels) if i not in ends]

    def decode(self, nodes):
        """The best path of emission scores ``nodes`` ``[length, labels]``.

        As in bert4keras, ``nodes`` is modified in place (excluded start and
        end labels get ``-inf``); ties go to the lower label.
        """
        nodes[0, self.non_starts] -= np.inf
        nodes[-1, self.non_ends] -= np.inf
        scores = nodes[0]
        backpointers = []
        for emissions in nodes[1:]:
            totals = scores[:, None] + self.trans + emissions[None, :]
            backpointers.append(totals.argmax(axis=0))
            scores = totals.max(axis=0)
        path = [int(scores.argmax())]
        for pointers in reversed(backpointers):
            path.append(int(pointers[path[-1]]))
        return np.array(path[::-1])


def softmax(x, axis=-1):
    """NumPy softmax."""
    x = x - x.max(axis=axis, keepdims=True)
    x = np.exp(x)
    return x / x.sum(axis=axis, keepdims=True)


class _LastToken(keras.layers.Layer):
    """``x[:, -1]`` (the scores after the last token)."""

    def call(self, inputs):
        return inputs[:, -1]

    def compute_mask(self, inputs, mask=None):
        return None


class AutoRegressiveDecoder:
    """bert4keras's decoder: subclass it, decorate ``predict`` with ``wraps``.

    ``predict(self, inputs, output_ids, states)`` returns the next-token
    probabilities (``default_rtype="probas"``) or logits of every row of
    ``output_ids`` (and ``states`` with ``use_states=True``). Searches follow
    bert4keras exactly, which differs from :class:`bert4x.decoding.Decoder`:

    * ``beam_search`` keeps the ``topk`` best of all extensions (finished ones
      included) ranked by raw summed log-probabilities, with no length
      penalty, and stops as soon as the best one has ended (``min_ends`` end
      tokens). It returns the ids of one sequence, ``start_id`` and the end
      token included.
    * ``random_sample`` draws with the global ``np.random`` state (seed it with
      ``np.random.seed``); top-k, then top-p keeping the most likely tokens
      until their mass reaches ``topp``. ``topp`` >= 1 keeps every token
      (bert4keras does not check it). Returns ``n`` id arrays in the order
      they finished.

    Args:
        start_id: the first id of ``output_ids`` (None: start empty).
        end_id: the end token.
        maxlen: the most generated tokens.
        minlen: the fewest ``output_ids`` (start included) before a sequence may end.
    """

    def __init__(self, start_id, end_id, maxlen, minlen=1):
        self.start_id, self.end_id = start_id, end_id
        self.maxlen, self.minlen = maxlen, minlen
        self.models = {}
        self.first_output_ids = (np.empty((1, 0), dtype=int) if start_id is None
                                 else np.array([[start_id]]))

    @staticmethod
    def wraps(default_rtype="probas", use_states=False):
        """Decorate ``predict`` so it returns ``(scores, states)`` of the asked kind.

        The decorated ``predict(inputs, output_ids, states, temperature=1,
        rtype=default_rtype)`` applies the temperature (to logits, or as a
        power of probabilities) and returns probabilities for ``"probas"`` and
        log-probabilities (``log(p + 1e-12)``) for ``"logits"``.
        """
        def decorator(predict):
            def new_predict(self, inputs, output_ids, states, temperature=1,
                            rtype=default_rtype):
                if rtype not in ("probas", "logits"):
                    raise ValueError(f"rtype must be 'probas' or 'logits', got {rtype!r}")
                prediction = predict(self, inputs, output_ids, states)
                scores, states = prediction if use_states else (prediction, None)
                scores = np.asarray(scores)
                if default_rtype == "logits":
                    scores = softmax(scores / temperature)
                elif temperature != 1:
                    scores = np.power(scores, 1.0 / temperature)
                    scores = scores / scores.sum(axis=-1, keepdims=True)
                if rtype == "probas":
                    return scores, states
                return np.log(scores + 1e-12), states
            return new_predict
        return decorator

    def last_token(self, model):
        """A model with ``model``'s inputs returning each output's last position."""
        if model not in self.models:
            outputs = [_LastToken()(output) for output in model.outputs]
            self.models[model] = keras.Model(model.inputs, outputs)
        return self.models[model]

    def predict(self, inputs, output_ids, states=None):
        raise NotImplementedError(
            f"{type(self).__name__} must implement predict(inputs, output_ids, states), "
            "decorated with AutoRegressiveDecoder.wraps(...)")

    def _ended(self, output_ids, min_ends):
        is_end = output_ids[:, -1] == self.end_id
        end_counts = (output_ids == self.end_id).sum(1)
        return is_end, end_counts, is_end & (end_counts >= min_ends)

    def beam_search(self, inputs, topk, states=None, temperature=1, min_ends=1):
        """The best sequence by summed log-probability (see the class docstring)."""
        inputs = [np.array([i]) for i in inputs]
        output_ids, output_scores = self.first_output_ids, np.zeros(1)
        for step in range(self.maxlen):
            scores, states = self.predict(inputs, output_ids, states, temperature, "logits")
            if step == 0:
                inputs = [np.repeat(i, topk, axis=0) for i in inputs]
            scores = output_scores.reshape((-1, 1)) + scores
            indices = scores.argpartition(-topk, axis=None)[-topk:]
            rows, tokens = indices // scores.shape[1], indices % scores.shape[1]
            output_ids = np.concatenate([output_ids[rows], tokens[:, None]], 1)
            output_scores = np.take_along_axis(scores, indices, axis=None)
            _, _, finished = self._ended(output_ids, min_ends)
            if output_ids.shape[1] >= self.minlen:
                best = output_scores.argmax()
                if finished[best]:
                    return output_ids[best]
                if finished.any():
                    keep = ~finished
                    inputs = [i[keep] for i in inputs]
                    output_ids, output_scores = output_ids[keep], output_scores[keep]
                    topk = int(keep.sum())
        return output_ids[output_scores.argmax()]

    def random_sample(self, inputs, n, topk=None, topp=None, states=None, temperature=1,
                      min_ends=1):
        """``n`` sampled sequences (see the class docstring)."""
        inputs = [np.array([i]) for i in inputs]
        output_ids, results = self.first_output_ids, []
        for step in range(self.maxlen):
            probas, states = self.predict(inputs, output_ids, states, temperature, "probas")
            probas = probas / probas.sum(axis=1, keepdims=True)
            if step == 0:
                probas = np.repeat(probas, n, axis=0)
                inputs = [np.repeat(i, n, axis=0) for i in inputs]
                output_ids = np.repeat(output_ids, n, axis=0)
            sample_ids = self._sample(probas, topk, topp)
            output_ids = np.concatenate([output_ids, sample_ids], 1)
            _, _, finished = self._ended(output_ids, min_ends)
            if output_ids.shape[1] >= self.minlen and finished.any():
                results.extend(output_ids[finished])
                keep = ~finished
                inputs = [i[keep] for i in inputs]
                output_ids = output_ids[keep]
                if len(output_ids) == 0:
                    break
        results.extend(output_ids)
        return results

    @staticmethod
    def _sample(probas, topk, topp):
        """One draw per row: top-k, then top-p, with ``np.random.choice``."""
        k_indices = p_indices = None
        if topk is not None:
            k_indices = probas.argpartition(-topk, axis=1)[:, -topk:]
            probas = np.take_along_axis(probas, k_indices, axis=1)
            probas = probas / probas.sum(axis=1, keepdims=True)
        if topp is not None:
            p_indices = probas.argsort(axis=1)[:, ::-1]
            probas = np.take_along_axis(probas, p_indices, axis=1)
            beyond = np.roll(np.cumsum(probas, axis=1) >= topp, 1, axis=1)
            beyond[:, 0] = False
            probas[beyond] = 0
            probas = probas / probas.sum(axis=1, keepdims=True)
        sample_ids = np.apply_along_axis(lambda p: np.random.choice(len(p), p=p), 1, probas)
        sample_ids = sample_ids.reshape((-1, 1))
        if p_indices is not None:
            sample_ids = np.take_along_axis(p_indices, sample_ids, axis=1)
        if k_indices is not None:
            sample_ids = np.take_along_axis(k_indices, sample_ids, axis=1)
        return sample_ids


def insert_arguments(**arguments):
    """Decorator adding keyword arguments (stored as attributes) to a method."""
    def decorator(func):
        def new_func(self, *args, **kwargs):
            for name, default in arguments.items():
                setattr(self, name, kwargs.pop(name, default))
            return func(self, *args, **kwargs)
        return new_func
    return decorator


def delete_arguments(*arguments):
    """Decorator refusing the named keyword arguments with a ``TypeError``."""
    def decorator(func):
        def new_func(self, *args, **kwargs):
            for name in arguments:
                if name in kwargs:
                    raise TypeError(f"{type(self).__name__} got an unexpected keyword "
                                    f"argument '{name}'")
            return func(self, *args, **kwargs)
        return new_func
    return decorator


def longest_common_substring(source, target):
    """``(length, (i0, i1, j0, j1))``: ``source[i0:i1] == target[j0:j1]``, longest."""
    runs, best, span = defaultdict(int), 0, (0, 0, 0, 0)
    for i, a in enumerate(source, 1):
        for j, b in enumerate(target, 1):
            if a == b:
                runs[i, j] = runs[i - 1, j - 1] + 1
                if runs[i, j] > best:
                    best = runs[i, j]
                    span = (i - best, i, j - best, j)
    return best, span


def longest_common_subsequence(source, target):
    """``(length, [(i, j), ...])``: a longest common subsequence as index pairs."""
    table = defaultdict(int)
    for i, a in enumerate(source, 1):
        for j, b in enumerate(target, 1):
            if a == b:
                table[i, j] = table[i - 1, j - 1] + 1
            else:
                table[i, j] = max(table[i, j - 1], table[i - 1, j])
    length, pairs = table[len(source), len(target)], []
    i, j = len(source) - 1, len(target) - 1
    while len(pairs) < length:
        if source[i] == target[j]:
            pairs.append((i, j))
            i, j = i - 1, j - 1
        elif table[i + 1, j] > table[i, j + 1]:
            j -= 1
        else:
            i -= 1
    return length, pairs[::-1]
