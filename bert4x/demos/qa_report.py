"""What the QA demo reports: WebQA scores per kind of question, how the reader errs,
and Final per epoch.

The scores are :func:`bert4x.metrics.webqa_scores` (exact match, character F1,
Final) over all questions, over each ``kind`` the questions carry (the idiom QA's
"meaning" and "source") and over the questions that have no answer. The diagnosis
says how many questions got an answer, whether the answers come from the passage
about the asked idiom, and how well the reader abstains.

Example:
    >>> scores = scores_by_kind(questions, predictions, passage_indices)  # doctest: +SKIP
    >>> print_scores(scores, "Held-out questions")  # doctest: +SKIP
"""

import numpy as np

from bert4x.demos.console import print_table
from bert4x.demos.idiom_qa import question_answer
from bert4x.metrics import webqa_scores

__all__ = ["scores_by_kind", "reading_diagnosis", "print_scores", "epoch_monitor"]


def scores_by_kind(questions, predictions, passage_indices):
    """WebQA scores overall, per question kind and on the no-answer questions.

    Args:
        questions: WebQA-style questions (a ``kind`` is optional).
        predictions: one answer string per question ("" for no answer).
        passage_indices: per question, the index of the passage its answer was cut
            from (None for no answer or an answer found in no passage).

    Returns:
        ``{"all": scores, kind: scores, ..., "no answer": scores, "diagnosis": ...}``
        where each ``scores`` is the output of :func:`bert4x.metrics.webqa_scores`
        (a set with no question is left out) and "diagnosis" that of
        :func:`reading_diagnosis`.
    """
    golds = [question_answer(question) for question in questions]
    scores = {"all": webqa_scores(predictions, golds)}
    kinds = sorted({question.get("kind") for question in questions} - {None})
    for kind in kinds + ["no answer"]:
        if kind == "no answer":
            picked = [i for i, gold in enumerate(golds) if not gold]
        else:
            picked = [i for i, q in enumerate(questions) if q.get("kind") == kind]
        if picked:
            scores[kind] = webqa_scores([predictions[i] for i in picked],
                                        [golds[i] for i in picked])
    scores["diagnosis"] = reading_diagnosis(questions, predictions, passage_indices)
    return scores


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
    golds = [question_answer(question) for question in questions]
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


def print_scores(scores, title):
    """Print the per-kind table and the diagnosis of :func:`scores_by_kind`'s scores."""
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


def epoch_monitor(final_of, question_sets, count, model=None):
    """A Keras callback printing Final per epoch on ``count`` questions of each set.

    Args:
        final_of: ``final_of(questions)``, the Final of the model being trained on
            those questions (decoded with the weights of the moment).
        question_sets: ``{name: questions}``, e.g. training, development and held-out.
        count: questions decoded per set and epoch.
        model: when given and ``question_sets`` has a "development" set, the weights
            of the epoch with the best development Final are restored at the end
            (the development questions come from training idioms, so nothing of the
            held-out idioms takes part in this choice). The held-out column is a
            diagnosis only: it shows whether the model learns to read or learns the
            training idioms' answers.

    Example:
        >>> monitor = epoch_monitor(lambda questions: 0.5, {"training": train},
        ...                         100)  # doctest: +SKIP
        >>> model.fit(..., callbacks=[monitor])  # doctest: +SKIP
    """
    import keras

    names = [name for name, questions in question_sets.items() if questions]

    class EpochMonitor(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.rows, self.best, self.best_weights = [], None, None

        def on_epoch_end(self, epoch, logs=None):
            finals = {name: final_of(question_sets[name][:count]) for name in names}
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
