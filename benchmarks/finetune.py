"""The QA demo's training step: bert4x with and without its speed levers, against PyTorch.

The step is the one ``examples/reading_comprehension_seq2seq.py`` fine-tunes with:
a UniLM BERT (4 layers, hidden 128, 4 heads, intermediate 512, the demo's trimmed
Chinese vocabulary) on batches of 32 ``passage + question -> answer`` examples of the
demo's own data, with the tied MLM head applied at the answer positions only and the
cross-entropy taken on the answer tokens, AdamW updating every weight.

Contenders, on the same batches (the first ``--steps`` of one epoch, as the demo draws
them) and the same weights (a transformers ``BertForMaskedLM`` saved with
``save_pretrained`` and loaded by bert4x):

* ``bert4x``: Keras's ``fit`` on a ``tf.data`` pipeline of the batches (as the demo
  feeds them), batches drawn at
  random and padded to their longest example (the demo before length bucketing);
* ``bert4x bucketed``: the same with batches of similar lengths
  (``bert4x.snippets.length_bucketed_order``, the demo's default);
* ``... steps_per_execution 16``: both again with 16 updates per call of the compiled
  training function (the demo's setting; Keras's per-update Python work paid once);
* ``... jit_compile``: both again with ``compile(jit_compile=True)`` (XLA);
* ``PyTorch``: transformers' ``BertModel`` and its MLM head in eager PyTorch with
  ``torch.optim.AdamW``, the UniLM mask given as a 4-D additive mask, on the random
  and on the bucketed batches.

Every contender runs its batches once untimed (tracing, XLA compilation per shape),
then the timed passes interleave the contenders so that load from other jobs hits them
alike; the median pass is reported as seconds per update, with the ratio to PyTorch on
the same batches (above 1: bert4x is faster) and an estimate of the demo's fine-tuning
(5 epochs of its 1,011 updates).

Usage::

    python benchmarks/finetune.py [--steps 40] [--rounds 3] [--threads 2] [--no-xla]
"""

import os
import sys

# This folder holds tokenize.py (another benchmark), which would shadow the standard
# library's tokenize module that inspect, numpy and TensorFlow import.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples")
DEMO_UPDATES = 5 * 1011  # the demo's default fine-tuning: 5 epochs of 1,011 updates


def demo_batches(steps, bucket_windows, seed=0):
    """For each of ``bucket_windows``, the first ``steps`` batches of one epoch of the QA
    demo's default data drawn with that window; and the size of its trimmed vocabulary.
    The data and the vocabulary are built once."""
    sys.path.insert(0, EXAMPLES)
    import reading_comprehension_seq2seq as demo

    from bert4x.demos import idiom_qa
    from bert4x.demos.base_model import BaseModel
    from bert4x.demos.seq2seq_batches import EpochBatches
    from bert4x.resources import chinese_vocab_path
    args = demo.parse_args([])
    train, dev = idiom_qa.load_qa_sets(seed=args.seed)
    train, _ = idiom_qa.development_split(train, args.dev_questions, args.seed)
    train = train[:args.max_train]
    base = BaseModel(None, None, chinese_vocab_path(), {}, "benchmark")
    tokenizer, keep_tokens = base.tokenizer_for(idiom_qa.question_texts(train + dev))
    encoder = demo.QAEncoder(tokenizer, demo.MAX_PASSAGE_LEN, demo.MAX_QUESTION_LEN,
                             demo.MAX_ANSWER_LEN)
    encoded = [encoder.training_pairs(question) for question in train]
    drawn = []
    for window in bucket_windows:
        stream = iter(EpochBatches(
            lambda rng: demo.training_examples(encoded, args.negatives, rng,
                                               args.swapped_negatives,
                                               args.question_generation),
            args.batch_size, seed, window))
        drawn.append([next(stream) for _ in range(steps)])
    return drawn, len(keep_tokens)


