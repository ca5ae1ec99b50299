"""Fine-tuning regularisers from bert4keras's toolbox, as Keras 3 training steps.

Each function takes a compiled model and changes what one training step of *that
model* does (``fit``, ``train_on_batch``), in one line after ``compile``:

- `adversarial_training`: FGM on the embedding table (bert4keras's
  ``task_iflytek_adversarial_training.py``);
- `virtual_adversarial_training`: VAT on the embedding table, labels not needed
  (``task_sentiment_virtual_adversarial_training.py``);
- `gradient_penalty`: the squared gradient with respect to the token embeddings added
  to the loss (``task_iflytek_gradient_penalty.py``);
- `r_drop`: each batch runs twice with different dropout, plus the symmetric KL
  divergence of the two predictions;
- `flooding`: the loss ``|L - b| + b``, which ascends once the loss falls under ``b``.

How: the function sets ``model.train_step`` on that one instance (its class and Keras
are untouched) and drops a train function already built, so the next ``fit`` traces the
regularised step. The step calls the model's own loss, metrics and optimiser
(``optimizer.apply``), so the optimisers of `bert4x.optimizers` (layer-wise rates,
weight-decay rules, ``gradient_accumulation_steps``) and the
`~bert4x.moving_average.ExponentialMovingAverage` callback work unchanged.
``compile`` again (a new optimiser) and the model trains plainly again. Save and load the model as
usual: nothing of the regulariser is saved.

Backends: TensorFlow (also under ``jit_compile`` and a ``tf.distribute`` strategy) and
JAX (jitted or not). PyTorch raises `NotImplementedError`. The model's optimiser must
not be a `keras.optimizers.LossScaleOptimizer` (the added terms would not be scaled).

Under ``tf.distribute`` each replica runs the step on its shard: the table gradient
that sets FGM's and VAT's perturbation is summed over the replicas first, so every
replica perturbs the table as one device would for the whole batch, and the gradient
penalty sums over the whole batch's positions (a step on two replicas equals the step
on one device). R-Drop's KL term is averaged over the replicas' shards; flooding
applies to each replica's shard loss.
"""

import contextlib
import random

import keras
from keras import ops

__all__ = ["adversarial_training", "virtual_adversarial_training", "gradient_penalty",
           "r_drop", "flooding", "find_embedding_table"]

#: What bert4keras adds to a norm before dividing by it.
NORM_EPSILON = 1e-8


def find_embedding_table(model, embedding_name="Embedding-Token"):
    """The trainable table variable of ``model``'s layer ``embedding_name``.

    The layer may sit inside a nested model (bert4x's ``build_transformer_model``
    output used as a layer of a classifier).

    Raises:
        ValueError: no layer of that name, or it holds no trainable 2-D table.

    Example:
        >>> table = find_embedding_table(classifier, "Embedding-Token")  # doctest: +SKIP
    """
    def search(container):
        for layer in container.layers:
            if layer.name == embedding_name:
                return layer
            if isinstance(layer, keras.Model):
                found = search(layer)
                if found is not None:
                    return found
        return None

    layer = search(model)
    if layer is None:
        raise ValueError(f"model {model.name!r} has no layer named {embedding_name!r} "
                         "(bert4x names its token embedding 'Embedding-Token')")
    tables = [v for v in layer.trainable_variables if len(v.shape) == 2]
    if len(tables) != 1:
        raise ValueError(f"layer {embedding_name!r} should hold one trainable 2-D embedding "
                         f"table; it holds {[v.path for v in layer.trainable_variables]}")
    return tables[0]


def _table_index(model, table):
    for index, variable in enumerate(model.trainable_variables):
        if variable is table:
            return index
    raise ValueError(f"the embedding table {table.path} is not among the trainable "
                     f"variables of {model.name!r}")


def _l2_normalize(tensor, scale):
    """``scale * tensor / (||tensor|| + 1e-8)``, the norm over the whole tensor."""
    norm = ops.sqrt(ops.sum(ops.square(tensor)))
    return ops.cast(scale, tensor.dtype) * tensor / (norm + NORM_EPSILON)


