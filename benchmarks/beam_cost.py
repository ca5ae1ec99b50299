"""Where a cached beam step's time goes, against greedy decoding (TensorFlow).

The model and sources of ``decode.py`` (UniLM 4x256, vocabulary 21128, 4 sources
of 128 tokens, 32 forced new tokens). TensorFlow runs on one thread and every
figure is CPU time of this process (``time.process_time``), so that a loaded
machine changes the figures less than it changes wall time; best of
``--repeats``.

* decode: milliseconds per step of ``Decoder.greedy`` (4 rows) and
  ``Decoder.beam_search`` with beam 4 (16 rows), split into the compiled step
  (model, log-softmax, the beams' cache reordering, the copy of the scores to
  NumPy) and the rest (the host's selection and bookkeeping);
* step parts: the compiled step alone on 4 and 16 rows (4 sources, whose
  keys are cached once and shared by their rows), without the reordering of
  the rows' generated slots, that reordering alone, and the output projection
  with its log-softmax alone.

Usage:
    python benchmarks/beam_cost.py [--xla] [--repeats 5]
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import time  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bert4x import decoding  # noqa: E402

_spec = importlib.util.spec_from_file_location("decode_benchmark",
                                               os.path.join(_HERE, "decode.py"))
decode_benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(decode_benchmark)


def best_cpu_ms(function, repeats):
    function()  # compiles / warms up
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        function()
        best = min(best, time.process_time() - start)
    return best * 1e3


def decode_split(decoder, sources, new_tokens, repeats):
    """Per step: (total, compiled step) CPU milliseconds of greedy and beam 4."""
    step_time = [0.0]

    def timing(scorer_init):
        def init(self, *args, **kwargs):
            scorer_init(self, *args, **kwargs)
            step = self.step_function

            def timed(inputs, parents):
                start = time.process_time()
                log_probs, cache = step(inputs, parents)
                log_probs = log_probs.numpy()
                step_time[0] += time.process_time() - start
                return log_probs, cache
            self.step_function = timed
        return init

    original = decoding._CachedScorer.__init__
    decoding._CachedScorer.__init__ = timing(original)
    settings = dict(max_length=new_tokens, min_length=new_tokens)
    try:
        figures = {}
        for name, run in (("greedy", lambda: decoder.greedy(sources, **settings)),
                          ("beam 4", lambda: decoder.beam_search(sources, beam_size=4,
                                                                 **settings))):
            run()
            best = None
            for _ in range(repeats):
                step_time[0] = 0.0
                start = time.process_time()
                run()
                total = time.process_time() - start
                if best is None or total < best[0]:
                    best = (total, step_time[0])
            figures[name] = [seconds * 1e3 / new_tokens for seconds in best]
        return figures
    finally:
        decoding._CachedScorer.__init__ = original


def step_parts(builder, source_slots, new_slots, jit, repeats):
    """The compiled step's parts for 4 sources, on 4 rows (greedy) and 16 (beam 4):
    each source's keys cached once and shared by its rows, each row caching its
    generated slots (the decoder's layout)."""
    _, step_model = builder.cache_models()
    embeddings = builder.token_embedding.embeddings
    layers, heads, head_size = (builder.config.num_hidden_layers,
                                builder.config.num_attention_heads, builder.config.head_size)

    @tf.function(jit_compile=jit)
    def full(inputs, parents):
        inputs = dict(inputs, cache=tf.gather(inputs["cache"], parents))
        outputs = step_model(inputs, training=False)
        return tf.nn.log_softmax(outputs["logits"]), outputs["cache"]

    @tf.function(jit_compile=jit)
    def no_reorder(inputs):
        outputs = step_model(dict(inputs), training=False)
        return tf.nn.log_softmax(outputs["logits"]), outputs["cache"]

    @tf.function(jit_compile=jit)
    def reorder(cache, parents):
        return tf.gather(cache, parents) * 1.0,

    @tf.function(jit_compile=jit)
    def projection(hidden):
        return tf.nn.log_softmax(tf.matmul(hidden, embeddings, transpose_b=True)),

    rng = np.random.default_rng(0)
    sources = 4
    source_cache = rng.normal(size=(sources, layers, 2, heads, source_slots, head_size))
    figures = {}
    for rows in (4, 16):
        write_mask = np.zeros((rows, new_slots), "float32")
        write_mask[:, new_slots - 1] = 1
        cache = rng.normal(size=(rows, layers, 2, heads, new_slots, head_size))
        inputs = {name: tf.constant(value) for name, value in dict(
            token_ids=np.full((rows, 1), 200, "int32"), segment_ids=np.ones((rows, 1), "int32"),
            position_ids=np.full((rows, 1), source_slots + new_slots - 1, "int32"),
            source_cache=source_cache.astype("float32"),
            source_key_mask=np.ones((sources, source_slots), "float32"),
            cache=cache.astype("float32"), key_mask=np.ones((rows, new_slots), "float32"),
            write_mask=write_mask).items()}
        parents = tf.constant(rng.permutation(rows).astype("int32"))
        hidden = tf.constant(rng.normal(size=(rows, embeddings.shape[1])).astype("float32"))
        parts = {"step": lambda: full(inputs, parents)[0].numpy(),
                 "step without reordering": lambda: no_reorder(inputs)[0].numpy(),
                 "reordering alone": lambda: reorder(inputs["cache"], parents)[0].numpy(),
                 "projection + log-softmax": lambda: projection(hidden)[0].numpy()}
        figures[rows] = {name: best_cpu_ms(part, repeats) for name, part in parts.items()}
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--xla", action="store_true", help="compile the step with XLA")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    namespace = argparse.Namespace(batch=4, source_length=128)
    builder = decode_benchmark.build(namespace)
    sources = decode_benchmark.make_sources(namespace)
    decoder = decoding.Decoder(builder, end_id=decode_benchmark.SEP, jit_compile=args.xla)
    print(f"TensorFlow on one thread, CPU ms, XLA {args.xla}, best of {args.repeats}")
    split = decode_split(decoder, sources, args.new_tokens, args.repeats)
    for name, (total, step) in split.items():
        print(f"  {name:<8s} per step {total:6.1f}: compiled step {step:6.1f}, "
              f"host {total - step:5.1f}")
    print(f"  beam 4 / greedy: {split['beam 4'][0] / split['greedy'][0]:.2f}x "
          f"(compiled step {split['beam 4'][1] / split['greedy'][1]:.2f}x)")
    for rows, parts in step_parts(builder, 128, args.new_tokens - 1, args.xla,
                                  args.repeats).items():
        print(f"  {rows} rows: " + ", ".join(f"{name} {ms:.1f}" for name, ms in parts.items()))


if __name__ == "__main__":
    main()
