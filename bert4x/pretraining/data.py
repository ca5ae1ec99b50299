"""Corpus to packed TFRecord shards, with word boundaries for whole-word masking.

A corpus is a set of text files: one document per line (``.txt`` and anything else),
or JSON lines with a ``text`` field (``.jsonl``/``.json``). Each file is tokenised
with Google's BERT tokenizer (:class:`bert4x.tokenizers.Tokenizer`); its documents,
each followed by ``[SEP]``, form one token stream that is cut into sequences of
``seq_length`` tokens, each starting with ``[CLS]`` and padded with ``[PAD]`` (id 0)
at the end of the file only. A sequence ends at a word boundary when the next word
does not fit, so words are never split across sequences (a word longer than a
whole sequence is the only exception).

Every record holds two int64 features of length ``seq_length``:

* ``input_ids``: the token ids in the *full* vocabulary the data was made with;
* ``word_ids``: for each token the index of its word inside the sequence (0, 1, ...),
  -1 for ``[CLS]``, ``[SEP]`` and padding. A word is a whole WordPiece word
  (``##`` pieces join the piece before), or, with ``word_segmenter="jieba"``, a jieba
  word (``jieba.lcut(text, HMM=False)``): the tokens whose text starts inside the
  same jieba word form one word.

The work is parallel over input files (one process per file). A file's shards are
written to a temporary name and renamed, and a ``.done.json`` marker, written last and
atomically, records the file's shards, size and token counts; a rerun skips files
whose marker matches, and rewrites no shard that already exists. ``dataset.json``
sums up the folder (settings, example counts, token counts for vocabulary trimming).
"""

import hashlib
import json
import os
import pickle
import queue
import subprocess
import sys
import threading
import uuid

import numpy as np

from bert4x import storage
from bert4x.tokenizers import Tokenizer, load_vocab
from bert4x.vocabularies import subset_vocabulary

DATASET_FILE = "dataset.json"
TRAIN_PREFIX = "train"
VALID_PREFIX = "valid"
WORD_SEGMENTERS = ("wordpiece", "jieba")


# ----------------------------------------------------------------- documents
def read_documents(path, input_format="auto"):
    """Yield the documents of one corpus file, skipping blank ones.

    Args:
        path: a text file (one document per line) or JSON lines (``{"text": ...}``).
        input_format: ``"text"``, ``"jsonl"`` or ``"auto"`` (``.jsonl``/``.json``
            files are JSON lines).

    Raises:
        ValueError: a JSON line that is not an object with a string ``text``
            (the message names the file and line).

    Example:
        >>> docs = list(read_documents("corpus.txt"))  # doctest: +SKIP
    """
    if input_format == "auto":
        input_format = "jsonl" if path.endswith((".jsonl", ".json")) else "text"
    if input_format not in ("text", "jsonl"):
        raise ValueError(f"unknown input_format {input_format!r}; expected 'text', "
                         "'jsonl' or 'auto'")
    with storage.open(path, encoding="utf-8") as file:
        yield from _documents(path, file, input_format)


def _documents(path, file, input_format):
    line_number = 0
    try:
        for line_number, line in enumerate(file, 1):
            if input_format == "jsonl":
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{line_number}: not valid JSON ({error})") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise ValueError(f"{path}:{line_number}: expected a JSON object with a "
                                     "string 'text' field")
                text = record["text"]
            else:
                text = line
            text = text.strip()
            if text:
                yield text
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text after line {line_number} ({error})") from None


