"""BERT vocabularies: read and write ``vocab.txt``, and trim one to what a tokenizer uses.

Example:
    >>> from bert4x.vocabularies import load_vocab  # also bert4x.tokenizers.load_vocab
    >>> token_dict, keep_tokens = load_vocab("vocab.txt", simplified=True)  # doctest: +SKIP
"""

import os

from bert4x import storage
from bert4x.characters import is_cjk_character, is_punctuation, wordpiece_stem

__all__ = ["SPECIAL_TOKENS", "load_vocab", "save_vocab", "subset_vocabulary", "tokens_by_id",
           "vocabulary_text"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def load_vocab(path, encoding="utf-8", simplified=False, startswith=None):
    """Read a BERT ``vocab.txt`` (one token a line, the line number is the id).

    A byte order mark at the start of the file (Windows editors write one) is
    not part of the first token: it is stripped, so ``[PAD]`` stays ``[PAD]``.
    Nothing else is trimmed from a line but its line break.

    Args:
        path: the vocabulary file.
        encoding: its text encoding.
        simplified: also drop the tokens this tokenizer can never produce:
            pieces longer than one character (``##`` aside) that contain a CJK
            ideograph or a punctuation character, because the basic tokenizer
            always splits those into single characters. Note that a
            ``pre_tokenize`` hook can produce multi-character CJK words; do not
            simplify a vocabulary used with one.
        startswith: with ``simplified``, tokens placed first, in this order.
            ``None`` means the special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]``
            that the vocabulary has; pass ``[]`` for none.

    Returns:
        ``{token: id}``; with ``simplified=True`` the tuple
        ``(new_token_dict, keep_tokens)`` where ``keep_tokens[new_id]`` is the
        original id, ready for ``build_transformer_model(keep_tokens=...)``.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the file is not text in ``encoding``, has no tokens, or
            lacks a ``startswith`` token.

    Example:
        >>> token_dict = load_vocab("vocab.txt")  # doctest: +SKIP
        >>> token_dict, keep_tokens = load_vocab(
        ...     "vocab.txt", simplified=True)  # doctest: +SKIP
    """
    path = os.fspath(path)
    storage.check_readable(path, "vocabulary file")
    token_dict = {}
    try:
        with storage.open(path, encoding=encoding) as reader:
            for index, line in enumerate(reader):
                # Only the line break is stripped: HF keeps other whitespace, and a
                # token's id must not depend on how the line was trimmed.
                token_dict[line.rstrip("\r\n").lstrip("\ufeff") if index == 0
                           else line.rstrip("\r\n")] = index
    except UnicodeDecodeError as error:
        raise ValueError(f"vocabulary file {path!r} is not {encoding} text: {error}") from None
    if not token_dict:
        raise ValueError(f"vocabulary file {path!r} is empty")
    if not simplified:
        return token_dict

    if startswith is None:
        startswith = [token for token in SPECIAL_TOKENS if token in token_dict]
    new_token_dict, keep_tokens = {}, []
    for token in startswith:
        if token not in token_dict:
            raise ValueError(
                f"startswith token {token!r} is not in the vocabulary {path!r}")
        if token not in new_token_dict:
            new_token_dict[token] = len(new_token_dict)
            keep_tokens.append(token_dict[token])
    for token, index in sorted(token_dict.items(), key=lambda item: item[1]):
        if token in new_token_dict:
            continue
        if len(token) > 1 and any(
                is_cjk_character(char) or is_punctuation(char)
                for char in wordpiece_stem(token)):
            continue
        new_token_dict[token] = len(new_token_dict)
        keep_tokens.append(index)
    return new_token_dict, keep_tokens


def subset_vocabulary(token_dict, token_ids):
    """A vocabulary of the special tokens and the tokens ``token_ids``, for ``keep_tokens``.

    The special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]`` that ``token_dict`` has
    come first, in that order, then the other ids of ``token_ids`` in id order.
    ``bert4x.tokenizers.corpus_vocabulary`` gives the tokens a corpus uses.

    Args:
        token_dict: the full ``{token: id}``.
        token_ids: ids of the tokens to keep (any order; repeats are ignored).

    Returns:
        ``(tokens, keep_tokens)``: the kept tokens in their new id order (the new
        ``vocab.txt``) and their ids in ``token_dict``, ready for
        ``build_transformer_model(keep_tokens=...)``.

    Raises:
        ValueError: an id is not one of ``token_dict``'s.

    Example:
        >>> subset_vocabulary({"[PAD]": 0, "[UNK]": 1, "a": 2, "b": 3}, [3, 3])
        (['[PAD]', '[UNK]', 'b'], [0, 1, 3])
    """
    by_id = {index: token for token, index in token_dict.items()}
    specials = [token_dict[token] for token in SPECIAL_TOKENS if token in token_dict]
    wanted = {int(index) for index in token_ids}
    unknown = sorted(wanted - set(by_id))
    if unknown:
        raise ValueError(f"token ids {unknown[:10]} are not in the vocabulary "
                         f"({len(token_dict)} tokens)")
    keep_tokens = specials + sorted(wanted - set(specials))
    return [by_id[index] for index in keep_tokens], keep_tokens


def save_vocab(path, token_dict):
    """Write ``{token: id}`` as a ``vocab.txt``, one token a line in id order.

    Args:
        path: the file to write.
        token_dict: ids must be exactly ``0 .. len(token_dict) - 1``.

    Raises:
        ValueError: the ids are not consecutive from 0, or a token contains a
            line break (it could not be read back).

    Example:
        >>> token_dict, keep_tokens = load_vocab(
        ...     "vocab.txt", simplified=True)  # doctest: +SKIP
        >>> save_vocab("vocab_simplified.txt", token_dict)  # doctest: +SKIP
    """
    storage.atomic_write(path, vocabulary_text(tokens_by_id(token_dict)))


def tokens_by_id(token_dict):
    """The tokens of ``{token: id}`` as a list in id order.

    Raises:
        ValueError: the ids are not exactly ``0 .. len(token_dict) - 1``.
    """
    ordered = sorted(token_dict.items(), key=lambda item: item[1])
    ids = [index for _, index in ordered]
    if ids != list(range(len(ordered))):
        raise ValueError(
            "token ids must be consecutive from 0 to save a vocab.txt; got "
            f"{len(ids)} tokens with ids from {ids[0] if ids else None} to "
            f"{ids[-1] if ids else None}")
    return [token for token, _ in ordered]


def vocabulary_text(tokens):
    """The ``vocab.txt`` content of a token list in id order (one token a line).

    Raises:
        ValueError: a token contains a line break (it could not be read back).
    """
    for token in tokens:
        if "\n" in token or "\r" in token:
            raise ValueError(f"token {token!r} contains a line break")
    return "".join(token + "\n" for token in tokens)

