"""Input pipeline of pretraining alone: sequences per second per CPU core.

What one training host must do for every sequence: read it from a TFRecord shard,
parse it, draw its whole-word mask (``bert4x.pretraining.pipeline.Masker``, 15% of
words, 80/10/10), and batch it. This script writes synthetic shards in the format of
``make_data.py`` (sequences of ``--seq-length`` with 1-3 token words, Chinese
vocabulary size, trimmed-vocabulary id map on) to a temporary folder and times
``masked_dataset`` with tf.data's thread pool limited to ``--cores`` threads.

Sequences per core are counted against the CPU time the process used while the
batches were drawn (``time.process_time``, all threads), so the figure holds on a
shared machine where the wall-clock rate depends on what else runs; the wall-clock
rate is printed too.

The goal (issue 14): one core feeds at least 2,000 sequences of 128 per second.

Usage:
    python benchmarks/pretrain_input.py [--sequences 20000] [--cores 1 2] [--seq-length 128]
"""

import argparse
import os
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

VOCAB = 21128


def write_shards(folder, sequences, seq_length, shard_size=5000, seed=0):
    """Synthetic ``make_data.py`` records: ``input_ids`` and ``word_ids``."""
    import tensorflow as tf
    rng = np.random.default_rng(seed)
    files = []
    for start in range(0, sequences, shard_size):
        path = os.path.join(folder, f"train-{start // shard_size:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for _ in range(min(shard_size, sequences - start)):
                words = np.repeat(np.arange(seq_length), rng.integers(1, 4, seq_length))
                words = words[:seq_length - 2]
                ids = np.concatenate([[101], rng.integers(106, VOCAB, seq_length - 2), [102]])
                word_ids = np.concatenate([[-1], words, [-1]])
                example = tf.train.Example(features=tf.train.Features(feature={
                    "input_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=ids)),
                    "word_ids": tf.train.Feature(int64_list=tf.train.Int64List(
                        value=word_ids))}))
                writer.write(example.SerializeToString())
        files.append(path)
    return files


def sequences_per_second(files, sequences, seq_length, batch_size, cores, max_predictions):
    import tensorflow as tf
    from bert4x.pretraining.pipeline import Masker, masked_dataset
    id_map = np.arange(VOCAB, dtype=np.int32)  # a trimmed vocabulary costs one gather
    masker = Masker(VOCAB, 103, 0, [0, 100, 101, 102, 103], seq_length,
                    max_predictions=max_predictions, seed=1, id_map=id_map)
    dataset = masked_dataset(files, seq_length, masker, batch_size, sequences,
                             shuffle_buffer=10000, seed=1)
    options = tf.data.Options()
    options.threading.private_threadpool_size = cores
    options.threading.max_intra_op_parallelism = 1
    dataset = dataset.with_options(options)
    batches = sequences // batch_size
    iterator = iter(dataset)
    for _ in range(3):  # warm up: tracing, shuffle buffer fill
        next(iterator)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return batches * batch_size / wall, batches * batch_size / cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=20000)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--max-predictions", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        files = write_shards(folder, args.sequences, args.seq_length)
        for cores in args.cores:
            rate, per_cpu_second = sequences_per_second(
                files, args.sequences, args.seq_length, args.batch_size, cores,
                args.max_predictions)
            print(f"{cores} thread(s): {rate:8,.0f} sequences of {args.seq_length}/s (wall), "
                  f"{per_cpu_second:8,.0f} per CPU-second of the process (goal >= 2,000 per "
                  f"core: {'met' if per_cpu_second >= 2000 else 'not met'})", flush=True)


if __name__ == "__main__":
    main()