def _kl_divergence(p, q):
    """Keras's ``kl_divergence``: both clipped to [epsilon, 1], summed over the last axis."""
    p = ops.clip(p, keras.config.epsilon(), 1.0)
    q = ops.clip(q, keras.config.epsilon(), 1.0)
    return ops.sum(p * ops.log(p / q), axis=-1)


def _check_model(model, what):
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        raise ValueError(f"{what}: compile {model.name!r} first (the regulariser uses its "
                         "loss and optimizer)")
    if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
        raise NotImplementedError(f"{what}: a LossScaleOptimizer is not supported (the "
                                  "terms the regulariser adds would not be scaled)")
    if type(model).train_step is not keras.Model.train_step:
        raise ValueError(
            f"{what}: {type(model).__name__} defines its own train_step (e.g. "
            "GradientAccumulationModel), which the regulariser would replace; apply it "
            "to a plain keras.Model (for accumulation use the optimizer's "
            "gradient_accumulation_steps)")
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        raise NotImplementedError(f"{what} runs on the TensorFlow and JAX backends, not "
                                  f"{backend!r}")


def _install(model, regulariser):
    """Make ``regulariser`` the training step of this ``model`` instance."""
    if keras.backend.backend() == "tensorflow":
        engine_class = _TensorFlowEngine
    else:
        engine_class = _JaxEngine
    model.train_step = engine_class.train_step_for(model, regulariser)
    model.train_function = None  # the next fit/train_on_batch traces the new step
    return model


def adversarial_training(model, embedding_name="Embedding-Token", epsilon=1.0,
                         add_clean_gradient=False):
    """FGM adversarial training on the embedding table, as bert4keras's example does it.

    Each step: ``g`` = gradient of the loss with respect to the whole embedding table,
    computed with ``training=False`` (no dropout: Keras 2.3, which bert4keras's script
    targets, evaluated it at the default learning phase 0); the table becomes
    ``W + epsilon * g / (||g|| + 1e-8)`` (the norm over the whole table); the loss and
    gradients of all weights are computed there with ``training=True``; the table is
    restored to ``W``; the optimiser applies those gradients. So the update uses the
    gradient at the perturbed table only. (bert4keras subtracts the perturbation after
    the update; with weight decay its decay acts on ``W + delta``, here on ``W``.)

    Args:
        model: a compiled model with an embedding layer.
        embedding_name: the embedding layer's name.
        epsilon: the perturbation's norm (bert4keras's script uses 0.5 and 1).
        add_clean_gradient: the other common FGM: compute the clean gradient with
            ``training=True`` and apply the sum of the clean and the adversarial
            gradients (the logged loss is the clean one).

    Returns:
        ``model``, whose training steps now train adversarially.

    Example:
        >>> model.compile(AdamW(2e-5), "sparse_categorical_crossentropy")  # doctest: +SKIP
        >>> adversarial_training(model, "Embedding-Token", epsilon=1.0)
        >>> model.fit(x, y)
    """
    _check_model(model, "adversarial_training")
    table = find_embedding_table(model, embedding_name)
    epsilon = float(epsilon)

    def step(engine, x, y, sample_weight):
        clean_loss, clean_pred, clean = engine.loss_and_gradients(
            x, y, sample_weight, training=add_clean_gradient,
            table_only=not add_clean_gradient)
        table_gradient = clean[engine.table_index] if add_clean_gradient else clean[0]
        delta = _l2_normalize(engine.batch_sum(engine.densify(table_gradient)), epsilon)
        loss, y_pred, gradients = engine.loss_and_gradients(
            x, y, sample_weight, training=True, table_offset=delta)
        if add_clean_gradient:
            gradients = [None if a is None else engine.densify(a) + engine.densify(b)
                         for a, b in zip(gradients, clean)]
            loss, y_pred = clean_loss, clean_pred
        engine.apply(gradients)
        return loss, y, y_pred

    return _install(model, _Regulariser(table, step))


