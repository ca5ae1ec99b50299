"""Step-time cost of each fine-tuning regulariser of ``bert4x.training``.

A classifier on a BERT of the demos' tiny size (4 layers, hidden 128, 2 heads,
intermediate 512, vocabulary 8000, random weights, batch 16 x 64 tokens) trains with
``train_on_batch`` on the TensorFlow backend: the plain step, then the step with each
regulariser. Rounds are interleaved (every variant once per round) so that load from
other jobs hits all alike; the median time per step is reported with its ratio to the
plain step of the same run.

Usage::

    python benchmarks/regularisers.py [--rounds 5] [--steps 10] [--jit]
"""

import os
import sys

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # this folder's tokenize.py would shadow the standard library's

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from bert4x import training  # noqa: E402
from bert4x.models import build_transformer_model  # noqa: E402

CONFIG = {"vocab_size": 8000, "hidden_size": 128, "num_hidden_layers": 4,
          "num_attention_heads": 2, "intermediate_size": 512, "hidden_act": "gelu",
          "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
          "max_position_embeddings": 512, "type_vocab_size": 2, "initializer_range": 0.02}

VARIANTS = {
    "plain": (None, "sparse_categorical_crossentropy"),
    "adversarial_training": (lambda m: training.adversarial_training(m, epsilon=1.0),
                             "sparse_categorical_crossentropy"),
    "virtual_adversarial_training": (lambda m: training.virtual_adversarial_training(
        m, seed=0), "kld"),
    "gradient_penalty": (lambda m: training.gradient_penalty(m, epsilon=0.5),
                         "sparse_categorical_crossentropy"),
    "r_drop": (lambda m: training.r_drop(m, alpha=4.0), "sparse_categorical_crossentropy"),
    "flooding": (lambda m: training.flooding(m, level=0.2),
                 "sparse_categorical_crossentropy"),
}


def classifier(config_path, loss, jit):
    bert = build_transformer_model(config_path)
    cls = keras.layers.Lambda(lambda h: h[:, 0])(bert.outputs[0])
    probs = keras.layers.Dense(2, activation="softmax")(cls)
    model = keras.Model(bert.inputs, probs)
    model.compile(keras.optimizers.Adam(1e-4), loss, jit_compile=jit)
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--jit", action="store_true")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    tokens = rng.integers(1, CONFIG["vocab_size"], (args.batch, args.length)).astype("int32")
    segments = np.zeros_like(tokens)
    labels = rng.integers(0, 2, (args.batch,)).astype("int32")
    soft = np.eye(2, dtype="float32")[labels]
    with tempfile.TemporaryDirectory() as folder:
        config_path = os.path.join(folder, "bert_config.json")
        with open(config_path, "w") as f:
            json.dump(CONFIG, f)
        models = {}
        for name, (apply, loss) in VARIANTS.items():
            models[name] = classifier(config_path, loss, args.jit)
            if apply is not None:
                apply(models[name])
    targets = {name: soft if loss == "kld" else labels for name, (_, loss) in VARIANTS.items()}
    for name, model in models.items():  # trace and warm up
        model.train_on_batch([tokens, segments], targets[name])
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                model.train_on_batch([tokens, segments], targets[name])
            times[name].append((time.perf_counter() - start) / args.steps)
    plain = float(np.median(times["plain"]))
    print(f"batch {args.batch} x {args.length}, jit_compile={args.jit}, "
          f"{args.rounds} rounds of {args.steps} steps, median ms per step")
    for name in models:
        median = float(np.median(times[name]))
        print(f"{name:30s} {1000 * median:8.1f} ms  {median / plain:5.2f}x plain")


if __name__ == "__main__":
    main()
