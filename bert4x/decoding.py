"""Autoregressive decoding: greedy, beam search and sampling, batched over sources.

Two routes share one implementation of each search algorithm (:mod:`bert4x.search`):

* :class:`Decoder` runs a ``unilm``/``lm`` model with a key/value cache: every
  source is run once (the prefill), then one token per step; the per-step
  function is compiled once (``tf.function`` on TensorFlow, ``jax.jit`` on JAX,
  eager ``torch.no_grad()`` on PyTorch) and the cache stays on the device.
* :class:`RerunDecoder` re-runs whatever the caller wants each step (no cache):
  subclass it and write ``predict(inputs, output_ids, states)`` returning the
  next-token scores of every row. (bert4keras's own ``AutoRegressiveDecoder``,
  with bert4keras's search rules, is :mod:`bert4x.bert4keras.snippets`'s.)

The search functions only see a *scorer*: ``first()`` gives the next-token
log-probabilities ``[units, vocab]`` after the sources, ``next(parents,
tokens)`` reorders the units (row ``u`` continues unit ``parents[u]``), appends
``tokens`` and gives the following log-probabilities. A unit is one beam, one
sample, or one greedy sequence; several inputs scored jointly (a *group*) form
one unit whose distribution is the mean of its members' probabilities.
:class:`Decoder` also offers classifier-free guidance (``guidance_scale`` with
negative sources or additional inputs), combining each unit's log-probabilities
with those of its negative inputs.

Scores: a hypothesis of ``n`` generated tokens (the end token counted) with
summed log-probability ``s`` scores ``s / n ** length_penalty`` (Hugging Face's
convention); greedy and sampled sequences report ``s``.
"""

import dataclasses
import math
import weakref

import keras
import numpy as np
from keras import ops

from bert4x.search import (GenerationResult, ancestral, beam_search, check_beam,
                           check_end_id, check_lengths, check_sampling, filter_log_probs,
                           greedy_choice, is_int, logsumexp, sampling_choice, to_log_probs)

__all__ = ["GenerationResult", "Decoder", "RerunDecoder", "filter_log_probs"]


# ---------------------------------------------------------------- sources
def _is_group(item):
    if isinstance(item, np.ndarray):
        return item.ndim == 2
    return (isinstance(item, (list, tuple)) and len(item) > 0
            and isinstance(item[0], (list, tuple, np.ndarray)))


def _flatten_sources(sources, vocab_size, pad_id=0):
    """Flatten sources into members; returns ``(members, owner, group_sizes)``."""
    if isinstance(sources, np.ndarray):
        sources = list(sources)
    if not isinstance(sources, (list, tuple)) or not sources:
        raise ValueError("sources must be a non-empty list of token-id lists "
                         "(or of lists of them, for inputs scored jointly)")
    members, owner, sizes = [], [], []
    for index, item in enumerate(sources):
        group = list(item) if _is_group(item) else [item]
        if not group:
            raise ValueError(f"source {index} is an empty group")
        for member in group:
            ids = [int(token) for token in np.asarray(member).ravel()]
            label = f"source {index}" + (f" member {len(sizes)}" if len(group) > 1 else "")
            if not ids:
                raise ValueError(f"{label} is empty: a source needs at least one token")
            bad = [t for t in ids if not 0 <= t < vocab_size or t == pad_id]
            if bad:
                raise ValueError(f"{label} has ids outside 0..{vocab_size - 1} or equal "
                                 f"to the padding id {pad_id}: {bad[:10]}")
            members.append(ids)
            owner.append(index)
        sizes.append(len(group))
    return members, np.asarray(owner), sizes


def _units_from_rows(row_log_probs, group_sizes, copies):
    """Average member probabilities per unit (rows are ``member * copies + copy``)."""
    if all(size == 1 for size in group_sizes):
        return row_log_probs
    vocab = row_log_probs.shape[-1]
    per_member = row_log_probs.reshape(-1, copies, vocab)
    units, start = [], 0
    for size in group_sizes:
        block = per_member[start:start + size]
        units.append(logsumexp(block, axis=0) - math.log(size))
        start += size
    return np.concatenate(units, axis=0)


