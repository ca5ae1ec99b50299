"""Encoder forward throughput: bert4x (TensorFlow backend) against transformers on PyTorch.

Both models are base sized (12 layers, hidden 768, 12 heads, intermediate 3072) and
of the family ``--model`` names, against its transformers class: ``bert``
(``BertModel``), ``roberta`` (``RobertaModel``, fairseq padding and positions),
``albert`` (``AlbertModel``, embedding size 128, one shared layer),
``albert_unshared`` (``AlbertModel`` with one group per layer), ``electra``
(``ElectraModel``, the base discriminator's encoder), ``roformer``
(``RoFormerModel``, rotary positions). The Hugging Face model is created with random
weights and saved with ``save_pretrained``; bert4x loads that folder, so both hold
the same weights. transformers 5 has no NEZHA, so ``nezha`` (relative positions,
max_relative_position 64) is compared with bert4x's own BERT of the same size
(``tf.function``, float32, random weights), which it should not trail by more than
1.3x. They run on the same padded batch with the
same number of intra-op threads, in the same process. Rounds are interleaved
(PyTorch, then each bert4x variant, repeated) so that load from other jobs hits
every contender alike; the median time per batch is reported.

Variants of bert4x, all on the TensorFlow backend:

* ``predict_on_batch``: Keras's own inference path;
* ``tf.function``: the model called inside ``tf.function`` (graph mode);
* ``tf.function(jit_compile=True)``: the same, compiled with XLA;
* ``mixed_bfloat16``, with and without XLA: the model built with
  ``dtype="mixed_bfloat16"`` (same weights).

Usage::

    python benchmarks/forward.py [--model bert] [--batch 8] [--length 128] [--threads 2]
                                 [--rounds 5] [--float32-only]
"""

import os
import sys

# This folder holds tokenize.py (another benchmark), which would shadow the standard
# library's tokenize module that inspect, numpy and TensorFlow import.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"

