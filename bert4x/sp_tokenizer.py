"""A SentencePiece tokenizer with the interface of bert4x's WordPiece ``Tokenizer``.

``sentencepiece`` is imported only when an ``SpTokenizer`` is built.
"""

import os

from bert4x import storage
from bert4x.tokenizer_base import TokenizerBase

__all__ = ["SpTokenizer"]


class SpTokenizer(TokenizerBase):
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
        storage.check_readable(model_path, "SentencePiece model")
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