@dataclasses.dataclass
class _Negative:
    """The negative inputs of classifier-free guidance, flattened like the sources."""

    members: list
    owner: np.ndarray
    group_sizes: list
    extras: dict  # {additional input name: array}
    scale: float


def _guided(positive, negative, scale):
    """Classifier-free guidance: ``log_softmax(neg + scale * (pos - neg))`` per unit.

    Tokens impossible under the positive inputs stay impossible; a token the
    negative inputs rule out (log-probability ``-inf``) is charged the lowest
    finite log-probability of its row instead, so that it is not boosted to
    ``+inf``.
    """
    finite = np.isfinite(negative)
    floor = np.min(np.where(finite, negative, np.inf), axis=-1, keepdims=True)
    negative = np.where(finite, negative, np.where(np.isfinite(floor), floor, 0.0))
    with np.errstate(invalid="ignore"):
        guided = np.where(np.isfinite(positive), negative + scale * (positive - negative),
                          -np.inf)
    return guided - logsumexp(guided, axis=-1, keepdims=True)


# ------------------------------------------------------------- cached route
# Compiled graphs per builder and XLA setting, so that every Decoder over one
# model shares one trace.
_COMPILED = weakref.WeakKeyDictionary()


def _compiled_models(builder, jit_compile):
    per_builder = _COMPILED.setdefault(builder, {})
    if jit_compile not in per_builder:
        per_builder[jit_compile] = _CompiledModels(builder, jit_compile)
    return per_builder[jit_compile]


class _CompiledModels:
    """The prefill and step graphs, compiled once for the active backend."""

    def __init__(self, builder, jit_compile):
        self.prefill_model, self.step_model = builder.cache_models()
        self.backend = keras.backend.backend()
        self.step_traces = 0
        self.prefill_traces = 0
        if self.backend == "tensorflow":
            self._compile_tensorflow(jit_compile)
        elif self.backend == "jax":
            self._compile_jax()
        else:
            self._prefill, self._step = self._prefill_eager, self._step_eager

    # The bodies are plain Keras calls; the counters only move when a backend
    # traces them, which is what the no-retracing test checks.
    def _prefill_body(self, call, inputs):
        self.prefill_traces += 1
        return self._log_probs(call(self.prefill_model, dict(inputs)))

    @staticmethod
    def _taken(model, inputs):
        """The named inputs ``model`` takes, of those the scorer offers (an
        encoder-decoder's graphs take neither segments nor positions)."""
        missing = sorted(set(model.input) - set(inputs))
        if missing:
            raise ValueError(f"the decoding graph {model.name!r} takes inputs {missing} that "
                             f"the decoder does not give (it gives {sorted(inputs)})")
        return {name: inputs[name] for name in model.input}

    def _step_body(self, call, inputs, parents):
        self.step_traces += 1
        # Reorder the beams' generated slots on the device (the source slots are shared).
        inputs = dict(inputs, cache=ops.take(inputs["cache"], parents, axis=0))
        return self._log_probs(call(self.step_model, inputs))

    @staticmethod
    def _log_probs(outputs):
        """A graph's outputs with ``"log_probs"`` in place of ``"logits"``."""
        found = {name: value for name, value in outputs.items() if name != "logits"}
        found["log_probs"] = ops.log_softmax(ops.cast(outputs["logits"], "float32"), axis=-1)
        return found

    @staticmethod
    def _keras_call(model, inputs):
        return model(inputs, training=False)

    def _compile_tensorflow(self, jit_compile):
        import tensorflow as tf

        def specs(model):
            return {name: tf.TensorSpec(tensor.shape, tensor.dtype)
                    for name, tensor in model.input.items()}

        prefill = tf.function(
            lambda inputs: self._prefill_body(self._keras_call, inputs),
            input_signature=[specs(self.prefill_model)], jit_compile=jit_compile)
        step = tf.function(
            lambda inputs, parents: self._step_body(self._keras_call, inputs, parents),
            input_signature=[specs(self.step_model), tf.TensorSpec((None,), tf.int32)],
            jit_compile=jit_compile)
        self._prefill, self._step = prefill, step

    def _compile_jax(self):
        import jax

        def stateless(variables):
            def call(model, inputs):
                trainable, non_trainable = variables
                outputs, _ = model.stateless_call(trainable, non_trainable, inputs,
                                                  training=False)
                return outputs
            return call

        prefill = jax.jit(lambda variables, inputs: self._prefill_body(
            stateless(variables), inputs))
        step = jax.jit(lambda variables, inputs, parents: self._step_body(
            stateless(variables), inputs, parents))

        def variables(model):
            return ([v.value for v in model.trainable_variables],
                    [v.value for v in model.non_trainable_variables])

        self._prefill = lambda inputs: prefill(variables(self.prefill_model), inputs)
        self._step_jit = step
        self._step = None  # bound per decode with the current weights (see start)
        self._variables = variables

    def _prefill_eager(self, inputs):
        import torch
        with torch.no_grad():
            return self._prefill_body(self._keras_call, self._tensors(inputs))

    def _step_eager(self, inputs, parents):
        import torch
        with torch.no_grad():
            return self._step_body(self._keras_call, self._tensors(inputs),
                                   ops.convert_to_tensor(parents))

    @staticmethod
    def _tensors(inputs):
        return {name: ops.convert_to_tensor(value) for name, value in inputs.items()}

    def step_function(self):
        """The step callable for one decode (JAX binds the current weights once)."""
        if self.backend != "jax":
            step = self._step
        else:
            weights = self._variables(self.step_model)

            def step(inputs, parents):
                return self._step_jit(weights, inputs, parents)
        return lambda inputs, parents: step(self._taken(self.step_model, inputs), parents)

    def prefill(self, inputs):
        return self._prefill(self._taken(self.prefill_model, inputs))


