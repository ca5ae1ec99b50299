"""Scores of extractive reading comprehension as WebQA and SogouQA report them.

An answer is compared with its gold answer after normalisation (full-width
characters to half-width, lower case, no punctuation, symbols or spaces): exact
match (EM), character-level F1, and ``Final = (EM + F1) / 2``. A question without
an answer has the empty string as its gold answer, and an empty prediction scores
1 on it.

Example:
    >>> from bert4x.metrics import webqa_scores
    >>> webqa_scores(["《红楼梦》", ""], ["红楼梦", ""])["final"]
    1.0
"""

import collections
import unicodedata

__all__ = ["normalize_answer", "exact_match", "char_f1", "webqa_scores"]


def normalize_answer(text):
    """Normalise an answer for comparison as in the WebQA/SogouQA evaluation.

    Full-width characters become half-width (NFKC), letters are lower-cased,
    and punctuation, symbols and whitespace are removed.

    Example:
        >>> normalize_answer("ＡＢＣ，　def！")
        'abcdef'
    """
    text = unicodedata.normalize("NFKC", text or "").lower()
    return "".join(char for char in text
                   if not char.isspace() and unicodedata.category(char)[0] not in "PS")


def exact_match(prediction, gold):
    """1.0 when the normalised strings are equal (two empty answers agree), else 0.0.

    Example:
        >>> exact_match("《红楼梦》", "红楼梦")
        1.0
    """
    return float(normalize_answer(prediction) == normalize_answer(gold))


def char_f1(prediction, gold):
    """Character-level F1 of the normalised strings (1.0 when both are empty).

    A character counts as common as many times as it occurs in both strings.

    Example:
        >>> round(char_f1("不不好", "不好"), 3)  # precision 2/3, recall 1
        0.8
    """
    prediction, gold = normalize_answer(prediction), normalize_answer(gold)
    if not prediction or not gold:
        return float(prediction == gold)
    common = sum((collections.Counter(prediction) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def webqa_scores(predictions, golds):
    """WebQA/SogouQA scores of aligned predictions and gold answers.

    Args:
        predictions: answer strings ("" for no answer).
        golds: gold answers, each a string or a list of acceptable strings (the
            best-matching one counts).

    Returns:
        ``{"em", "f1", "final", "count"}``: the mean exact match and character F1,
        ``final = (em + f1) / 2``, and the number of questions.

    Raises:
        ValueError: the two lists differ in length.

    Example:
        >>> webqa_scores(["诗经", "红楼"], [["红楼梦", "诗经"], "红楼梦"])["em"]
        0.5
    """
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold answers")
    em = f1 = 0.0
    for prediction, gold in zip(predictions, golds):
        options = [gold] if isinstance(gold, str) else list(gold) or [""]
        em += max(exact_match(prediction, option) for option in options)
        f1 += max(char_f1(prediction, option) for option in options)
    count = max(len(golds), 1)
    em, f1 = em / count, f1 / count
    return {"em": em, "f1": f1, "final": (em + f1) / 2, "count": len(golds)}