def virtual_adversarial_training(model, embedding_name="Embedding-Token", epsilon=1.0,
                                 xi=10.0, iters=1, seed=None):
    """Virtual adversarial training (VAT) on the embedding table, after bert4keras's example.

    Labels are not used: feed unlabeled batches (``y`` is ignored and may be absent on
    TensorFlow; on JAX pass any array of the prediction's shape, e.g. zeros as
    bert4keras's script does, since Keras builds the loss from the first batch). Compile the model with a divergence as its loss
    (``loss="kld"``): the loss compares the model's clean prediction ``p`` (the target)
    with its prediction at the perturbed table. Each step:

    1. ``p = model(x, training=False)``, a constant;
    2. ``d`` ~ N(0, 1) of the table's shape, drawn from ``(seed, optimizer.iterations)``
       (``tf.random.stateless_normal`` / ``jax.random.normal``); ``iters`` times:
       ``d = xi * d / (||d|| + 1e-8)``, then ``d`` = the gradient of ``loss(p, model(x))``
       with respect to the table at ``W + d`` (``training=False``);
    3. the table becomes ``W + epsilon * d / (||d|| + 1e-8)``, the loss ``loss(p,
       model(x, training=True))`` is differentiated there, the table restored, the
       optimiser applies the gradients.

    Args:
        model: a compiled model (compile it with ``loss="kld"`` or another divergence).
        embedding_name: the embedding layer's name.
        epsilon: the perturbation's norm.
        xi: the norm of the probe in the power iteration.
        iters: power-iteration steps (at least 1).
        seed: integer seed of the random probes; None draws one now from Python's
            `random` (which `keras.utils.set_random_seed` seeds).

    Example:
        >>> vat_model = keras.Model(classifier.inputs, classifier.outputs)  # doctest: +SKIP
        >>> vat_model.compile(Adam(1e-5), loss="kld")
        >>> virtual_adversarial_training(vat_model, "Embedding-Token")
        >>> vat_model.train_on_batch(unlabeled_x)
    """
    _check_model(model, "virtual_adversarial_training")
    table = find_embedding_table(model, embedding_name)
    if int(iters) < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    iters, epsilon, xi = int(iters), float(epsilon), float(xi)
    seed = random.randrange(2**31) if seed is None else int(seed)

    def step(engine, x, y, sample_weight):
        target = ops.stop_gradient(engine.predict(x))
        probe = engine.normal(tuple(table.shape), seed)
        for _ in range(iters):
            probe = _l2_normalize(probe, xi)
            _, _, gradients = engine.loss_and_gradients(
                x, target, sample_weight, training=False, table_offset=probe,
                table_only=True)
            probe = engine.batch_sum(engine.densify(gradients[0]))
        delta = _l2_normalize(probe, epsilon)
        loss, y_pred, gradients = engine.loss_and_gradients(
            x, target, sample_weight, training=True, table_offset=delta)
        engine.apply(gradients)
        return loss, target, y_pred

    return _install(model, _Regulariser(table, step))


def gradient_penalty(model, embedding_name="Embedding-Token", epsilon=1.0):
    """Adds ``epsilon * sum_p ||dL/de_p||^2`` to the loss, ``e_p`` each position's token embedding.

    As bert4keras's ``task_iflytek_gradient_penalty.py`` (``loss + 0.5 * gp`` there,
    so ``epsilon=0.5`` reproduces it): the gradient is taken per *position* (the rows
    of TensorFlow's sparse table gradient, ``.values``), not per vocabulary row, so a
    token repeated in the batch counts once per occurrence. The penalty is
    differentiated too (a second-order gradient; Keras 3's cross-entropies allow it).

    TensorFlow backend only: JAX's gradient of a table lookup is the dense per-row
    sum, which loses the per-position rows (`NotImplementedError` there).

    Example:
        >>> model.compile(Adam(2e-5), "sparse_categorical_crossentropy")  # doctest: +SKIP
        >>> gradient_penalty(model, "Embedding-Token", epsilon=0.5)
    """
    _check_model(model, "gradient_penalty")
    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError(
            "gradient_penalty needs the TensorFlow backend: the per-position gradient of "
            "the token embeddings is TensorFlow's sparse table gradient; JAX gives only the "
            "per-row sum")
    table = find_embedding_table(model, embedding_name)
    epsilon = float(epsilon)

    def step(engine, x, y, sample_weight):
        loss, y_pred, gradients = engine.loss_and_gradients(
            x, y, sample_weight, training=True, position_gradient_penalty=epsilon)
        engine.apply(gradients)
        return loss, y, y_pred

    return _install(model, _Regulariser(table, step))