# family -> (transformers class, its config class, config fields beyond BERT-base's)
FAMILIES = {
    "bert": ("BertModel", "BertConfig", {}),
    "roberta": ("RobertaModel", "RobertaConfig",
                dict(pad_token_id=1, max_position_embeddings=514, type_vocab_size=1,
                     layer_norm_eps=1e-5)),
    "albert": ("AlbertModel", "AlbertConfig", dict(embedding_size=128)),
    "albert_unshared": ("AlbertModel", "AlbertConfig",
                        dict(embedding_size=128, num_hidden_groups=None)),
    "electra": ("ElectraModel", "ElectraConfig", dict(embedding_size=768)),
    "roformer": ("RoFormerModel", "RoFormerConfig", {}),
    "nezha": (None, None, {}),  # against bert4x's BERT: transformers 5 has no NEZHA
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="bert", choices=sorted(FAMILIES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--float32-only", action="store_true",
                        help="skip the mixed_bfloat16 variants (quicker)")
    args = parser.parse_args()

    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import torch
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    import keras
    import numpy as np
    import transformers

    import tempfile

    from bert4x.models import build_transformer_model

    class_name, config_name, extra = FAMILIES[args.model]
    config = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=args.layers,
                  num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
                  max_position_embeddings=512, type_vocab_size=2)
    config.update(extra)
    if "num_hidden_groups" in config:
        config["num_hidden_groups"] = args.layers  # one group per layer
    if class_name is None:
        model = build_transformer_model(model=args.model, **config)
        bf16 = None
        if not args.float32_only:
            bf16 = build_transformer_model(model=args.model, dtype="mixed_bfloat16",
                                           **config)
            bf16.set_weights(model.get_weights())
    else:
        hf_class = getattr(transformers, class_name)
        hf_config = getattr(transformers, config_name)(**config)
        pooled = class_name in ("BertModel", "RobertaModel", "AlbertModel")
        hf = (hf_class(hf_config, add_pooling_layer=False) if pooled
              else hf_class(hf_config))
        hf.eval()
        with tempfile.TemporaryDirectory() as folder:
            hf.save_pretrained(folder)
            model = build_transformer_model(folder, model=args.model)
            bf16 = None if args.float32_only else build_transformer_model(
                folder, model=args.model, dtype="mixed_bfloat16")
    pad = config.get("pad_token_id", 0)

    rng = np.random.default_rng(0)
    ids = rng.integers(pad + 1, config["vocab_size"], (args.batch, args.length))
    ids = ids.astype("int32")
    for row in range(1, args.batch, 2):  # half the rows padded to 3/4 length
        ids[row, args.length * 3 // 4:] = pad
    segments = np.zeros_like(ids)
    if config["type_vocab_size"] > 1:
        segments[:, args.length // 2:] = 1
    tf_inputs = [tf.constant(ids), tf.constant(segments)]
    torch_kwargs = dict(input_ids=torch.from_numpy(ids.astype("int64")),
                        attention_mask=torch.from_numpy((ids != pad).astype("int64")),
                        token_type_ids=torch.from_numpy(segments.astype("int64")))

    def run_torch():
        with torch.inference_mode():
            return hf(**torch_kwargs).last_hidden_state.numpy()

    if class_name is None:
        bert = build_transformer_model(**config)
        bert_graph = tf.function(lambda x: bert(x, training=False))
        baseline_name = "bert4x BERT tf.function (float32)"
        baseline_fn = lambda: bert_graph(tf_inputs).numpy()  # noqa: E731
    else:
        baseline_name = f"transformers {class_name} (PyTorch, float32)"
        baseline_fn = run_torch

    graph = tf.function(lambda x: model(x, training=False))
    xla = tf.function(lambda x: model(x, training=False), jit_compile=True)
    contenders = {
        baseline_name: baseline_fn,
        "bert4x predict_on_batch (float32)": lambda: model.predict_on_batch(tf_inputs),
        "bert4x tf.function (float32)": lambda: graph(tf_inputs).numpy(),
        "bert4x tf.function jit_compile (float32)": lambda: xla(tf_inputs).numpy(),
    }
    if bf16 is not None:
        graph_bf16 = tf.function(lambda x: bf16(x, training=False))
        xla_bf16 = tf.function(lambda x: bf16(x, training=False), jit_compile=True)
        contenders["bert4x tf.function (mixed_bfloat16)"] = \
            lambda: graph_bf16(tf_inputs).numpy().astype("float32")
        contenders["bert4x tf.function jit_compile (mixed_bfloat16)"] = \
            lambda: xla_bf16(tf_inputs).numpy().astype("float32")

    # No other NEZHA to compare with: its rows are only timed.
    reference = None if class_name is None else run_torch()
    for name, fn in contenders.items():  # warm-up (tracing, XLA compilation) and check
        fn()
        if reference is None:
            continue
        error = float(np.max(np.abs(np.asarray(fn(), "float32") - reference)))
        print(f"{name}: max abs difference from PyTorch {error:.2e}")
        limit = 0.3 if "bfloat16" in name else 1e-3
        if error > limit:
            raise SystemExit(f"{name} disagrees with PyTorch by {error}")

    times = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    tokens = args.batch * args.length
    baseline = statistics.median(times[baseline_name])
    print(f"\n{args.model}: batch {args.batch} x {args.length}, {args.layers} layers, {args.threads} "
          f"intra-op threads, median of {args.rounds} interleaved rounds "
          f"(tf {tf.__version__}, keras {keras.__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, load average "
          f"{os.getloadavg()[0]:.1f})")
    print(f"{'contender':50s} {'s/batch':>8s} {'tokens/s':>9s} {'vs baseline':>11s}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:50s} {median:8.3f} {tokens / median:9.0f} {baseline / median:9.2f}x")


if __name__ == "__main__":
    main()
