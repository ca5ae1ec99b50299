"""The base BERT of the demos: an official checkpoint, bert4x's tiny Chinese BERT, or a
tiny random model for tests; and a vocabulary trimmed to the demo's corpus.

Every demo takes the same three ways to its base model:

* ``--config/--checkpoint/--vocab``: an official (Google or Hugging Face) Chinese
  BERT the user has;
* by default, the tiny Chinese BERT that bert4x's pretraining pipeline trains on
  the first run (from ``pretraining/configs/tiny_chinese.json``) and caches;
* ``--tiny-random`` (for tests): a randomly initialised two-layer model, so that
  a smoke test needs no pretraining.

Example:
    >>> parser = add_base_model_arguments(argparse.ArgumentParser())  # doctest: +SKIP
    >>> base = resolve_base_model(parser.parse_args([]))  # doctest: +SKIP
    >>> tokenizer, keep_tokens = base.tokenizer_for(["今天天气很好"])  # doctest: +SKIP
    >>> encoder = base.build(keep_tokens, with_pool=True)  # doctest: +SKIP
"""

import argparse
import os
import random

import numpy as np

from bert4x.resources import chinese_vocab_path
from bert4x.tokenizers import Tokenizer, corpus_vocabulary, load_vocab

# A model small enough for a smoke test to train in seconds on one core.
TINY_RANDOM_CONFIG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=128, max_position_embeddings=256,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def add_base_model_arguments(parser):
    """Add ``--config --checkpoint --vocab --model --pretrained-dir --tiny-random --seed``."""
    from bert4x.models import MODELS
    group = parser.add_argument_group("base model")
    group.add_argument("--config", help="bert_config.json / config.json of an official "
                       "Chinese BERT (with --checkpoint and --vocab)")
    group.add_argument("--checkpoint", help="its TF checkpoint prefix or safetensors file")
    group.add_argument("--vocab", help="its vocab.txt")
    group.add_argument("--model", choices=sorted(MODELS), default=None,
                       help="its family, e.g. roberta (HFL RoBERTa-wwm-ext) or albert "
                       "(albert_zh); default: the config's model_type, else bert")
    group.add_argument("--pretrained-dir", default=None,
                       help="cache folder of the tiny Chinese BERT pretrained on the "
                       "first run (default: bert4x's own cache)")
    group.add_argument("--tiny-random", action="store_true",
                       help=argparse.SUPPRESS)  # tests: random tiny model, no pretraining
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    return parser


def set_seed(seed):
    """Seed Python, NumPy and Keras (TensorFlow) random generators."""
    import keras
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


class BaseModel:
    """Where the base model's files are and how to build on it.

    Attributes:
        config_path: the config file, or ``None`` for the tiny random model.
        checkpoint_path: the weights, or ``None`` for the tiny random model.
        vocab_path: the full ``vocab.txt``.
        overrides: config fields given to ``build_transformer_model``.
        description: a line saying which base model this is.
    """

    def __init__(self, config_path, checkpoint_path, vocab_path, overrides, description,
                 model=None):
        self.config_path = config_path
        self.model = model
        self.checkpoint_path = checkpoint_path
        self.vocab_path = vocab_path
        self.overrides = dict(overrides)
        self.description = description

    def tokenizer_for(self, texts):
        """A tokenizer over the tokens ``texts`` use, and the rows to keep.

        Trimming the vocabulary to the corpus (plus the special tokens) keeps the
        tokenisation of these texts unchanged, because WordPiece's greedy longest
        match only ever picks pieces that the texts produce, while it makes the
        output softmax several times cheaper on a CPU.

        Returns:
            ``(tokenizer, keep_tokens)`` for ``build_transformer_model(keep_tokens=...)``.
        """
        full = Tokenizer(self.vocab_path, do_lower_case=True)
        tokens, keep_tokens = corpus_vocabulary(full, texts)
        token_dict = {token: index for index, token in enumerate(tokens)}
        return Tokenizer(token_dict, do_lower_case=True), keep_tokens

    def build(self, keep_tokens, **kwargs):
        """``build_transformer_model`` on this base with ``keep_tokens`` rows."""
        from bert4x.models import build_transformer_model
        overrides = dict(self.overrides)
        if self.checkpoint_path is None:
            overrides["vocab_size"] = len(load_vocab(self.vocab_path))
        return build_transformer_model(self.config_path, self.checkpoint_path,
                                       model=self.model, keep_tokens=keep_tokens,
                                       **overrides, **kwargs)


def resolve_base_model(args):
    """The :class:`BaseModel` the command-line arguments ask for.

    Raises:
        SystemExit: an incomplete ``--config/--checkpoint/--vocab`` triple.
    """
    given = [args.config, args.checkpoint, args.vocab]
    if any(given):
        if not args.checkpoint or not args.vocab:
            raise SystemExit("an official base model needs --checkpoint and --vocab "
                             "(and --config unless it lies beside the checkpoint)")
        return BaseModel(args.config, args.checkpoint, args.vocab, {},
                         f"official checkpoint {args.checkpoint}", model=args.model)
    if args.tiny_random:
        overrides = dict(TINY_RANDOM_CONFIG)
        if args.model in ("albert", "albert_unshared", "electra"):
            overrides["embedding_size"] = 32  # factorised, as those checkpoints are
        return BaseModel(None, None, chinese_vocab_path(), overrides,
                         f"tiny randomly initialised {args.model or 'bert'} (test mode)",
                         model=args.model)
    from bert4x import pretraining
    folder = pretraining.ensure_pretrained("tiny_chinese", output_dir=args.pretrained_dir)
    return from_folder(folder)


def from_folder(folder):
    """A :class:`BaseModel` from a folder holding a config, the weights and ``vocab.txt``.

    The config is found as ``build_transformer_model`` finds it
    (:func:`bert4x.models.resolve_paths`).

    Raises:
        FileNotFoundError: the folder lacks a config or a ``vocab.txt``.
    """
    from bert4x.models import resolve_paths
    config, _ = resolve_paths(None, folder)
    vocab = os.path.join(folder, "vocab.txt")
    if not os.path.isfile(vocab):
        raise FileNotFoundError(f"{folder!r} lacks a vocab.txt")
    return BaseModel(config, folder, vocab, {}, f"bert4x tiny Chinese BERT in {folder}")


def save_weights_atomically(model, path):
    """``model.save_weights(path)`` through a temporary file, so that an interrupted
    run never leaves a truncated file under ``path``.

    Raises:
        ValueError: ``path`` does not end in ``.weights.h5`` (Keras's rule).
    """
    if not path.endswith(".weights.h5"):
        raise ValueError(f"--save-weights {path!r}: the file name must end in .weights.h5")
    partial = path[:-len(".weights.h5")] + ".partial.weights.h5"
    model.save_weights(partial)
    os.replace(partial, path)
    print(f"fine-tuned weights written to {path}")