def r_drop(model, alpha=4.0):
    """R-Drop: each batch runs twice (different dropout), plus their symmetric KL divergence.

    The loss, as in Su Jianlin's bert4keras R-Drop scripts (which feed each example
    twice): the compiled loss over both copies of the batch plus
    ``alpha / 4 * mean(KL(p1 || p2) + KL(p2 || p1))``, where ``p1`` and ``p2`` are the
    two predictions of each example (probabilities: the model ends in a softmax), KL as
    Keras's ``kl_divergence`` (both clipped to [epsilon, 1]) and the mean over examples
    (and positions, for sequence outputs). The batch is concatenated with itself, so one
    forward pass of twice the batch runs; the metrics see both copies.

    Args:
        model: a compiled model with dropout and one probability output.
        alpha: the weight of the KL term (4 in bert4keras's scripts).

    Example:
        >>> model.compile(Adam(2e-5), "sparse_categorical_crossentropy")  # doctest: +SKIP
        >>> r_drop(model, alpha=4.0)
    """
    _check_model(model, "r_drop")
    alpha = float(alpha)

    def twice(tree):
        return keras.tree.map_structure(
            lambda t: None if t is None else ops.concatenate([t, t], axis=0), tree)

    def step(engine, x, y, sample_weight):
        x2, y2, weight2 = twice(x), twice(y), twice(sample_weight)

        def with_kl(loss, y_pred):
            if not hasattr(y_pred, "shape"):
                raise ValueError("r_drop needs a model with one output tensor of "
                                 f"probabilities, got {type(y_pred).__name__}")
            first, second = ops.split(y_pred, 2, axis=0)
            kl = _kl_divergence(first, second) + _kl_divergence(second, first)
            return loss + ops.cast(alpha / 4.0, loss.dtype) * ops.mean(kl) / engine.replicas()

        loss, y_pred, gradients = engine.loss_and_gradients(
            x2, y2, weight2, training=True, transform=with_kl)
        engine.apply(gradients)
        return loss, y2, y_pred

    return _install(model, _Regulariser(None, step, batch_for_metrics=twice))


def flooding(model, level):
    """Flooding: trains on ``|L - level| + level``, so the loss ascends once under ``level``.

    ``L`` is the batch's loss (under ``tf.distribute``, each replica's own shard).

    Example:
        >>> model.compile(Adam(2e-5), "sparse_categorical_crossentropy")  # doctest: +SKIP
        >>> flooding(model, level=0.2)
    """
    _check_model(model, "flooding")
    level = float(level)
    if level < 0:
        raise ValueError(f"flooding level must be >= 0, got {level}")

    def step(engine, x, y, sample_weight):
        def flooded(loss, y_pred):
            replicas = engine.replicas()
            floor = ops.cast(level, loss.dtype)
            return (ops.abs(loss * replicas - floor) + floor) / replicas

        loss, y_pred, gradients = engine.loss_and_gradients(
            x, y, sample_weight, training=True, transform=flooded)
        engine.apply(gradients)
        return loss, y, y_pred

    return _install(model, _Regulariser(None, step))


class _Regulariser:
    """A step ``step(engine, x, y, sample_weight) -> (loss, y, y_pred)`` and what it needs.

    ``batch_for_metrics`` maps the step's ``x`` (and sample weights) to the batch its
    ``y_pred`` belongs to (R-Drop's doubled batch), for the metrics.
    """

    def __init__(self, table, step, batch_for_metrics=None):
        self.table = table
        self.step = step
        self.batch_for_metrics = batch_for_metrics or (lambda tree: tree)


def _batch_size(x):
    return ops.shape(next(t for t in keras.tree.flatten(x) if t is not None))[0]