# ------------------------------------------------------------- tokenisation
class DocumentTokenizer:
    """Tokenise a document into ids and word indices for whole-word masking.

    Args:
        vocab_path: the ``vocab.txt``.
        do_lower_case: as for :class:`bert4x.tokenizers.Tokenizer`.
        word_segmenter: ``"wordpiece"`` (a word is a WordPiece word) or ``"jieba"``
            (Chinese words from jieba; other text still groups ``##`` pieces).

    Example:
        >>> tokenize = DocumentTokenizer("vocab.txt", True, "jieba")  # doctest: +SKIP
        >>> ids, words = tokenize("我爱北京")  # doctest: +SKIP
        >>> words  # 我 | 爱 | 北京
        [0, 1, 2, 2]
    """

    def __init__(self, vocab_path, do_lower_case=True, word_segmenter="wordpiece"):
        if word_segmenter not in WORD_SEGMENTERS:
            raise ValueError(f"unknown word_segmenter {word_segmenter!r}; expected one of "
                             f"{WORD_SEGMENTERS}")
        self.tokenizer = Tokenizer(vocab_path, do_lower_case=do_lower_case,
                                   token_start=None, token_end=None)
        for token in ("[CLS]", "[SEP]", "[PAD]"):
            if self.tokenizer.token_dict.get(token) is None:
                raise ValueError(f"vocabulary {vocab_path} has no {token} token")
        self.vocab = self.tokenizer.token_dict
        self.word_segmenter = word_segmenter
        self._jieba = None
        if word_segmenter == "jieba":
            import jieba
            jieba.setLogLevel(60)  # silence the dictionary-loading banner
            jieba.initialize()
            self._jieba = jieba

    def __call__(self, text):
        """Return ``(token_ids, word_starts)``: ``word_starts[i]`` is True when
        token i begins a new word."""
        tokens, spans = self.tokenizer.tokenize_with_spans(text)
        ids = [self.vocab.get(token, self.tokenizer.unk_id) for token in tokens]
        char_word = None
        if self._jieba is not None:
            words = self._jieba.lcut(text, HMM=False)
            char_word = np.repeat(np.arange(len(words)), [len(word) for word in words])
        starts = []
        previous_word = None
        for token, span in zip(tokens, spans):
            if token.startswith("##") and starts:
                starts.append(False)
                continue
            if char_word is not None and span is not None and span[0] < len(char_word):
                word = int(char_word[span[0]])
                starts.append(word != previous_word or not starts)
                previous_word = word
            else:
                starts.append(True)
                previous_word = None
        return ids, starts


# ----------------------------------------------------------------- packing
class SequencePacker:
    """Cut a stream of documents into ``[CLS]``-led sequences of ``seq_length``.

    Feed documents with :meth:`add_document`; finished sequences come out of it and
    of :meth:`flush` as ``(input_ids, word_ids)`` int64 arrays.
    """

    def __init__(self, seq_length, cls_id, sep_id, pad_id=0):
        if seq_length < 4:
            raise ValueError(f"seq_length must be at least 4, got {seq_length}")
        self.seq_length, self.cls_id, self.sep_id, self.pad_id = (
            seq_length, cls_id, sep_id, pad_id)
        self._ids, self._words, self._word_count = [cls_id], [-1], 0

    def _emit(self):
        length = len(self._ids)
        ids = np.full(self.seq_length, self.pad_id, np.int64)
        words = np.full(self.seq_length, -1, np.int64)
        ids[:length], words[:length] = self._ids, self._words
        self._ids, self._words, self._word_count = [self.cls_id], [-1], 0
        return ids, words

    def _append_word(self, ids, out):
        room = self.seq_length - len(self._ids)
        if len(ids) > room and len(self._ids) > 1:
            out.append(self._emit())
            room = self.seq_length - 1
        while ids:  # a word longer than a whole sequence is the only one split
            piece, ids = ids[:room], ids[room:]
            self._ids.extend(piece)
            self._words.extend([self._word_count] * len(piece))
            self._word_count += 1
            if ids:
                out.append(self._emit())
                room = self.seq_length - 1

    def add_document(self, token_ids, word_starts):
        """Add one document and its ``[SEP]``; return the sequences it completed."""
        out = []
        word = []
        for token_id, start in zip(token_ids, word_starts):
            if start and word:
                self._append_word(word, out)
                word = []
            word.append(token_id)
        if word:
            self._append_word(word, out)
        if len(self._ids) == self.seq_length:
            out.append(self._emit())
        self._ids.append(self.sep_id)
        self._words.append(-1)
        if len(self._ids) == self.seq_length:
            out.append(self._emit())
        return out

    def flush(self):
        """The last, padded sequence (if it holds any token besides ``[CLS]``/``[SEP]``)."""
        if any(word >= 0 for word in self._words):
            return [self._emit()]
        self._ids, self._words, self._word_count = [self.cls_id], [-1], 0
        return []


