"""Losses for generators built with ``application='unilm'`` or ``'lm'``.

Position ``i`` of a generator predicts token ``i + 1``, so the loss compares the
output at ``i`` with the token at ``i + 1`` and counts only the positions whose
*next* token is a target: segment 1 for UniLM (the source is given, not
predicted), every non-padding token after the first for a left-to-right LM.
Padding (token id 0, or the model's ``config.pad_token_id``: 1 for fairseq
RoBERTa) never counts.
"""

import keras
from keras import ops

APPLICATIONS = ("unilm", "lm")


def _check_application(application):
    if application not in APPLICATIONS:
        raise ValueError(f"unknown application {application!r}; the generation loss "
                         f"supports {APPLICATIONS}")


def generation_loss_weights(token_ids, segment_ids, application="unilm", pad_id=0):
    """Which output positions the generation loss counts, shifted by one.

    Args:
        token_ids: ``[batch, length]`` ids, 0 for padding.
        segment_ids: ``[batch, length]`` segment ids (1 marks UniLM targets;
            ignored for ``"lm"``).
        application: ``"unilm"`` or ``"lm"``.
        pad_id: the padding id (``builder.config.pad_token_id``).

    Returns:
        A float32 ``[batch, length - 1]`` tensor: entry ``i`` is 1 when the output
        at position ``i`` must predict the token at ``i + 1``.

    Example:
        >>> generation_loss_weights([[2, 5, 3, 7, 3, 0]], [[0, 0, 0, 1, 1, 1]])
        ... # -> [[0, 0, 1, 1, 0]]: the outputs at the last source token and at 7
    """
    _check_application(application)
    next_tokens = ops.convert_to_tensor(token_ids)[:, 1:]
    weights = ops.not_equal(next_tokens, pad_id)
    if application == "unilm":
        next_segments = ops.convert_to_tensor(segment_ids)[:, 1:]
        weights = ops.logical_and(weights, ops.equal(next_segments, 1))
    return ops.cast(weights, "float32")


def generation_loss(token_ids, segment_ids, outputs, application="unilm",
                    from_logits=False, pad_id=0):
    """Mean cross-entropy of a generator over its target tokens.

    Args:
        token_ids: ``[batch, length]`` input ids (0 for padding).
        segment_ids: ``[batch, length]`` segment ids.
        outputs: ``[batch, length, vocab]`` model outputs: probabilities (the
            default MLM head) or logits (``with_mlm='linear'``).
        application: ``"unilm"`` (loss on segment 1) or ``"lm"`` (all tokens).
        from_logits: whether ``outputs`` are logits.
        pad_id: the padding id (``builder.config.pad_token_id``).

    Returns:
        A scalar: the summed cross-entropy of the counted positions divided by
        their number (each target token weighs the same, whatever its row).

    Example:
        >>> probs = model([token_ids, segment_ids])  # doctest: +SKIP
        >>> loss = generation_loss(token_ids, segment_ids, probs)
    """
    weights = generation_loss_weights(token_ids, segment_ids, application, pad_id)
    per_token = _token_cross_entropy(token_ids, outputs, from_logits)
    return ops.sum(per_token * weights) / ops.maximum(ops.sum(weights), 1.0)


def _token_cross_entropy(token_ids, outputs, from_logits):
    targets = ops.cast(ops.convert_to_tensor(token_ids)[:, 1:], "int32")
    predictions = ops.cast(ops.convert_to_tensor(outputs)[:, :-1], "float32")
    return keras.losses.sparse_categorical_crossentropy(
        targets, predictions, from_logits=from_logits)


def generation_targets(token_ids, segment_ids):
    """Pack token and segment ids as the ``y`` of :class:`GenerationLoss`.

    Args:
        token_ids: ``[batch, length]`` ids.
        segment_ids: ``[batch, length]`` segment ids.

    Returns:
        ``[batch, length, 2]`` int32 NumPy-compatible tensor.

    Example:
        >>> model.fit([token_ids, segment_ids],  # doctest: +SKIP
        ...           generation_targets(token_ids, segment_ids))
    """
    return ops.stack([ops.cast(token_ids, "int32"), ops.cast(segment_ids, "int32")], axis=-1)


@keras.saving.register_keras_serializable(package="bert4x")
class GenerationLoss(keras.losses.Loss):
    """Keras loss for ``model.compile``: the generation cross-entropy.

    ``y_true`` is :func:`generation_targets` of the model's token and segment
    ids; ``y_pred`` the model's ``[batch, length, vocab]`` output. The value is
    the mean over target tokens, exactly :func:`generation_loss`.

    Args:
        application: ``"unilm"`` or ``"lm"``.
        from_logits: whether the model outputs logits (``with_mlm='linear'``).
        pad_id: the padding id (``builder.config.pad_token_id``).

    Example:
        >>> model = build_transformer_model(config_path, checkpoint_path,  # doctest: +SKIP
        ...                                 application="unilm")
        >>> model.compile(optimizer="adam", loss=GenerationLoss("unilm"))
        >>> model.fit([token_ids, segment_ids], generation_targets(token_ids, segment_ids))
    """

    def __init__(self, application="unilm", from_logits=False, pad_id=0,
                 name="generation_loss", **kwargs):
        _check_application(application)
        super().__init__(name=name, **kwargs)
        self.application = application
        self.from_logits = bool(from_logits)
        self.pad_id = int(pad_id)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        token_ids, segment_ids = y_true[..., 0], y_true[..., 1]
        weights = generation_loss_weights(token_ids, segment_ids, self.application,
                                          self.pad_id)
        per_token = _token_cross_entropy(token_ids, y_pred, self.from_logits)
        # Keras averages what ``call`` returns over all its entries; scaling by
        # the mean weight turns that average into the mean over target tokens.
        mean_weight = ops.maximum(ops.mean(weights), 1e-12)
        return per_token * weights / mean_weight

    def get_config(self):
        config = super().get_config()
        config.update(application=self.application, from_logits=self.from_logits,
                      pad_id=self.pad_id)
        return config
