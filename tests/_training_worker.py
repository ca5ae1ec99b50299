"""The regulariser steps of ``test_training.py`` on the JAX backend, against jax.grad by hand.

Run by ``test_training.py`` with ``KERAS_BACKEND=jax``; prints one JSON line with the
largest absolute difference between each regularised step and the step written out
with ``jax.grad`` on ``model.stateless_call``.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from bert4x import training  # noqa: E402
from _tiny_classifier import CLASSES, LR, X, Y, compiled, tiny_classifier  # noqa: E402

EPS = keras.config.epsilon()


def head(w, embedded):
    table, kernel, bias = w
    return jax.nn.softmax(jnp.mean(embedded, axis=1) @ kernel + bias)


def ce(y, probs):
    probs = jnp.clip(probs, EPS, 1 - EPS)
    return -jnp.mean(jnp.log(jnp.take_along_axis(probs, y[:, None], axis=1)))


def kl(p, q):
    p, q = jnp.clip(p, EPS, 1.0), jnp.clip(q, EPS, 1.0)
    return jnp.sum(p * jnp.log(p / q), axis=-1)


def ce_of(w):
    return ce(Y, head(w, w[0][X]))


def normalized(g, scale):
    return scale * g / (jnp.sqrt(jnp.sum(g ** 2)) + 1e-8)


def start():
    return [jnp.asarray(w) for w in tiny_classifier().get_weights()]


def difference(model, expected):
    return max(float(np.max(np.abs(got - np.asarray(want))))
               for got, want in zip(model.get_weights(), expected))


def fgm(jit):
    model = compiled(jit=jit)
    training.adversarial_training(model, epsilon=1.0)
    model.train_on_batch(X, Y)
    w = start()
    delta = normalized(jax.grad(ce_of)(w)[0], 1.0)
    grads = jax.grad(ce_of)([w[0] + delta] + w[1:])
    return difference(model, [v - LR * g for v, g in zip(w, grads)])


def vat():
    model = compiled(loss="kld")
    training.virtual_adversarial_training(model, epsilon=1.0, xi=10.0, iters=1, seed=11)
    model.train_on_batch(X, np.zeros((len(X), CLASSES), "float32"))  # any y: unused
    w = start()
    target = head(w, w[0][X])

    def kld_of(v):
        return jnp.mean(kl(target, head(v, v[0][X])))

    key = jax.random.fold_in(jax.random.PRNGKey(11), 0)
    d = normalized(jax.random.normal(key, w[0].shape), 10.0)
    d = jax.grad(kld_of)([w[0] + d] + w[1:])[0]
    grads = jax.grad(kld_of)([w[0] + normalized(d, 1.0)] + w[1:])
    return difference(model, [v - LR * g for v, g in zip(w, grads)])


def r_drop():
    model = compiled(dropout=0.3)
    training.r_drop(model, alpha=4.0)
    model.train_on_batch(X, Y)
    reference = tiny_classifier(dropout=0.3)
    x2, y2 = np.concatenate([X, X]), np.concatenate([Y, Y])
    non_trainable = [v.value for v in reference.non_trainable_variables]

    def loss_of(v):
        probs, _ = reference.stateless_call(v, non_trainable, x2, training=True)
        first, second = probs[: len(X)], probs[len(X):]
        return ce(y2, probs) + jnp.mean(kl(first, second) + kl(second, first))

    w = start()
    grads = jax.grad(loss_of)(w)
    return difference(model, [v - LR * g for v, g in zip(w, grads)])


def flooding():
    model = compiled()
    training.flooding(model, level=5.0)
    model.train_on_batch(X, Y)
    w = start()
    grads = jax.grad(lambda v: jnp.abs(ce_of(v) - 5.0) + 5.0)(w)
    return difference(model, [v - LR * g for v, g in zip(w, grads)])


def main():
    result = {"backend": keras.backend.backend(), "max_diff": {
        "fgm": fgm(jit=False), "fgm_jit": fgm(jit=True), "vat": vat(), "r_drop": r_drop(),
        "flooding": flooding()}}
    try:
        training.gradient_penalty(compiled(), epsilon=0.5)
        result["gradient_penalty_error"] = None
    except NotImplementedError as error:
        result["gradient_penalty_error"] = str(error)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
