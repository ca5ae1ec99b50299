"""bert4keras's ``tokenizers`` module on bert4x's Google-exact tokenizer.

Token ids come from :class:`bert4x.tokenizers.Tokenizer`; this module adds
bert4keras's constructor, ``encode(pattern=, truncate_from=)``, its
truncation rule, ``rematch`` as lists of character indices, ``decode(ids,
tokens=None)`` with bert4keras's spacing rules, and the ``_token_*_id``
attributes scripts read.
"""

import re

from bert4x import characters
from bert4x import tokenizers as _native
from bert4x.bert4keras.snippets import truncate_sequences

__all__ = ["load_vocab", "save_vocab", "Tokenizer", "SpTokenizer"]

_CJK_PUNCTUATION = (
    "\uff02\uff03\uff04\uff05\uff06\uff07\uff08\uff09\uff0a\uff0b\uff0c\uff0d\uff0f"
    "\uff1a\uff1b\uff1c\uff1d\uff1e\uff20\uff3b\uff3c\uff3d\uff3e\uff3f\uff40\uff5b"
    "\uff5c\uff5d\uff5e\uff5f\uff60\uff62\uff63\uff64\u3000\u3001\u3003\u3008\u3009"
    "\u300a\u300b\u300c\u300d\u300e\u300f\u3010\u3011\u3014\u3015\u3016\u3017\u3018"
    "\u3019\u301a\u301b\u301c\u301d\u301e\u301f\u3030\u303e\u303f\u2013\u2014\u2018"
    "\u2019\u201b\u201c\u201d\u201e\u201f\u2026\u2027\ufe4f\ufe51\ufe54\u00b7\uff01"
    "\uff1f\uff61\u3002")
_NO_SPACE_AFTER = re.compile(
    "(%s) " % "|".join(re.escape(p) for p in _CJK_PUNCTUATION + "+-/={(<["))


def load_vocab(dict_path, encoding="utf-8", simplified=False, startswith=None):
    """``{token: id}`` of a ``vocab.txt``; ``simplified`` also returns ``keep_tokens``.

    As in bert4keras, ``startswith=None`` puts no token first (bert4x's own
    ``load_vocab`` puts the special tokens first by default).
    """
    return _native.load_vocab(dict_path, encoding, simplified,
                              [] if startswith is None else startswith)


def save_vocab(dict_path, token_dict, encoding="utf-8"):
    """Write ``token_dict`` as a ``vocab.txt`` in id order (UTF-8)."""
    if encoding.replace("-", "").lower() != "utf8":
        raise ValueError(f"save_vocab writes UTF-8 only, got encoding={encoding!r}")
    _native.save_vocab(dict_path, token_dict)


class _Bert4kerasInterface:
    """bert4keras's ``tokenize``/``encode`` on top of a native ``_tokenize_text``."""

    def _init_bert4keras(self, token_start, token_end, token_translate):
        self._token_start, self._token_end = token_start, token_end
        self._token_translate = dict(token_translate or {})
        self._token_translate_inv = {v: k for k, v in self._token_translate.items()}
        self._vocab_size = self.vocab_size
        for name, token in (("pad", "[PAD]"), ("unk", "[UNK]"), ("mask", "[MASK]"),
                            ("start", token_start), ("end", token_end)):
            index = None if token is None else self._special_id(token)
            if index is not None:
                setattr(self, f"_token_{name}_id", index)
            setattr(self, f"_token_{name}", token)

    def _tokenize(self, text):
        return self._tokenize_text(text)

    def tokenize(self, text, maxlen=None):
        """Tokens of ``text`` with the start and end tokens (``token_translate`` applied)."""
        tokens = [self._token_translate.get(token) or token
                  for token in self._tokenize_text(text)]
        if self._token_start is not None:
            tokens.insert(0, self._token_start)
        if self._token_end is not None:
            tokens.append(self._token_end)
        if maxlen is not None:
            truncate_sequences(maxlen, -(int(self._token_end is not None) + 1), tokens)
        return tokens

    def encode(self, first_text, second_text=None, maxlen=None, pattern="S*E*E",
               truncate_from="right"):
        """``(token_ids, segment_ids)`` of a text or a pair, bert4keras's way.

        Texts may be given as token lists. With ``maxlen`` the longer sequence
        (special tokens counted) loses one token at a time, before its end token
        (``truncate_from="right"``), after its start token (``"left"``) or at an
        int index. ``pattern="S*E*E"`` drops the second text's start token;
        ``"S*ES*E"`` keeps it.
        """
        first = self.tokenize(first_text) if isinstance(first_text, str) else first_text
        if second_text is None:
            second = None
        else:
            second = (self.tokenize(second_text) if isinstance(second_text, str)
                      else second_text)
        if maxlen is not None:
            if truncate_from == "right":
                index = -int(self._token_end is not None) - 1
            elif truncate_from == "left":
                index = int(self._token_start is not None)
            else:
                index = truncate_from
            if second_text is not None and pattern == "S*E*E":
                maxlen += 1
            truncate_sequences(maxlen, index, first, second)
        token_ids = self.tokens_to_ids(first)
        segment_ids = [0] * len(token_ids)
        if second_text is not None:
            if pattern == "S*E*E":
                second = second[int(bool(self._token_start)):]
            second_ids = self.tokens_to_ids(second)
            token_ids.extend(second_ids)
            segment_ids.extend([1] * len(second_ids))
        return token_ids, segment_ids


