"""Google BERT's character classes, shared by the tokenizer and the vocabulary helpers.

The classes follow Google's ``tokenization.py`` (google-research/bert): CJK ideographs
(the eight blocks of ``CJK_RANGES``), punctuation (ASCII 33-47, 58-64, 91-96, 123-126,
or Unicode category P*), control characters (Cc or Cf, except ``\\t \\n \\r``) and
whitespace (space, ``\\t \\n \\r`` or category Zs). ``character_tables()`` turns them
into translation tables built once from one scan of Unicode.
"""

import functools
import unicodedata

CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)
# Everything outside these planes is unassigned (Cn) or private use (Co): neither
# control, whitespace, punctuation nor a combining mark.
_ASSIGNED_PLANES = ((0x0, 0x3FFFF), (0xE0000, 0xE0FFF))

# Classes of a character in the cleaning step of the offset-tracking path.
DROP, SPACE, CJK = 0, 1, 2


def is_cjk_character(char):
    """Whether ``char`` is a CJK ideograph (split off as a word of its own)."""
    code = ord(char)
    return any(low <= code <= high for low, high in CJK_RANGES)


def is_punctuation(char):
    """Whether ``char`` is punctuation in Google's sense (ASCII symbols included)."""
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def is_control(char):
    """Whether ``char`` is a control character the cleaning step drops."""
    if char in "\t\n\r":
        return False
    return unicodedata.category(char) in ("Cc", "Cf")


def is_whitespace(char):
    """Whether ``char`` counts as a space."""
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


class CharacterTables:
    """Translation tables and sets built once from one scan of Unicode."""

    def __init__(self):
        drop, space, punctuation, nonspacing = [], [], [], []
        for low, high in _ASSIGNED_PLANES:
            for code in range(low, high + 1):
                char = chr(code)
                category = unicodedata.category(char)
                if code == 0 or code == 0xFFFD or is_control(char):
                    drop.append(code)
                elif is_whitespace(char):
                    space.append(code)
                elif is_punctuation(char):
                    punctuation.append(code)
                elif category == "Mn":
                    nonspacing.append(code)
        cjk = [code for low, high in CJK_RANGES for code in range(low, high + 1)]

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

        self.char_class = {chr(code): DROP for code in drop}
        self.char_class.update({chr(code): SPACE for code in space})
        self.char_class.update({chr(code): CJK for code in cjk})
        self.punctuation = frozenset(map(chr, punctuation))
        self.nonspacing = frozenset(map(chr, nonspacing))


@functools.lru_cache(maxsize=None)
def character_tables():
    """The :class:`CharacterTables`, built on first use (a scan of Unicode)."""
    return CharacterTables()


@functools.lru_cache(maxsize=1 << 16)
def lower_and_strip_accents(char):
    """``do_lower_case`` normalisation of one ideograph (compatibility ideographs
    decompose under NFD to their unified twins)."""
    return "".join(piece for piece in unicodedata.normalize("NFD", char.lower())
                   if unicodedata.category(piece) != "Mn")


def wordpiece_stem(token):
    """A WordPiece token without its ``##`` continuation prefix."""
    return token[2:] if token.startswith("##") and len(token) > 2 else token