class _CachedScorer:
    """Scorer over the cache models: prefill once, then one token per step."""

    def __init__(self, compiled, members, owner, group_sizes, copies, max_length,
                 target_segment_id, extras, vocab_size, negative=None, pad_id=0):
        self.compiled = compiled
        self.group_sizes = group_sizes
        self.copies = copies
        self.vocab_size = vocab_size
        member_extras = {name: np.take(extra, owner, axis=0)
                         for name, extra in extras.items()}
        # Guidance runs the negative members as extra rows after the positive ones.
        self.negative = negative
        self.positive_rows = len(members) * copies
        if negative is not None:
            members = members + negative.members
            owner = np.concatenate([owner, negative.owner])
            member_extras = {
                name: np.concatenate([ours, np.take(negative.extras[name], negative.owner,
                                                    axis=0)])
                for name, ours in member_extras.items()}
        count = len(members)
        self.source_length = max(len(m) for m in members)
        self.token_ids = np.full((count, self.source_length), pad_id, dtype=np.int32)
        for row, ids in enumerate(members):
            self.token_ids[row, :len(ids)] = ids
        self.lengths = np.asarray([len(m) for m in members], dtype=np.int32)
        self.member_extras = member_extras
        self.member_of_row = np.repeat(np.arange(count), copies)
        copy_of_row = np.tile(np.arange(copies), count)
        self.unit_of_row = owner[self.member_of_row] * copies + copy_of_row
        self.rows = count * copies
        # The last generated token is never fed, hence max_length - 1 new slots.
        self.new_slots = max(max_length - 1, 0)
        # The sources' keys and values are cached once per member and shared by its
        # rows; each row caches only its generated tokens.
        self.source_key_mask = (self.token_ids != pad_id).astype(np.float32)
        self.key_mask = np.zeros((self.rows, self.new_slots), dtype=np.float32)
        self.row_positions = np.repeat(self.lengths, copies)
        self.segment = np.full((self.rows, 1), target_segment_id, dtype=np.int32)
        self.row_extras = {name: np.take(extra, self.member_of_row, axis=0)
                           for name, extra in self.member_extras.items()}
        self.step = 0
        self.source_cache = self.cache = None
        # What else the prefill returns (an encoder-decoder's cross-attention keys and
        # values), one row per member, given to every step as it is.
        self.shared = {}
        # The padding id is masked as a key in a full run, so a generated one
        # would not mean what it means in the cache: never emit it.
        self.banned_ids = (pad_id,)
        self.step_function = compiled.step_function()

    def first(self):
        outputs = self.compiled.prefill(dict(
            token_ids=self.token_ids, segment_ids=np.zeros_like(self.token_ids),
            last_index=self.lengths - 1, **self.member_extras))
        self.source_cache = outputs["cache"]
        self.shared = {name: value for name, value in outputs.items()
                       if name not in ("log_probs", "cache")}
        shape = list(ops.shape(self.source_cache))
        shape[0], shape[4] = self.rows, self.new_slots
        self.cache = ops.zeros(shape, dtype=self.source_cache.dtype)
        rows = np.repeat(ops.convert_to_numpy(outputs["log_probs"]).astype(np.float64),
                         self.copies, axis=0)
        return self._units(rows)

    def next(self, parents, tokens):
        parents = np.asarray(parents)
        copy_of_parent = parents[self.unit_of_row] % self.copies
        row_parents = (self.member_of_row * self.copies + copy_of_parent).astype(np.int32)
        row_tokens = np.asarray(tokens)[self.unit_of_row].astype(np.int32)[:, None]
        self.key_mask[:, self.step] = 1.0
        write_mask = np.zeros((self.rows, self.new_slots), dtype=np.float32)
        write_mask[:, self.step] = 1.0
        positions = (self.row_positions + self.step).astype(np.int32)[:, None]
        inputs = dict(token_ids=row_tokens, segment_ids=self.segment, position_ids=positions,
                      source_cache=self.source_cache, source_key_mask=self.source_key_mask,
                      cache=self.cache, key_mask=self.key_mask.copy(), write_mask=write_mask,
                      **self.shared, **self.row_extras)
        outputs = self.step_function(inputs, row_parents)
        self.cache = outputs["cache"]
        self.step += 1
        rows = ops.convert_to_numpy(outputs["log_probs"]).astype(np.float64)
        return self._units(rows)

    def _units(self, rows):
        units = _units_from_rows(rows[:self.positive_rows], self.group_sizes, self.copies)
        if self.negative is None:
            return units
        negative = _units_from_rows(rows[self.positive_rows:], self.negative.group_sizes,
                                    self.copies)
        return _guided(units, negative, self.negative.scale)