def torch_contender(hf, batches, threads):
    """One PyTorch update per batch: UniLM mask, MLM head at the answer positions."""
    import torch
    torch.set_num_threads(threads)
    optimizer = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.01)
    prepared = []
    for (token_ids, segment_ids, positions), targets in batches:
        ids = torch.from_numpy(token_ids.astype("int64"))
        segments = torch.from_numpy(segment_ids.astype("int64"))
        length = ids.shape[1]
        causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
        # UniLM: a key is visible when it is a source token or not after the query.
        visible = (segments[:, None, :] == 0) | causal[None]
        visible &= (ids != 0)[:, None, :]
        mask = torch.zeros(visible.shape, dtype=torch.float32).masked_fill(~visible, -1e9)
        prepared.append((ids, segments, mask[:, None],
                         torch.from_numpy(positions.astype("int64")),
                         torch.from_numpy(targets.astype("int64"))))
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=0)

    def run():
        hf.train()
        for ids, segments, mask, positions, targets in prepared:
            hidden = hf.bert(input_ids=ids, token_type_ids=segments,
                             attention_mask=mask).last_hidden_state
            gathered = torch.gather(hidden, 1, positions[..., None].expand(
                -1, -1, hidden.shape[-1]))
            logits = hf.cls(gathered)
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return float(loss.detach())

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="updates per timed pass")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per contender")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
    parser.add_argument("--no-xla", action="store_true", help="skip the jit_compile rows")
    args = parser.parse_args()

    import keras
    import tensorflow as tf
    import torch
    import transformers

    (random_batches, bucketed_batches), vocab_size = demo_batches(args.steps, (1, 50))
    for name, batches in (("random", random_batches), ("bucketed", bucketed_batches)):
        real = sum(int((b[0][0] != 0).sum()) for b in batches)
        padded = sum(b[0][0].size for b in batches)
        print(f"{name} batches: {padded / len(batches) / 32:.1f} tokens per example "
              f"padded, {real / len(batches) / 32:.1f} real")

    config = transformers.BertConfig(
        vocab_size=vocab_size, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=512, hidden_act="gelu", max_position_embeddings=512,
        type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(config)

    from bert4x.models import build_transformer_model
    from bert4x.optimizers import AdamW

    def bert4x_contender(batches, jit_compile, folder, steps_per_execution=1):
        builder = build_transformer_model(folder, application="unilm", with_mlm=True,
                                          return_keras_model=False)
        model = builder.mlm_positions_model()
        model.compile(optimizer=AdamW(learning_rate=1e-4, weight_decay=0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True, ignore_class=0),
                      jit_compile=jit_compile, steps_per_execution=steps_per_execution)

        # As the demo feeds fit: one pass over the batches per epoch, one trace for
        # every batch shape (XLA still compiles each shape once).
        matrix = tf.TensorSpec((None, None), tf.int32)
        dataset = tf.data.Dataset.from_generator(
            lambda: iter(batches), output_signature=((matrix, matrix, matrix), matrix))

        def run():
            history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
            return history.history["loss"][-1]

        return run

    contenders = {}
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)

        def reloaded():
            return transformers.BertForMaskedLM.from_pretrained(folder, local_files_only=True)

        # The first batch's losses agree: both compute the same step on the same weights
        # (fit reports the mean loss of its batches).
        ours = bert4x_contender(random_batches[:1], False, folder)()
        reference = torch_contender(reloaded(), random_batches[:1], args.threads)()
        print(f"first-batch loss: bert4x {ours:.5f}, PyTorch {reference:.5f}")
        if abs(ours - reference) > 1e-3:
            raise SystemExit("bert4x and PyTorch disagree on the first batch's loss")
        for name, batches in (("random", random_batches), ("bucketed", bucketed_batches)):
            contenders[f"PyTorch, {name} batches"] = torch_contender(reloaded(), batches,
                                                                     args.threads)
            contenders[f"bert4x, {name} batches"] = bert4x_contender(batches, False, folder)
            contenders[f"bert4x steps_per_execution 16, {name} batches"] = bert4x_contender(
                batches, False, folder, steps_per_execution=16)
            if not args.no_xla:
                contenders[f"bert4x jit_compile, {name} batches"] = bert4x_contender(
                    batches, True, folder)

    for run in contenders.values():  # warm-up: tracing and XLA compilation of each shape
        run()
    times = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) / args.steps)

    print(f"\nQA demo training step, {args.steps} updates of 32 examples per pass, median "
          f"of {args.rounds} interleaved passes (tf {tf.__version__}, keras "
          f"{keras.__version__}, torch {torch.__version__}, {args.threads} PyTorch threads, "
          f"load average {os.getloadavg()[0]:.1f})")
    print(f"{'contender':50s} {'s/update':>9s} {'vs PyTorch':>10s} {'demo fine-tuning':>17s}")
    for name, values in times.items():
        median = statistics.median(values)
        torch_name = "PyTorch, " + name.split(", ")[1]
        ratio = statistics.median(times[torch_name]) / median
        print(f"{name:50s} {median:9.3f} {ratio:9.2f}x {median * DEMO_UPDATES / 60:13.1f} min")


if __name__ == "__main__":
    main()
