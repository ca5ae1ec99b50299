"""Pretraining throughput: bert4x (TensorFlow, the pretraining step) vs PyTorch transformers.

BERT-small (4 layers, hidden 512, 8 heads, intermediate 2048, Chinese vocab 21128),
sequences of 128, MLM with 20 predicted positions per sequence, AdamW. For each of
float32 and bfloat16 it prints training tokens/s, model FLOP utilisation against a
matmul peak measured in the same run, and the ratio bert4x / PyTorch.

Model FLOPs per token (training = 3 x forward): per layer 2 * (4 H^2 + 2 H I) for the
dense layers plus 4 * S * H for the attention scores and weighted sum, plus the MLM
head on the predicted positions (2 * (H^2 + H V) * P / S). Both frameworks are
charged the same useful FLOPs; transformers' ``BertForMaskedLM`` computes the vocabulary
projection on every position (its standard behaviour), which is extra work it does; a
second PyTorch row gathers the encoder output at the predicted positions and runs the
head there only, as bert4x does, so that row compares like with like.

Usage:
    python benchmarks/pretrain.py [--batch-size 16] [--steps 2] [--rounds 5] [--threads 2]
"""

import argparse
import os
import sys
import time

# benchmarks/tokenize.py would shadow the standard library's tokenize module (used by
# linecache in tracebacks and by TensorFlow's autograph) when this folder is sys.path[0].
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

LAYERS, HIDDEN, HEADS, INTERMEDIATE, VOCAB, SEQ, PREDICTIONS = 4, 512, 8, 2048, 21128, 128, 20


def model_flops_per_token():
    dense = 2 * (4 * HIDDEN ** 2 + 2 * HIDDEN * INTERMEDIATE)
    attention = 4 * SEQ * HIDDEN
    head = 2 * (HIDDEN ** 2 + HIDDEN * VOCAB) * PREDICTIONS / SEQ
    return 3 * (LAYERS * (dense + attention) + head)


def synthetic_batch(batch_size, seed=0):
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(106, VOCAB, size=(batch_size, SEQ)).astype("int32")
    token_ids[:, 0] = 101
    positions = np.sort(np.stack([rng.choice(np.arange(1, SEQ), PREDICTIONS, replace=False)
                                  for _ in range(batch_size)]), axis=1).astype("int32")
    labels = np.take_along_axis(token_ids, positions, axis=1)
    np.put_along_axis(token_ids, positions, 103, axis=1)
    return token_ids, positions, labels


def matmul_chain_tf(dtype, size=2048, repeats=10):
    """A chain of square matmuls: returns ``(run, flops)``; ``run()`` blocks until done."""
    import tensorflow as tf
    a = tf.cast(tf.random.normal((size, size), dtype=tf.float32), dtype)

    @tf.function
    def chain(x):
        for _ in range(repeats):
            x = tf.matmul(x, a) * tf.cast(1e-3, dtype)
        return x

    return (lambda: chain(a).numpy()), 2 * size ** 3 * repeats


def bert4x_train_step(batch_size, mixed):
    """The bert4x pretraining step as a blocking callable."""
    import keras
    import tensorflow as tf
    from bert4x.configs import BertConfig
    from bert4x.models import BERT
    from bert4x.optimizers import AdamW
    from bert4x.pretraining.run import build_pretraining_model
    keras.utils.set_random_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    builder = BERT(config, with_mlm="linear", dtype="mixed_bfloat16" if mixed else None)
    model = build_pretraining_model(builder, SEQ, PREDICTIONS)
    optimizer = AdamW(1e-4, weight_decay=0.01)
    variables = model.trainable_variables
    optimizer.build(variables)
    token_ids, positions, labels = (tf.constant(x) for x in synthetic_batch(batch_size))
    segment_ids = tf.zeros_like(token_ids)

    @tf.function
    def train_step():
        # The loss and update of bert4x.pretraining.trainer (one replica, no accumulation).
        with tf.GradientTape() as tape:
            logits = tf.cast(model([token_ids, segment_ids, positions], training=True),
                             tf.float32)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    return lambda: train_step().numpy()


def torch_train_step(batch_size, mixed, threads, masked_only=False):
    """``transformers`` ``BertForMaskedLM`` training step on PyTorch as a blocking callable.

    With ``masked_only`` the MLM head runs at the predicted positions only (gathered
    from the encoder output, as bert4x's pretraining model does) instead of on every
    position, so both sides do the same work.
    """
    import torch
    from transformers import BertConfig as HFConfig
    from transformers import BertForMaskedLM
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    config = HFConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
                      hidden_act="gelu")
    model = BertForMaskedLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    token_ids, positions, labels = synthetic_batch(batch_size)
    full_labels = np.full_like(token_ids, -100)
    np.put_along_axis(full_labels, positions, labels, axis=1)
    inputs = torch.from_numpy(token_ids.astype("int64"))
    targets = torch.from_numpy(full_labels.astype("int64"))
    gather = torch.from_numpy(positions.astype("int64"))[..., None].expand(-1, -1, HIDDEN)
    masked_targets = torch.from_numpy(labels.astype("int64")).reshape(-1)

    def masked_loss():
        hidden = model.bert(input_ids=inputs).last_hidden_state
        logits = model.cls(torch.gather(hidden, 1, gather))
        return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB).float(),
                                                 masked_targets)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            loss = masked_loss() if masked_only else model(input_ids=inputs,
                                                           labels=targets).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def best_times(functions, rounds, calls):
    """Best time of ``calls`` consecutive calls of each function, over interleaved rounds.

    Interleaving exposes every contender, the matmul peak included, to the same
    moments of a shared machine; the best round is the least disturbed one.
    """
    for function in functions.values():
        function()
        function()
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(calls):
                function()
            best[name] = min(best[name], (time.perf_counter() - start) / calls)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2, help="steps timed together per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    flops = model_flops_per_token()
    tokens = args.batch_size * SEQ
    print(f"BERT-small L{LAYERS} H{HIDDEN} I{INTERMEDIATE} V{VOCAB}, batch {args.batch_size} x "
          f"{SEQ}, {PREDICTIONS} predictions/sequence, {flops / 1e6:.1f} MFLOP/token (training); "
          f"best of {args.rounds} interleaved rounds")
    import tensorflow as tf
    for mixed in (False, True):
        label = "bfloat16" if mixed else "float32"
        chain, chain_flops = matmul_chain_tf(tf.bfloat16 if mixed else tf.float32)
        best = best_times({"peak": chain,
                           "bert4x": bert4x_train_step(args.batch_size, mixed),
                           "torch": torch_train_step(args.batch_size, mixed, args.threads),
                           "torch_masked": torch_train_step(args.batch_size, mixed,
                                                            args.threads, masked_only=True)},
                          args.rounds, args.steps)
        peak = chain_flops / best["peak"]
        ours = tokens / best["bert4x"]
        for name, what in (("torch", "PyTorch, head on every position"),
                           ("torch_masked", "PyTorch, head at the masked positions")):
            theirs = tokens / best[name]
            print(f"{label:8s} matmul peak {peak / 1e9:7.1f} GFLOP/s | bert4x {ours:8.0f} "
                  f"tokens/s (MFU {ours * flops / peak:5.1%}) | {what} {theirs:8.0f} tokens/s "
                  f"(MFU {theirs * flops / peak:5.1%}) | ratio {ours / theirs:.2f}x", flush=True)


if __name__ == "__main__":
    main()