_GUIDANCE_ARGUMENTS = ("guidance_scale", "negative_sources", "negative_additional_inputs")


def _guidance_arguments(arguments):
    unknown = sorted(set(arguments) - set(_GUIDANCE_ARGUMENTS))
    if unknown:
        raise TypeError(f"unexpected keyword arguments {unknown}; the decoding methods "
                        f"also take {list(_GUIDANCE_ARGUMENTS)}")
    return arguments


class Decoder:
    """Cached, batched decoding for a ``unilm`` or ``lm`` model, or an encoder-decoder.

    Each source (a list of token ids, e.g. ``[CLS] ... [SEP]`` of a UniLM
    source) is run once; generation then feeds one token per step at position
    ``len(source) + t`` with segment ``target_segment_id``. A source may be a
    list of several token-id lists: these inputs are scored jointly, the next
    token's distribution being the mean of their distributions.

    An encoder-decoder (T5, mT5) runs its encoder once per source, computes each
    decoder layer's cross-attention keys and values of it once, and generates
    from the decoder's start id (which is not part of the results); its decoder
    caches its own keys and values as a UniLM does.

    Args:
        builder: the model's builder
            (``build_transformer_model(..., return_keras_model=False)``).
        end_id: the token that ends a sequence (``[SEP]`` for UniLM), or None.
            Not 0: id 0 is padding, which the decoder never generates.
        max_length: default maximum number of generated tokens (end included).
            A source of ``L`` tokens needs ``L + max_length - 1`` positions
            (the last generated token is never fed), at most
            ``max_position_embeddings`` (fairseq RoBERTa: 2 fewer); families
            without a position table (RoFormer, NEZHA) have no such limit.
        min_length: default minimum number of tokens before the end token.
        target_segment_id: segment id of generated tokens (default 1 for UniLM,
            0 for LM), below the model's ``type_vocab_size``.
        jit_compile: TensorFlow only: compile the step with XLA.

    Raises:
        ValueError: a setting out of range (named), and while decoding: a model
            that produces NaN/inf scores, or a constraint (with ``min_length``)
            that allows no token after some prefix.

    Example:
        >>> builder = build_transformer_model(config_path, checkpoint_path,  # doctest: +SKIP
        ...     application="unilm", return_keras_model=False)
        >>> decoder = Decoder(builder, end_id=tokenizer.token_to_id("[SEP]"), max_length=32)
        >>> best = decoder.beam_search([token_ids_1, token_ids_2], beam_size=4)
        >>> tokenizer.decode(best[0][0].token_ids)
    """

    def __init__(self, builder, end_id=None, max_length=32, min_length=0,
                 target_segment_id=None, jit_compile=False):
        if not getattr(builder, "generates", False):
            raise ValueError("Decoder needs the builder of a generator: application='unilm' "
                             "or 'lm', or an encoder-decoder such as T5 "
                             "(build_transformer_model(..., return_keras_model=False))")
        self.builder = builder
        self.vocab_size = builder.config.vocab_size
        self.max_positions = builder.max_positions  # None: no position table, no limit
        self.position_rule = builder.position_rule()
        self.pad_id = builder.config.pad_token_id
        self.end_id = check_end_id(end_id, self.vocab_size)
        if self.end_id == self.pad_id:
            raise ValueError(
                f"end_id {self.pad_id} is the padding id, which the decoder never generates, "
                "so no sequence would end; pass the end token's id (e.g. "
                "tokenizer.token_to_id('[SEP]'))")
        check_lengths(max_length, min_length)
        self.max_length, self.min_length = int(max_length), int(min_length)
        if target_segment_id is None:
            target_segment_id = 1 if builder.application == "unilm" else 0
        segments = builder.config.type_vocab_size
        if segments < 2:  # none or one token type: segment ids drive the UniLM mask only
            segments = 2
        if not is_int(target_segment_id) or not 0 <= target_segment_id < segments:
            raise ValueError(f"target_segment_id must be a segment id of the model "
                             f"(0..{segments - 1}, type_vocab_size {segments}), "
                             f"got {target_segment_id!r}")
        self.target_segment_id = int(target_segment_id)
        self.jit_compile = bool(jit_compile)

    @property
    def step_traces(self):
        """How many times the model's step function was traced (compiled) so far.

        Shared by every decoder of the same builder and ``jit_compile`` setting.
        """
        return _compiled_models(self.builder, self.jit_compile).step_traces

    def _scorer(self, sources, copies, max_length, min_length, additional_inputs,
                guidance=None):
        check_lengths(max_length, min_length)
        members, owner, sizes = _flatten_sources(sources, self.vocab_size, self.pad_id)
        extras = self._extras(additional_inputs, len(sizes))
        negative = self._negative(guidance or {}, sources, additional_inputs, len(sizes))
        longest = max(len(m) for m in members + (negative.members if negative else []))
        # The last generated token is never fed to the model, so it takes no position.
        needed = longest + max_length - 1
        if self.max_positions is not None and needed > self.max_positions:
            raise ValueError(
                f"a source of {longest} tokens plus max_length {max_length} new tokens "
                f"needs {needed} positions (the last new token is never fed); the "
                f"position table has {self.max_positions} usable positions "
                f"({self.position_rule}; model {self.builder.family!r}); RoFormer "
                f"and NEZHA have no position table and no such limit")
        compiled = _compiled_models(self.builder, self.jit_compile)
        scorer = _CachedScorer(compiled, members, owner, sizes, copies, max_length,
                               self.target_segment_id, extras, self.vocab_size, negative,
                               pad_id=self.pad_id)
        return scorer, len(sizes)

    def _negative(self, guidance, sources, additional_inputs, num_sources):
        """Validate the guidance arguments; None when guidance is off (scale 1)."""
        scale = guidance.get("guidance_scale", 1.0)
        negative_sources = guidance.get("negative_sources")
        negative_inputs = guidance.get("negative_additional_inputs")
        if not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"guidance_scale must be a finite number, got {scale!r}")
        if scale == 1.0:
            return None
        if negative_sources is None and negative_inputs is None:
            raise ValueError(
                f"guidance_scale={scale} needs something to steer away from: pass "
                "negative_sources and/or negative_additional_inputs (e.g. the other "
                "class label of a CLN model)")
        if negative_sources is None:
            negative_sources = sources
        if negative_inputs is None:
            negative_inputs = additional_inputs
        members, owner, sizes = _flatten_sources(negative_sources, self.vocab_size,
                                                 self.pad_id)
        if len(sizes) != num_sources:
            raise ValueError(f"negative_sources has {len(sizes)} sources; expected one per "
                             f"source ({num_sources})")
        extras = self._extras(negative_inputs, num_sources)
        return _Negative(members, owner, sizes, extras, float(scale))

    def _extras(self, additional_inputs, num_sources):
        expected = self.builder.additional_inputs
        given = [] if additional_inputs is None else list(additional_inputs)
        if len(given) != len(expected):
            names = [tensor.name for tensor in expected]
            raise ValueError(f"the model takes {len(expected)} additional inputs {names}; "
                             f"got {len(given)} (pass additional_inputs=[one array per "
                             "input, one row per source])")
        arrays = {}  # keyed as the cache models name them: by the input's name
        for tensor, value in zip(expected, given):
            value = np.asarray(value, dtype=tensor.dtype)
            if value.shape[:1] != (num_sources,):
                raise ValueError(f"additional input {tensor.name} has {value.shape[:1]} "
                                 f"rows; expected one per source ({num_sources})")
            arrays[tensor.name] = value
        return arrays

    def _defaults(self, max_length, min_length):
        return (self.max_length if max_length is None else max_length,
                self.min_length if min_length is None else min_length)

    def next_token_log_probs(self, sources, additional_inputs=None):
        """Log-probabilities of the first generated token of each source.

        One cached run over the sources, no generation: e.g. how likely a
        UniLM reader is to answer ``[SEP]`` (nothing) from a passage.

        Args:
            sources, additional_inputs: as in :meth:`greedy` (a group of
                sources gets the mean of its members' distributions).

        Returns:
            A float64 array ``[len(sources), vocab_size]``.

        Example:
            >>> log_probs = decoder.next_token_log_probs([[2, 7, 9, 3]])  # doctest: +SKIP
            >>> float(np.exp(log_probs[0, sep_id]))  # P(the answer is empty)  # doctest: +SKIP
        """
        scorer, _ = self._scorer(sources, 1, 1, 0, additional_inputs)
        return np.asarray(scorer.first(), dtype=np.float64)

    def greedy(self, sources, max_length=None, min_length=None, constraint=None,
               additional_inputs=None, **guidance):
        """Most likely token at each step.

        Args:
            sources: a list of token-id lists (or of groups of them).
            max_length, min_length: override the decoder's defaults.
            constraint: ``constraint(source_index, prefix_ids)`` returning the
                allowed next ids or a boolean mask over the vocabulary.
            additional_inputs: one array per additional model input (e.g. the
                CLN condition), one row per source.
            **guidance: classifier-free guidance (Hugging Face's names):
                ``guidance_scale`` (default 1.0: off) and ``negative_sources``
                and/or ``negative_additional_inputs`` (one per source; each
                defaults to the positive one). Each step then scores tokens by
                ``log_softmax(neg + guidance_scale * (pos - neg))`` of the
                positive and negative log-probabilities: above 1 it moves
                generation towards what tells the positive inputs apart from the
                negative ones (e.g. one class label from another).

        Returns:
            One :class:`GenerationResult` per source.

        Example:
            >>> [r.token_ids for r in decoder.greedy([[2, 7, 9, 3]])]  # doctest: +SKIP
        """
        max_length, min_length = self._defaults(max_length, min_length)
        scorer, count = self._scorer(sources, 1, max_length, min_length, additional_inputs,
                                     _guidance_arguments(guidance))
        results = ancestral(scorer, count, 1, max_length, min_length, self.end_id,
                             constraint, greedy_choice)
        return [found[0] for found in results]

    def beam_search(self, sources, beam_size=4, length_penalty=1.0, num_return=1,
                    max_length=None, min_length=None, constraint=None,
                    additional_inputs=None, early_stopping=True, **guidance):
        """Beam search, batched over sources.

        Scores are ``log_prob / length ** length_penalty`` (``length`` counts
        the end token). Stops a source early once no live beam can change its
        ``num_return`` best (see ``beam_search`` for the exact bound).

        Args:
            sources: a list of token-id lists (or of groups scored jointly).
            beam_size: live beams per source.
            length_penalty: exponent of the length normaliser (0: raw sums).
            num_return: results per source, best first (at most ``beam_size``).
            max_length, min_length, constraint, additional_inputs, **guidance:
                as in :meth:`greedy`.
            early_stopping: stop a source as soon as its results are settled.

        Returns:
            For each source, a list of up to ``num_return`` :class:`GenerationResult`.

        Example:
            >>> decoder.beam_search([[2, 7, 9, 3]], beam_size=4)[0][0].token_ids  # doctest: +SKIP
        """
        check_beam(beam_size, num_return, length_penalty)
        max_length, min_length = self._defaults(max_length, min_length)
        scorer, count = self._scorer(sources, beam_size, max_length, min_length,
                                     additional_inputs, _guidance_arguments(guidance))
        return beam_search(scorer, count, beam_size, max_length, min_length, self.end_id,
                            float(length_penalty), num_return, constraint, early_stopping)

    def sample(self, sources, n=1, temperature=1.0, top_k=None, top_p=None, seed=None,
               max_length=None, min_length=None, constraint=None, additional_inputs=None,
               **guidance):
        """Random sampling: temperature, then top-k, then top-p; ``n`` per source.

        Args:
            sources: a list of token-id lists (or of groups scored jointly).
            n: samples per source.
            temperature, top_k, top_p: see :func:`filter_log_probs`.
            seed: an int (or ``numpy.random.Generator``) for reproducible draws.
            max_length, min_length, constraint, additional_inputs, **guidance:
                as in :meth:`greedy`; with guidance, temperature, top-k and top-p
                filter the guided distribution.

        Returns:
            For each source, ``n`` results; ``score`` is the model log-probability
            (the guided one under guidance).

        Example:
            >>> decoder.sample([[2, 7, 9, 3]], n=3, top_p=0.9, seed=0)  # doctest: +SKIP
        """
        check_sampling(n, temperature, top_k, top_p)
        max_length, min_length = self._defaults(max_length, min_length)
        scorer, count = self._scorer(sources, n, max_length, min_length, additional_inputs,
                                     _guidance_arguments(guidance))
        choose = sampling_choice(np.random.default_rng(seed), temperature, top_k, top_p)
        return ancestral(scorer, count, n, max_length, min_length, self.end_id, constraint,
                          choose)