class Tokenizer(_Bert4kerasInterface, _native.Tokenizer):
    """bert4keras's ``Tokenizer(token_dict, do_lower_case, word_maxlen, ...)``.

    Ids are Google's (bert4x's tokenizer); words longer than ``word_maxlen``
    characters become ``[UNK]``. Where bert4keras left an unknown word as it
    was (``tokenize`` gave ``"foo"``, the id ``[UNK]``), this gives the token
    ``"[UNK]"``: the ids are the same.

    Args:
        token_dict: ``{token: id}`` or the path of a ``vocab.txt``.
        do_lower_case: lower-case and strip accents.
        word_maxlen: longer words become ``[UNK]``.
        token_start, token_end: tokens put around each text (None: none).
        pre_tokenize: callable splitting a text into words (e.g. jieba).
        token_translate: ``{token: replacement}`` applied after tokenizing.
    """

    def __init__(self, token_dict, do_lower_case=False, word_maxlen=200,
                 token_start="[CLS]", token_end="[SEP]", pre_tokenize=None,
                 token_translate=None):
        super().__init__(token_dict, do_lower_case=do_lower_case, pre_tokenize=pre_tokenize,
                         token_start=token_start, token_end=token_end,
                         max_word_chars=word_maxlen)
        self._do_lower_case = self.do_lower_case
        self._token_dict_inv = dict(self._id_to_token)
        self._init_bert4keras(token_start, token_end, token_translate)

    def _special_id(self, token):
        return self._token_dict.get(token)

    @staticmethod
    def stem(token):
        """``token`` without a leading ``##``."""
        return token[2:] if token[:2] == "##" else token

    @staticmethod
    def _is_special(token):
        return bool(token) and token[0] == "[" and token[-1] == "]"

    @staticmethod
    def _is_cjk_character(char):
        return characters.is_cjk_character(char)

    @staticmethod
    def _is_punctuation(char):
        return characters.is_punctuation(char)

    def rematch(self, text, tokens):
        """For each token, the list of indices of the characters of ``text`` behind it.

        Added tokens (``[CLS]``, ``[SEP]``) get ``[]``. Spans come from bert4x's
        offset tracking, so every character of a token is listed once (a token
        never claims the character after it).
        """
        return super().rematch(text, tokens, char_indices=True)

    def decode(self, ids, tokens=None):
        """Readable text with bert4keras's spacing rules (``[...]`` tokens dropped)."""
        tokens = tokens or self.ids_to_tokens(ids)
        tokens = [token for token in tokens if not self._is_special(token)]
        text = ""
        for index, token in enumerate(tokens):
            if token[:2] == "##":
                text += token[2:]
            elif len(token) == 1 and self._is_cjk_character(token):
                text += token
            elif len(token) == 1 and self._is_punctuation(token):
                text += token + " "
            elif index > 0 and self._is_cjk_character(text[-1]):
                text += token
            else:
                text += " " + token
        text = re.sub(" +", " ", text)
        text = re.sub("' (re|m|s|t|ve|d|ll) ", "'\\1 ", text)
        text = _NO_SPACE_AFTER.sub("\\1", text)
        text = re.sub(r"(\d\.) (\d)", "\\1\\2", text)
        return text.strip()


class SpTokenizer(_Bert4kerasInterface, _native.SpTokenizer):
    """bert4keras's ``SpTokenizer(sp_model_path, token_start=..., token_end=...)``.

    bert4keras's defaults: ``token_start="[CLS]"``, ``token_end="[SEP]"``. With
    ``pre_tokenize`` (a callable splitting a text into words, e.g. ``jieba.cut``)
    the words are joined by spaces before SentencePiece sees them, as in
    bert4keras.
    """

    def __init__(self, sp_model_path, token_start="[CLS]", token_end="[SEP]",
                 pre_tokenize=None, token_translate=None):
        if pre_tokenize is not None and not callable(pre_tokenize):
            raise TypeError(f"pre_tokenize must be a callable returning words, got "
                            f"{type(pre_tokenize).__name__}")
        super().__init__(sp_model_path, token_start=token_start, token_end=token_end)
        self._pre_tokenize = pre_tokenize
        self._init_bert4keras(token_start, token_end, token_translate)

    def _tokenize_text(self, text):
        if self._pre_tokenize is not None:
            text = " ".join(self._pre_tokenize(text))
        return super()._tokenize_text(text)

    def _special_id(self, token):
        return self._piece_id(token)
