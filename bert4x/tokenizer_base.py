"""What every bert4x tokenizer shares: start/end tokens, truncation, pairs and batches."""

import numpy as np

__all__ = ["TokenizerBase"]


class TokenizerBase:
    """Sequence building shared by ``Tokenizer`` and ``SpTokenizer``.

    A subclass says how a text becomes tokens (``_tokenize_text``) and how tokens
    map to ids (``token_to_id``, ``id_to_token``); this class adds the start and end
    tokens, truncation, sentence pairs and padded batches.
    """

    token_start = None
    token_end = None
    token_start_id = None
    token_end_id = None
    pad_id = None

    def _tokenize_text(self, text):
        raise NotImplementedError(f"{type(self).__name__} does not define _tokenize_text")

    def token_to_id(self, token):
        raise NotImplementedError(f"{type(self).__name__} does not define token_to_id")

    def id_to_token(self, token_id):
        raise NotImplementedError(f"{type(self).__name__} does not define id_to_token")

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