# ---------------------------------------------------------------- re-run route
class _PredictScorer:
    """Scorer over a user's ``predict``: re-runs it on the whole prefix each step."""

    def __init__(self, decoder, inputs, copies):
        self.decoder = decoder
        self.copies = copies
        self.inputs = [np.repeat(np.asarray(value)[None], copies, axis=0) for value in inputs]
        start = [] if decoder.start_id is None else [decoder.start_id]
        self.output_ids = np.full((copies, len(start)), start, dtype=np.int32)
        self.states = None
        self.vocab_size = None
        self.banned_ids = ()

    def _predict(self):
        result = self.decoder.predict(self.inputs, self.output_ids, self.states)
        if isinstance(result, tuple):
            result, self.states = result
        log_probs = to_log_probs(result, self.decoder.rtype)
        if log_probs.ndim != 2 or log_probs.shape[0] != self.copies:
            raise ValueError(f"predict must return scores of shape [{self.copies}, vocab] "
                             f"(one row per output_ids row); got {log_probs.shape}")
        self.vocab_size = log_probs.shape[1]
        self.decoder._check_vocab(self.vocab_size)
        return log_probs

    def first(self):
        return self._predict()

    def next(self, parents, tokens):
        self.output_ids = np.concatenate(
            [self.output_ids[np.asarray(parents)], np.asarray(tokens, np.int32)[:, None]],
            axis=1)
        return self._predict()


