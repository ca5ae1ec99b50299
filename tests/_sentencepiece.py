"""A tiny SentencePiece model trained on the fly for the tokenizer tests."""


def train_sentencepiece(folder, lines, **options):
    """Train a unigram model on ``lines`` in ``folder``; return the ``.model`` path.

    ``options`` go to ``SentencePieceTrainer.train`` (``vocab_size``, the special
    ids, ``user_defined_symbols`` ...).
    """
    import sentencepiece as spm

    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(lines), encoding="utf-8")
    prefix = str(folder / "tiny")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=prefix,
                                   model_type="unigram", character_coverage=1.0,
                                   minloglevel=2, **options)
    return prefix + ".model"