# ---------------------------------------------------------------- TFRecords
def _serialize(tf, input_ids, word_ids):
    feature = {
        "input_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=input_ids)),
        "word_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=word_ids)),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_shard(path, sequences):
    """Write ``sequences`` to ``path`` atomically (temporary name, then rename; on
    object stores the rename is a copy, and readers only ever list finished shards
    through the ``.done.json`` markers)."""
    import tensorflow as tf
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with tf.io.TFRecordWriter(temporary) as writer:
            for input_ids, word_ids in sequences:
                writer.write(_serialize(tf, input_ids, word_ids))
        storage.rename(temporary, path, overwrite=True)
    except BaseException:
        if storage.exists(temporary):
            storage.remove(temporary)
        raise


def _atomic_write_json(path, value):
    storage.atomic_write(path, json.dumps(value, indent=1, ensure_ascii=False))


def _read_json(path):
    return json.loads(storage.read_text(path))


def _file_key(index, path):
    stem = os.path.splitext(os.path.basename(path))[0]
    stem = "".join(char if char.isalnum() or char in "-_" else "_" for char in stem)
    return f"{index:04d}-{stem}"


def _source_fingerprint(path):
    return {"path": _absolute(path), "size": storage.getsize(path),
            "mtime": storage.getmtime(path)}


def _absolute(path):
    """A local path made absolute; a ``gs://`` path as it is."""
    return os.path.abspath(path) if storage.is_local(path) else path


def process_file(job):
    """Worker: tokenise, pack and shard one input file. Returns its marker dict."""
    (index, path, output_dir, settings) = job
    key = _file_key(index, path)
    marker_path = storage.join(output_dir, key + ".done.json")
    source = _source_fingerprint(path)
    if storage.isfile(marker_path):
        marker = _read_json(marker_path)
        shards = marker["train_shards"] + marker["valid_shards"]
        if marker.get("source") == source and all(
                storage.isfile(storage.join(output_dir, shard)) for shard in shards):
            marker["skipped"] = True
            return marker
    tokenize = DocumentTokenizer(settings["vocab_path"], settings["do_lower_case"],
                                 settings["word_segmenter"])
    vocab = tokenize.vocab
    every = settings["validation_every"]
    packers = {name: SequencePacker(settings["seq_length"], vocab["[CLS]"], vocab["[SEP]"],
                                    vocab["[PAD]"]) for name in (TRAIN_PREFIX, VALID_PREFIX)}
    pending = {TRAIN_PREFIX: [], VALID_PREFIX: []}
    shards = {TRAIN_PREFIX: [], VALID_PREFIX: []}
    examples = {TRAIN_PREFIX: 0, VALID_PREFIX: 0}
    counts = np.zeros(max(vocab.values()) + 1, np.int64)
    documents = tokens = 0

    def write(name, final=False):
        while len(pending[name]) >= settings["shard_size"] or (final and pending[name]):
            chunk = pending[name][:settings["shard_size"]]
            pending[name] = pending[name][settings["shard_size"]:]
            shard = f"{name}-{key}-{len(shards[name]):05d}.tfrecord"
            if not storage.isfile(storage.join(output_dir, shard)):
                _write_shard(storage.join(output_dir, shard), chunk)
            shards[name].append(shard)
            examples[name] += len(chunk)

    for document in read_documents(path, settings["input_format"]):
        ids, starts = tokenize(document)
        if not ids:
            continue
        name = VALID_PREFIX if every and documents % every == every - 1 else TRAIN_PREFIX
        documents += 1
        tokens += len(ids)
        np.add.at(counts, ids, 1)
        pending[name].extend(packers[name].add_document(ids, starts))
        write(name)
    for name in pending:
        pending[name].extend(packers[name].flush())
        write(name, final=True)
    nonzero = np.nonzero(counts)[0]
    marker = {
        "source": source, "documents": documents, "tokens": tokens,
        "train_shards": shards[TRAIN_PREFIX], "valid_shards": shards[VALID_PREFIX],
        "train_examples": examples[TRAIN_PREFIX], "valid_examples": examples[VALID_PREFIX],
        "token_counts": [[int(i), int(counts[i])] for i in nonzero],
    }
    _atomic_write_json(marker_path, marker)
    marker["skipped"] = False
    return marker


def _expand_inputs(inputs):
    paths = []
    for pattern in inputs:
        pattern = os.fspath(pattern)
        matches = storage.glob(os.path.expanduser(pattern) if storage.is_local(pattern)
                               else pattern)
        if not matches:
            raise FileNotFoundError(f"corpus input {pattern!r} matches no file")
        paths.extend(match for match in matches if storage.isfile(match))
    return paths


def _vocab_digest(path):
    return hashlib.sha256(storage.read_bytes(path)).hexdigest()[:16]


def make_pretraining_data(inputs, output_dir, vocab_path, seq_length=128, do_lower_case=True,
                          word_segmenter="wordpiece", shard_size=10000,
                          validation_fraction=0.0, input_format="auto", num_workers=None,
                          progress=True):
    """Turn text files into packed TFRecord shards (see the module docstring).

    Args:
        inputs: file paths or glob patterns (or one of them).
        output_dir: the shard folder (created; rerunning resumes): local, ``gs://``
            or any file system of ``tf.io.gfile`` (``ram://`` runs in this process,
            without worker processes). The corpus files are read from local disk.
        vocab_path: the (full) ``vocab.txt``; ids in the shards refer to it.
        seq_length: tokens per sequence, ``[CLS]`` included.
        do_lower_case: lower-case and strip accents.
        word_segmenter: ``"wordpiece"`` or ``"jieba"`` (Chinese whole-word masking).
        shard_size: sequences per shard.
        validation_fraction: fraction of documents held out into ``valid-*`` shards
            (every ``round(1 / fraction)``-th document of each file).
        input_format: ``"auto"``, ``"text"`` or ``"jsonl"``.
        num_workers: processes (default: one per file, at most the CPU count);
            1 works in this process.
        progress: show a tqdm progress bar over input bytes.

    Returns:
        The ``dataset.json`` summary: settings, ``train_examples``,
        ``valid_examples``, ``train_shards``, ``valid_shards``, ``token_counts``.

    Raises:
        FileNotFoundError: an input matches no file, or the vocabulary is missing.
        ValueError: the corpus has no document, or ``output_dir`` holds data made
            with other settings.

    Example:
        >>> summary = make_pretraining_data(  # doctest: +SKIP
        ...     ["corpus/*.txt"], "data/tiny", "vocab.txt", seq_length=128,
        ...     word_segmenter="jieba", validation_fraction=0.01)
        >>> summary["train_examples"]  # doctest: +SKIP
        41234
    """
    vocab_path = os.fspath(vocab_path)
    if not storage.isfile(vocab_path):
        raise FileNotFoundError(f"vocabulary file not found: {vocab_path!r}")
    if word_segmenter not in WORD_SEGMENTERS:
        raise ValueError(f"unknown word_segmenter {word_segmenter!r}; expected one of "
                         f"{WORD_SEGMENTERS}")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]  # one path or glob, not a sequence of letters
    paths = _expand_inputs(list(inputs))
    if not paths:
        raise ValueError(f"no corpus file in {list(inputs)}")
    storage.makedirs(output_dir)
    settings = {
        "vocab_path": _absolute(vocab_path), "vocab_sha256": _vocab_digest(vocab_path),
        "seq_length": int(seq_length), "do_lower_case": bool(do_lower_case),
        "word_segmenter": word_segmenter, "shard_size": int(shard_size),
        "validation_every": round(1 / validation_fraction) if validation_fraction else 0,
        "input_format": input_format,
    }
    summary_path = storage.join(output_dir, DATASET_FILE)
    _check_existing_settings(output_dir, settings)
    _atomic_write_json(storage.join(output_dir, "settings.json"), settings)
    jobs = [(index, path, output_dir, settings) for index, path in enumerate(paths)]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(storage.getsize(path) for path in paths), unit="B", unit_scale=True, desc="make_data")
    markers = []
    workers = num_workers or min(len(jobs), os.cpu_count() or 1)
    if storage.scheme(output_dir) == "ram":
        workers = 1  # ram:// lives in this process: worker processes cannot write there
    try:
        if workers <= 1 or len(jobs) == 1:
            results = map(process_file, jobs)
        else:
            results = _in_worker_processes(jobs, min(workers, len(jobs)))
        for marker in results:
            markers.append(marker)
            if bar is not None:
                bar.update(marker["source"]["size"])
    finally:
        if bar is not None:
            bar.close()
    markers.sort(key=lambda marker: marker["train_shards"][:1] + marker["valid_shards"][:1])
    counts = {}
    for marker in markers:
        for token_id, count in marker["token_counts"]:
            counts[token_id] = counts.get(token_id, 0) + count
    summary = dict(settings)
    summary.update(
        inputs=[_absolute(path) for path in paths],
        documents=sum(marker["documents"] for marker in markers),
        tokens=sum(marker["tokens"] for marker in markers),
        train_examples=sum(marker["train_examples"] for marker in markers),
        valid_examples=sum(marker["valid_examples"] for marker in markers),
        train_shards=sorted(s for marker in markers for s in marker["train_shards"]),
        valid_shards=sorted(s for marker in markers for s in marker["valid_shards"]),
        files_skipped=sum(bool(marker.get("skipped")) for marker in markers),
        token_counts=sorted([int(k), int(v)] for k, v in counts.items()),
    )
    if summary["documents"] == 0:
        raise ValueError(f"the corpus is empty: no non-blank document in {paths}")
    _atomic_write_json(summary_path, summary)
    return summary