class _TensorFlowEngine:
    """Runs a regulariser's step on the model's variables (TensorFlow: gradient tapes)."""

    def __init__(self, model, table):
        self.model = model
        self.table = table
        self.table_index = None if table is None else _table_index(model, table)

    @classmethod
    def train_step_for(cls, model, regulariser):
        optimizer = model.optimizer

        def train_step(data):
            if model.optimizer is not optimizer:  # compiled again: the plain step
                return type(model).train_step(model, data)
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            engine = cls(model, regulariser.table)
            loss, y_metrics, y_pred = regulariser.step(engine, x, y, sample_weight)
            x_metrics = regulariser.batch_for_metrics(x)
            _loss_tracker(model).update_state(
                loss * engine.replicas(), sample_weight=_batch_size(x_metrics))
            weight = regulariser.batch_for_metrics(sample_weight)
            return model.compute_metrics(x_metrics, y_metrics, y_pred, sample_weight=weight)

        return train_step

    @staticmethod
    def replicas():
        import tensorflow as tf

        return tf.distribute.get_strategy().num_replicas_in_sync

    @staticmethod
    def batch_sum(tensor):
        """The sum over the replicas of a gradient of this replica's loss share.

        Under ``tf.distribute`` each replica's loss is its share of the global batch's
        mean, so the sum is the whole batch's gradient, and every replica perturbs the
        table alike (as one device would).
        """
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return tensor
        return context.all_reduce(tf.distribute.ReduceOp.SUM, tensor)

    @staticmethod
    def densify(gradient):
        from bert4x.accumulation import densify

        return densify(gradient)

    def _forward(self, x, y, sample_weight, training):
        y_pred = self.model(x, training=training)
        loss = self.model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                       training=training)
        return loss, y_pred

    def predict(self, x):
        return self.model(x, training=False)

    def loss_and_gradients(self, x, y, sample_weight, training, table_offset=None,
                           table_only=False, transform=None, position_gradient_penalty=None):
        """Loss, prediction and gradients (of all trainable variables, or of the table).

        With ``table_offset`` the forward pass reads the table as ``W + offset``
        (through a `keras.StatelessScope`, so ``W`` itself is never written: nothing to
        restore, and no write to a mirrored variable inside a replica).
        ``transform(loss, y_pred)`` returns the loss to differentiate. With
        ``position_gradient_penalty=eps`` that loss gets ``eps * sum(rows ** 2)``, the
        rows of its own sparse gradient with respect to the table (second order).
        """
        import tensorflow as tf

        variables = self.model.trainable_variables
        scope = None
        with tf.GradientTape() as tape:
            penalised = position_gradient_penalty is not None
            with tf.GradientTape() if penalised else contextlib.nullcontext() as inner:
                if table_offset is None:
                    loss, y_pred = self._forward(x, y, sample_weight, training)
                    targets = [self.table] if table_only else variables
                else:
                    perturbed = self.table.value + table_offset
                    tape.watch(perturbed)
                    with keras.StatelessScope(
                            state_mapping=[(self.table, perturbed)]) as scope:
                        loss, y_pred = self._forward(x, y, sample_weight, training)
                    if table_only:
                        targets = [perturbed]
                    else:
                        targets = list(variables)
                        targets[self.table_index] = perturbed
            if penalised:
                rows = self._position_gradients(inner, loss)
                # Under tf.distribute the loss is this replica's share of the global
                # mean, so rows are the global loss's gradients and the penalty of this
                # replica's positions adds up over the replicas unscaled.
                loss = loss + ops.cast(position_gradient_penalty, loss.dtype) * ops.sum(
                    ops.square(rows))
            if transform is not None:
                loss = transform(loss, y_pred)
        if scope is not None:
            self._keep_state_updates(scope)
        return loss, y_pred, tape.gradient(loss, targets)

    def _position_gradients(self, tape, loss):
        """Rows of the sparse gradient of the loss wrt the table: one per looked-up token."""
        import tensorflow as tf

        gradient = tape.gradient(loss, self.table)
        if not isinstance(gradient, tf.IndexedSlices):
            raise ValueError(f"the gradient of the loss with respect to {self.table.path} is "
                             f"{type(gradient).__name__}; gradient_penalty needs a table the "
                             "model reads by lookups")
        return gradient.values

    def _keep_state_updates(self, scope):
        """Writes back what the forward pass assigned in the scope (dropout seeds...)."""
        for variable in self.model.non_trainable_variables:
            value = scope.get_current_value(variable)
            if value is not None:
                variable.assign(value)

    def normal(self, shape, seed):
        import tensorflow as tf

        iteration = tf.cast(self.model.optimizer.iterations, "int64")
        return tf.random.stateless_normal(
            shape, seed=tf.stack([tf.constant(seed, "int64"), iteration]),
            dtype=self.table.dtype)

    def apply(self, gradients):
        self.model.optimizer.apply(gradients, self.model.trainable_variables)


