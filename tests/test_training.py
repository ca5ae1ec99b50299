"""One training step of each regulariser of ``bert4x.training`` against the step written out.

The hand-written steps use plain `tf.GradientTape`, `tf.gather` and explicit formulas on
a tiny classifier (vocabulary 20, width 8); SGD makes the expected update ``w - lr * g``.
The JAX backend's checks run in one subprocess (``_training_worker.py``).
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from bert4x import training
from bert4x.moving_average import ExponentialMovingAverage
from bert4x.optimizers import AdamW, GradientAccumulationModel

from _tiny_classifier import CLASSES, LR, X, Y, compiled, tiny_classifier

HERE = os.path.dirname(os.path.abspath(__file__))


def head(weights, embedded):
    _, kernel, bias = weights
    return tf.nn.softmax(tf.reduce_mean(embedded, axis=1) @ kernel + bias)


def sparse_ce(y, probs):
    probs = tf.clip_by_value(probs, keras.config.epsilon(), 1 - keras.config.epsilon())
    return -tf.reduce_mean(tf.math.log(tf.gather(probs, y, batch_dims=1)))


def kl(p, q):
    p = tf.clip_by_value(p, keras.config.epsilon(), 1.0)
    q = tf.clip_by_value(q, keras.config.epsilon(), 1.0)
    return tf.reduce_sum(p * tf.math.log(p / q), axis=-1)


def start_weights():
    return [tf.constant(w) for w in tiny_classifier().get_weights()]


def loss_and_grads(weights, loss_of):
    weights = [tf.Variable(w) for w in weights]
    with tf.GradientTape() as tape:
        loss = loss_of(weights)
    return loss, [tf.convert_to_tensor(g) for g in tape.gradient(loss, weights)]


def normalized(g, scale):
    return scale * g / (tf.sqrt(tf.reduce_sum(g ** 2)) + 1e-8)


def sgd(weights, grads):
    return [(w - LR * g).numpy() for w, g in zip(weights, grads)]


def assert_weights(model, expected):
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def ce_of(w, x=X, y=Y):
    return sparse_ce(y, head(w, tf.gather(w[0], x)))


@pytest.mark.parametrize("epsilon", [0.5, 1.0])
def test_adversarial_training_steps_with_the_gradient_at_the_perturbed_table(epsilon):
    model = compiled()
    training.adversarial_training(model, "Embedding-Token", epsilon=epsilon)
    logs = model.train_on_batch(X, Y, return_dict=True)

    w = start_weights()
    _, clean = loss_and_grads(w, ce_of)
    delta = normalized(clean[0], epsilon)
    loss, grads = loss_and_grads([w[0] + delta] + w[1:], ce_of)
    assert_weights(model, sgd(w, grads))  # the table is restored before the update
    assert logs["loss"] == pytest.approx(float(loss), abs=1e-6)


def test_adversarial_training_with_clean_gradient_adds_both():
    model = compiled()
    training.adversarial_training(model, epsilon=1.0, add_clean_gradient=True)
    model.train_on_batch(X, Y)

    w = start_weights()
    _, clean = loss_and_grads(w, ce_of)
    _, adversarial = loss_and_grads([w[0] + normalized(clean[0], 1.0)] + w[1:], ce_of)
    assert_weights(model, sgd(w, [a + b for a, b in zip(clean, adversarial)]))


def test_adversarial_training_under_jit_compile_and_after_several_steps():
    model = compiled(jit=True)
    training.adversarial_training(model, epsilon=1.0)
    for _ in range(2):
        model.train_on_batch(X, Y)
    w = start_weights()
    for _ in range(2):
        _, clean = loss_and_grads(w, ce_of)
        _, grads = loss_and_grads([w[0] + normalized(clean[0], 1.0)] + w[1:], ce_of)
        w = [tf.constant(v) for v in sgd(w, grads)]
    assert_weights(model, [v.numpy() for v in w])


@pytest.mark.parametrize("iters", [1, 2])
def test_virtual_adversarial_training_power_iteration_with_a_fixed_seed(iters):
    model = compiled(loss="kld")
    training.virtual_adversarial_training(model, epsilon=1.0, xi=10.0, iters=iters, seed=11)
    model.train_on_batch(X)  # unlabeled

    w = start_weights()
    target = head(w, tf.gather(w[0], X))

    def kld_at(table):
        return lambda v: tf.reduce_mean(kl(target, head([table] + v[1:], tf.gather(table, X))))

    def kld_of(v):
        return tf.reduce_mean(kl(target, head(v, tf.gather(v[0], X))))

    d = tf.random.stateless_normal(w[0].shape, seed=tf.constant([11, 0], "int64"))
    for _ in range(iters):
        d = normalized(d, 10.0)
        _, grads = loss_and_grads([w[0] + d] + w[1:], kld_of)
        d = grads[0]
    _, grads = loss_and_grads([w[0] + normalized(d, 1.0)] + w[1:], kld_of)
    assert_weights(model, sgd(w, grads))


@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy",
                                  "categorical_crossentropy"])
def test_gradient_penalty_adds_the_squared_gradient_of_each_position(loss):
    model = compiled(loss=loss)
    training.gradient_penalty(model, epsilon=0.5)
    model.train_on_batch(X, Y if loss.startswith("sparse") else np.eye(CLASSES)[Y])

    def penalised(v):
        with tf.GradientTape() as inner:
            embedded = tf.gather(v[0], X)
            inner.watch(embedded)
            loss = ce_of_embedded(v, embedded)
        per_position = inner.gradient(loss, embedded)  # [batch, length, width]
        return loss + 0.5 * tf.reduce_sum(per_position ** 2)

    def ce_of_embedded(v, embedded):
        return sparse_ce(Y, head(v, embedded))

    w = start_weights()
    _, grads = loss_and_grads(w, penalised)
    assert_weights(model, sgd(w, grads))


def test_r_drop_two_dropout_passes_and_symmetric_kl():
    model = compiled(dropout=0.3)
    training.r_drop(model, alpha=4.0)
    model.train_on_batch(X, Y)

    # The same model, built alike, draws the same dropout masks for the doubled batch.
    reference = tiny_classifier(dropout=0.3)
    x2, y2 = np.concatenate([X, X]), np.concatenate([Y, Y])

    def loss_of(v):
        for variable, value in zip(reference.trainable_variables, v):
            variable.assign(value)
        probs = reference(x2, training=True)
        first, second = probs[: len(X)], probs[len(X):]
        return sparse_ce(y2, probs) + 4.0 / 4 * tf.reduce_mean(kl(first, second)
                                                               + kl(second, first))

    w = start_weights()
    vs = reference.trainable_variables
    with tf.GradientTape() as tape:
        loss = loss_of(w)
    grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, vs)]
    assert_weights(model, sgd(w, grads))
    # The masks differ between the two copies, else the test would not test R-Drop.
    assert float(tf.reduce_mean(kl(*tf.split(reference(x2, training=True), 2)))) > 1e-4


@pytest.mark.parametrize("level", [0.0, 5.0])
def test_flooding_ascends_under_the_level(level):
    model = compiled()
    training.flooding(model, level=level)
    logs = model.train_on_batch(X, Y, return_dict=True)

    w = start_weights()
    loss, grads = loss_and_grads(w, ce_of)
    sign = 1.0 if float(loss) > level else -1.0
    assert_weights(model, sgd(w, [sign * g for g in grads]))
    assert logs["loss"] == pytest.approx(abs(float(loss) - level) + level, abs=1e-6)


def test_adversarial_training_composes_with_bert4x_adamw_rules():
    def optimizer():
        return AdamW(0.1, weight_decay=0.1, lr_multipliers={"Head": 0.5})

    model = compiled(optimizer=optimizer())
    training.adversarial_training(model, epsilon=1.0)
    model.train_on_batch(X, Y)

    w = start_weights()
    _, clean = loss_and_grads(w, ce_of)
    _, grads = loss_and_grads([w[0] + normalized(clean[0], 1.0)] + w[1:], ce_of)
    reference = tiny_classifier()
    reference_optimizer = optimizer()
    reference_optimizer.apply(grads, reference.trainable_variables)
    assert_weights(model, reference.get_weights())


def test_adversarial_training_composes_with_optimizer_accumulation():
    # Two accumulated micro-steps on the same batch make one update of the mean gradient.
    model = compiled(optimizer=keras.optimizers.SGD(LR, gradient_accumulation_steps=2))
    training.adversarial_training(model, epsilon=1.0)
    model.train_on_batch(X, Y)
    assert_weights(model, start_weights())
    model.train_on_batch(X, Y)
    w = start_weights()
    _, clean = loss_and_grads(w, ce_of)
    _, grads = loss_and_grads([w[0] + normalized(clean[0], 1.0)] + w[1:], ce_of)
    assert_weights(model, sgd(w, grads))


def test_fit_with_moving_average_and_compile_again_restores_the_plain_step():
    model = compiled()
    training.adversarial_training(model, epsilon=1.0)
    ema = ExponentialMovingAverage(0.5)
    history = model.fit(X, Y, epochs=2, batch_size=2, verbose=0, callbacks=[ema]).history
    assert np.isfinite(history["loss"]).all()
    trained = model.get_weights()
    with ema.averaged_weights():
        averaged = model.get_weights()
    assert not np.allclose(averaged[0], trained[0])
    model.set_weights(tiny_classifier().get_weights())
    model.compile(keras.optimizers.SGD(LR), "sparse_categorical_crossentropy")
    model.train_on_batch(X, Y)
    w = start_weights()
    assert_weights(model, sgd(w, loss_and_grads(w, ce_of)[1]))


def test_bert4keras_names_run_the_same_steps():
    from bert4x.bert4keras.backend import adversarial_training, virtual_adversarial_training

    native, compat = compiled(), compiled()
    training.adversarial_training(native, "Embedding-Token", epsilon=0.5)
    adversarial_training(compat, "Embedding-Token", 0.5)
    for model in (native, compat):
        model.train_on_batch(X, Y)
    assert_weights(compat, native.get_weights())
    vat = compiled(loss="kld")
    virtual_adversarial_training(vat, "Embedding-Token")
    zeros = np.zeros((len(X), CLASSES), "float32")  # the script's unlabeled targets
    assert np.isfinite(vat.train_on_batch(X, zeros))


def test_embedding_table_is_found_inside_a_nested_model():
    inner = tiny_classifier()
    token_ids = keras.Input((None,), dtype="int32")
    outer = keras.Model(token_ids, inner(token_ids))
    assert training.find_embedding_table(outer) is inner.get_layer("Embedding-Token").embeddings


def test_refuses_models_with_their_own_step_and_torch(monkeypatch):
    wrapper = GradientAccumulationModel(tiny_classifier(), accumulation_steps=2)
    wrapper.compile(keras.optimizers.SGD(LR), "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="defines its own train_step"):
        training.r_drop(wrapper)
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(NotImplementedError, match="not 'torch'"):
        training.flooding(compiled(), level=0.1)


def test_clear_errors():
    with pytest.raises(ValueError, match="compile"):
        training.adversarial_training(tiny_classifier())
    with pytest.raises(ValueError, match="no layer named 'Token'"):
        training.adversarial_training(compiled(), "Token")
    with pytest.raises(ValueError, match="iters"):
        training.virtual_adversarial_training(compiled(), iters=0)
    with pytest.raises(ValueError, match="level"):
        training.flooding(compiled(), level=-1)


@pytest.mark.slow  # 30-60 s: a TensorFlow process with two logical CPUs; `pytest -m slow`
def test_steps_under_mirrored_strategy_equal_one_device():
    script = os.path.join(HERE, "training_mirrored_script.py")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run([sys.executable, script], capture_output=True, text=True,
                               timeout=300, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert set(result["max_diff"]) == {"fgm", "vat", "gradient_penalty", "flooding"}
    for name, difference in result["max_diff"].items():
        assert difference < 1e-6, (name, difference)
    for name, difference in result["loss_diff"].items():
        assert difference < 1e-5, (name, difference)


@pytest.mark.slow  # 30-60 s: a JAX process; run with `pytest -m slow`
def test_same_steps_on_jax_backend():
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run([sys.executable, os.path.join(HERE, "_training_worker.py")],
                               capture_output=True, text=True, timeout=300, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax"
    for name, difference in result["max_diff"].items():
        assert difference < 1e-6, (name, difference)
    assert set(result["max_diff"]) == {"fgm", "fgm_jit", "vat", "r_drop", "flooding"}
    assert "TensorFlow" in result["gradient_penalty_error"]