class _WorkerProcess:
    """One ``python -m bert4x.pretraining.data_worker`` process (see that module for
    why the workers are not ``multiprocessing``'s: they never run the caller's script)."""

    def __init__(self):
        # The worker imports the bert4x this process runs, wherever it came from.
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
            __file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [package_root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bert4x.pretraining.data_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def run(self, job):
        pickle.dump(job, self.process.stdin)
        self.process.stdin.flush()
        try:
            ok, value = pickle.load(self.process.stdout)
        except EOFError:
            raise RuntimeError(f"the data-preparation worker for {job[1]} died (exit code "
                               f"{self.process.wait()}; its error is printed above)") from None
        if not ok:
            raise value
        return value

    def close(self):
        self.process.stdin.close()
        self.process.wait()
        self.process.stdout.close()


def _in_worker_processes(jobs, workers):
    """Yield the markers of ``jobs`` (in the order they finish), each processed by
    one of ``workers`` worker processes; the first error is raised here."""
    pending, finished = queue.Queue(), queue.Queue()
    for job in jobs:
        pending.put(job)

    def serve():
        worker = None
        try:
            worker = _WorkerProcess()
            while True:
                try:
                    job = pending.get_nowait()
                except queue.Empty:
                    return
                finished.put((True, worker.run(job)))
        except BaseException as error:  # handed to the caller's thread
            finished.put((False, error))
        finally:
            if worker is not None:
                worker.close()

    threads = [threading.Thread(target=serve, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    try:
        for _ in jobs:
            ok, value = finished.get()
            if not ok:
                raise value
            yield value
    finally:
        while not pending.empty():  # on an error, the other workers stop after their job
            pending.get_nowait()
        for thread in threads:
            thread.join()


def _check_existing_settings(output_dir, settings):
    path = storage.join(output_dir, "settings.json")
    if not storage.isfile(path):
        return
    old = _read_json(path)
    differing = {key: (old.get(key), value) for key, value in settings.items()
                 if key != "vocab_path" and old.get(key) != value}
    if differing:
        details = ", ".join(f"{key}: {old!r} there, {new!r} now"
                            for key, (old, new) in differing.items())
        raise ValueError(f"{output_dir} holds data made with other settings ({details}); "
                         "use another output folder or delete it")


def load_dataset_summary(data_dir):
    """Read ``dataset.json`` of a folder made by :func:`make_pretraining_data`.

    Raises:
        FileNotFoundError: naming the folder and the command that makes it.
    """
    path = storage.join(data_dir, DATASET_FILE)
    if not storage.isfile(path):
        raise FileNotFoundError(
            f"no {DATASET_FILE} in {data_dir!r}: make the data first "
            "(python pretraining/make_data.py --config ...)")
    try:
        return _read_json(path)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is damaged ({error}); run make_data.py again") from None


def trimmed_vocabulary(vocab_path, token_counts, min_count=1):
    """Keep the special tokens and the tokens seen ``min_count`` times or more.

    Args:
        vocab_path: the full ``vocab.txt`` the data was made with.
        token_counts: ``[[token_id, count], ...]`` from ``dataset.json``.
        min_count: the least count a token needs to stay.

    Returns:
        ``(tokens, keep_tokens)``: the kept tokens in order (the new ``vocab.txt``)
        and their ids in the full vocabulary. The special tokens come first.

    Example:
        >>> tokens, keep = trimmed_vocabulary("vocab.txt", [[101, 3], [872, 1]])  # doctest: +SKIP
    """
    return subset_vocabulary(load_vocab(vocab_path), [index for index, count in token_counts
                                                      if count >= min_count])