def _loss_tracker(model):
    """The compiled model's ``"loss"`` metric (the first of ``model.metrics``)."""
    for metric in model.metrics:
        if metric.name == "loss":
            return metric
    raise ValueError(f"{model.name!r} has no 'loss' metric; compile it first")


class _JaxEngine:
    """Runs a regulariser's step on the state tuple of Keras's JAX trainer."""

    def __init__(self, model, table, state):
        self.model = model
        self.table = table
        self.table_index = None if table is None else _table_index(model, table)
        (self.trainable, self.non_trainable, self.optimizer_state,
         self.metrics_state) = state

    @classmethod
    def train_step_for(cls, model, regulariser):
        optimizer = model.optimizer

        def train_step(state, data):
            if model.optimizer is not optimizer:  # compiled again: the plain step
                return type(model).train_step(model, state, data)
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            engine = cls(model, regulariser.table, state)
            loss, y_metrics, y_pred = regulariser.step(engine, x, y, sample_weight)
            x_metrics = regulariser.batch_for_metrics(x)
            weight = regulariser.batch_for_metrics(sample_weight)
            mapping = list(zip(model.metrics_variables, engine.metrics_state))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                _loss_tracker(model).update_state(loss, sample_weight=_batch_size(x_metrics))
                logs = model.compute_metrics(x_metrics, y_metrics, y_pred,
                                             sample_weight=weight)
            metrics_state = []
            for variable in model.metrics_variables:
                value = scope.get_current_value(variable)
                metrics_state.append(variable.value if value is None else value)
            return logs, (engine.trainable, engine.non_trainable, engine.optimizer_state,
                          metrics_state)

        return train_step

    @staticmethod
    def replicas():
        return 1

    @staticmethod
    def batch_sum(tensor):
        return tensor

    @staticmethod
    def densify(gradient):
        return gradient

    def predict(self, x):
        y_pred, _ = self.model.stateless_call(self.trainable, self.non_trainable, x,
                                              training=False)
        return y_pred

    def loss_and_gradients(self, x, y, sample_weight, training, table_offset=None,
                           table_only=False, transform=None, position_gradient_penalty=None):
        import jax

        if position_gradient_penalty is not None:
            raise NotImplementedError("gradient_penalty needs the TensorFlow backend")

        def loss_of(trainable):
            loss, (_, y_pred, non_trainable, metrics_state) = \
                self.model.compute_loss_and_updates(
                    trainable, self.non_trainable, self.metrics_state, x, y, sample_weight,
                    training=training, optimizer_variables=self.optimizer_state)
            if transform is not None:
                loss = transform(loss, y_pred)
            return loss, (y_pred, non_trainable, metrics_state)

        trainable = list(self.trainable)
        if table_offset is not None:
            trainable[self.table_index] = trainable[self.table_index] + table_offset
        if table_only:
            def table_loss(table):
                values = list(trainable)
                values[self.table_index] = table
                return loss_of(values)

            (loss, aux), gradient = jax.value_and_grad(table_loss, has_aux=True)(
                trainable[self.table_index])
            gradients = [gradient]
        else:
            (loss, aux), gradients = jax.value_and_grad(loss_of, has_aux=True)(trainable)
        y_pred, self.non_trainable, self.metrics_state = aux
        return loss, y_pred, gradients

    def normal(self, shape, seed):
        import jax

        iterations = self.model.optimizer.iterations
        index = next(i for i, v in enumerate(self.model.optimizer.variables)
                     if v is iterations)
        key = jax.random.fold_in(jax.random.PRNGKey(seed), self.optimizer_state[index])
        return jax.random.normal(key, shape, dtype=self.table.dtype)

    def apply(self, gradients):
        self.trainable, self.optimizer_state = self.model.optimizer.stateless_apply(
            self.optimizer_state, gradients, self.trainable)