class RerunDecoder:
    """A decoder over the caller's scores: subclass it and implement :meth:`predict`.

    ``predict(inputs, output_ids, states)`` receives the source inputs repeated
    once per row (``[rows, ...]`` arrays), the generated ids so far
    ``[rows, t]`` and ``states`` (None at first; return ``(scores, states)`` to
    carry something along), and returns the next-token scores ``[rows, vocab]``
    of the kind named by the class attribute ``rtype``: ``"probas"`` (default),
    ``"logits"`` or ``"log_probs"``. Nothing is cached, so this route suits
    custom scoring; :class:`Decoder` is the fast route for bert4x models. One
    source is decoded per call, as in bert4keras.

    Args:
        end_id: the token that ends a sequence, or None.
        max_length: default maximum number of generated tokens (end included).
        min_length: default minimum number of tokens before the end token.
        start_id: a token that ``output_ids`` starts with (bert4keras's
            ``start_id``), so the first ``predict`` sees ``[rows, 1]``; None
            starts from ``[rows, 0]``. It is not part of the returned ids.

    Example:
        >>> class Title(RerunDecoder):  # doctest: +SKIP
        ...     def predict(self, inputs, output_ids, states):
        ...         token_ids, segment_ids = inputs
        ...         token_ids = np.concatenate([token_ids, output_ids], 1)
        ...         segment_ids = np.concatenate([segment_ids, np.ones_like(output_ids)], 1)
        ...         return model.predict_on_batch([token_ids, segment_ids])[:, -1]
        >>> Title(end_id=3, max_length=32).beam_search([token_ids, segment_ids], 4)
    """

    rtype = "probas"

    def __init__(self, end_id=None, max_length=32, min_length=0, start_id=None):
        check_lengths(max_length, min_length)
        if start_id is not None and (not isinstance(start_id, (int, np.integer))
                                     or start_id < 0):
            raise ValueError(f"start_id must be a token id (int >= 0) or None, "
                             f"got {start_id!r}")
        self.start_id = start_id
        self.end_id = end_id
        self.max_length, self.min_length = int(max_length), int(min_length)

    def predict(self, inputs, output_ids, states):
        """Next-token scores ``[rows, vocab]``; subclasses implement it."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement predict(inputs, output_ids, states)")

    def _check_vocab(self, vocab_size):
        check_end_id(self.end_id, vocab_size)

    def _run(self, inputs, copies, max_length, min_length):
        max_length, min_length = (self.max_length if max_length is None else max_length,
                                  self.min_length if min_length is None else min_length)
        check_lengths(max_length, min_length)
        if not isinstance(inputs, (list, tuple)) or not inputs:
            raise ValueError("inputs must be a non-empty list of the source's arrays")
        scorer = _PredictScorer(self, inputs, copies)
        return scorer, max_length, min_length

    def greedy(self, inputs, max_length=None, min_length=None, constraint=None):
        """Greedy decoding of one source; returns a :class:`GenerationResult`.

        Example:
            >>> decoder.greedy([token_ids, segment_ids]).token_ids  # doctest: +SKIP
        """
        scorer, max_length, min_length = self._run(inputs, 1, max_length, min_length)
        return ancestral(scorer, 1, 1, max_length, min_length, self.end_id, constraint,
                          greedy_choice)[0][0]

    def beam_search(self, inputs, beam_size=4, length_penalty=1.0, num_return=1,
                    max_length=None, min_length=None, constraint=None, early_stopping=True):
        """Beam search over one source; returns up to ``num_return`` results.

        Example:
            >>> decoder.beam_search([token_ids, segment_ids], beam_size=4)  # doctest: +SKIP
        """
        check_beam(beam_size, num_return, length_penalty)
        scorer, max_length, min_length = self._run(inputs, beam_size, max_length,
                                                   min_length)
        return beam_search(scorer, 1, beam_size, max_length, min_length,
                            self.end_id, float(length_penalty), num_return, constraint,
                            early_stopping)[0]

    def random_sample(self, inputs, n=1, temperature=1.0, top_k=None, top_p=None,
                      seed=None, max_length=None, min_length=None, constraint=None):
        """``n`` samples of one source (temperature, top-k, then top-p).

        Example:
            >>> decoder.random_sample([token_ids, segment_ids], 3, top_k=5, seed=1)  # doctest: +SKIP
        """
        check_sampling(n, temperature, top_k, top_p)
        scorer, max_length, min_length = self._run(inputs, n, max_length, min_length)
        choose = sampling_choice(np.random.default_rng(seed), temperature, top_k, top_p)
        return ancestral(scorer, 1, n, max_length, min_length, self.end_id,
                          constraint, choose)[0]
