"""bert4x.optimizers against explicit NumPy computations of each update rule."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from bert4x.optimizers import (
    AdamW,
    ClipByNorm,
    ExponentialMovingAverage,
    GradientAccumulationModel,
    GradientAccumulator,
    Lamb,
    PiecewiseLinear,
    WarmupLinearDecay,
    layerwise_lr_multipliers,
)

BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-6


def bert_like_model(num_layers=2, hidden=4, seed=0):
    """A tiny model whose layers carry bert4x's names."""
    keras.utils.set_random_seed(seed)
    token_ids = keras.Input((3,), dtype="int32")
    x = keras.layers.Embedding(7, hidden, name="Embedding-Token")(token_ids)
    x = keras.layers.LayerNormalization(name="Embedding-Norm")(x)
    for i in range(num_layers):
        x = keras.layers.Dense(hidden, name=f"Transformer-{i}-FeedForward")(x)
        x = keras.layers.LayerNormalization(name=f"Transformer-{i}-FeedForward-Norm")(x)
    pooled = keras.layers.Dense(hidden, activation="tanh", name="Pooler-Dense")(x[:, 0])
    logits = keras.layers.Dense(2, name="Classifier")(pooled)
    model = keras.Model(token_ids, logits)
    # Non-zero biases and betas so that decaying them would be visible.
    for variable in model.trainable_variables:
        if variable.path.endswith(("bias", "beta")):
            variable.assign(np.full(variable.shape, 0.3, "float32"))
    return model


@pytest.fixture(scope="module")
def gradients_for():
    rng = np.random.default_rng(1)

    def make(model, steps):
        return [
            [rng.normal(size=v.shape).astype("float32") for v in model.trainable_variables]
            for _ in range(steps)
        ]

    return make


def numpy_adamw(weights, gradient_steps, lr, decays, multipliers, weight_decay):
    """Textbook Adam (Keras's epsilon-hat form) with decoupled decay, per variable."""
    weights = [w.astype("float64").copy() for w in weights]
    m = [np.zeros_like(w) for w in weights]
    v = [np.zeros_like(w) for w in weights]
    for t, gradients in enumerate(gradient_steps, start=1):
        for i, g in enumerate(gradients):
            step_lr = lr * multipliers[i]
            if decays[i]:
                weights[i] -= step_lr * weight_decay * weights[i]
            m[i] = BETA_1 * m[i] + (1 - BETA_1) * g
            v[i] = BETA_2 * v[i] + (1 - BETA_2) * g * g
            alpha = step_lr * np.sqrt(1 - BETA_2**t) / (1 - BETA_1**t)
            weights[i] -= alpha * m[i] / (np.sqrt(v[i]) + EPSILON)
    return weights


def run_steps(optimizer, model, gradient_steps):
    variables = model.trainable_variables
    for gradients in gradient_steps:
        optimizer.apply([tf.constant(g) for g in gradients], variables)
    return [v.numpy() for v in variables]


def assert_all_close(actual, expected, atol=1e-6):
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("exclude", [True, False])
def test_adamw_two_steps_with_and_without_decay_exclusion(exclude, gradients_for):
    model = bert_like_model()
    initial = [v.numpy() for v in model.trainable_variables]
    steps = gradients_for(model, 2)
    kwargs = {} if exclude else {"exclude_from_weight_decay": []}
    optimizer = AdamW(learning_rate=0.01, weight_decay=0.1, epsilon=EPSILON, **kwargs)
    actual = run_steps(optimizer, model, steps)
    paths = [v.path for v in model.trainable_variables]
    decays = [
        not (exclude and ("Norm" in p or "bias" in p)) for p in paths
    ]
    # 3 norms x (gamma, beta) + 4 biases are excluded by default.
    assert decays.count(False) == (10 if exclude else 0)
    expected = numpy_adamw(initial, steps, 0.01, decays, [1.0] * len(paths), 0.1)
    assert_all_close(actual, expected)
    assert [optimizer.uses_weight_decay(v) for v in model.trainable_variables] == decays


def test_adamw_excluded_variables_differ_from_decayed_ones(gradients_for):
    # The exclusion must matter: with decay on everything, Norm/bias end up elsewhere.
    steps = None
    results = []
    for exclude in (["Norm", "bias"], []):
        model = bert_like_model()
        steps = steps or gradients_for(model, 1)
        optimizer = AdamW(0.01, weight_decay=0.5, exclude_from_weight_decay=exclude)
        results.append(run_steps(optimizer, model, steps))
    paths = [v.path for v in model.trainable_variables]
    for path, with_exclusion, without in zip(paths, *results):
        if "Norm" in path or "bias" in path:
            assert np.abs(with_exclusion - without).max() > 1e-4, path
        else:
            np.testing.assert_allclose(with_exclusion, without, atol=1e-7)


@pytest.fixture
def fused_adam_calls(monkeypatch):
    """Counts the ResourceApplyAdam calls (traced or eager) made while the test runs."""
    calls = []
    kernel = tf.raw_ops.ResourceApplyAdam

    def counting(**kwargs):
        calls.append(kwargs["var"])
        return kernel(**kwargs)

    monkeypatch.setattr(tf.raw_ops, "ResourceApplyAdam", counting)
    return calls


def test_fused_adam_kernel_matches_the_plain_update(gradients_for, fused_adam_calls,
                                                    monkeypatch):
    """Three AdamW steps on CPU through the fused kernel, against Keras's plain
    element-wise update (the fallback) and against NumPy."""
    import bert4x.optimizers as optimizers
    model = bert_like_model()
    initial = [v.numpy() for v in model.trainable_variables]
    steps = gradients_for(model, 3)
    fused = AdamW(0.01, weight_decay=0.1, epsilon=EPSILON)
    fused_result = run_steps(fused, model, steps)
    assert fused_adam_calls and all(fused.uses_fused_adam(v) for v in model.trainable_variables)
    calls = len(fused_adam_calls)
    # The same steps where the device type has no fused kernel: the plain update.
    monkeypatch.setattr(optimizers, "FUSED_ADAM_DEVICE_TYPES", ("GPU", "TPU"))
    for variable, value in zip(model.trainable_variables, initial):
        variable.assign(value)
    plain = AdamW(0.01, weight_decay=0.1, epsilon=EPSILON)
    plain_result = run_steps(plain, model, steps)
    assert len(fused_adam_calls) == calls  # the fallback never called the kernel
    assert not any(plain.uses_fused_adam(v) for v in model.trainable_variables)
    assert_all_close(fused_result, plain_result, atol=1e-6)
    paths = [v.path for v in model.trainable_variables]
    decays = [not ("Norm" in p or "bias" in p) for p in paths]
    expected = numpy_adamw(initial, steps, 0.01, decays, [1.0] * len(paths), 0.1)
    assert_all_close(plain_result, expected)


def test_fused_adam_falls_back_for_dtypes_without_a_checked_kernel(fused_adam_calls):
    """A float16 variable gets Keras's plain Adam step, not the fused kernel."""
    variable = keras.Variable(np.array([1.0, -2.0, 0.5], "float16"), dtype="float16")
    gradient = np.array([0.5, 0.25, -1.0], "float16")
    optimizer = AdamW(0.01, weight_decay=0.0, epsilon=1e-3)
    reference_variable = keras.Variable(variable.numpy(), dtype="float16")
    reference = keras.optimizers.Adam(0.01, epsilon=1e-3)
    for _ in range(2):
        optimizer.apply([tf.constant(gradient)], [variable])
        reference.apply([tf.constant(gradient)], [reference_variable])
    assert not optimizer.uses_fused_adam(variable) and not fused_adam_calls
    np.testing.assert_array_equal(variable.numpy(), reference_variable.numpy())
    assert np.all(variable.numpy() != np.array([1.0, -2.0, 0.5], "float16"))


def numpy_lamb(weights, gradient_steps, lr, weight_decay, excluded):
    weights = [w.astype("float64").copy() for w in weights]
    m = [np.zeros_like(w) for w in weights]
    v = [np.zeros_like(w) for w in weights]
    ratios = []
    for t, gradients in enumerate(gradient_steps, start=1):
        ratios = []
        for i, g in enumerate(gradients):
            m[i] = BETA_1 * m[i] + (1 - BETA_1) * g
            v[i] = BETA_2 * v[i] + (1 - BETA_2) * g * g
            update = (m[i] / (1 - BETA_1**t)) / (np.sqrt(v[i] / (1 - BETA_2**t)) + EPSILON)
            ratio = 1.0
            if not excluded[i]:
                update = update + weight_decay * weights[i]
                w_norm, u_norm = np.linalg.norm(weights[i]), np.linalg.norm(update)
                ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
            ratios.append(ratio)
            weights[i] -= lr * ratio * update
    return weights, ratios


def test_lamb_trust_ratio(gradients_for):
    model = bert_like_model()
    initial = [v.numpy() for v in model.trainable_variables]
    steps = gradients_for(model, 2)
    optimizer = Lamb(learning_rate=0.02, weight_decay=0.05, epsilon=EPSILON)
    actual = run_steps(optimizer, model, steps)
    paths = [v.path for v in model.trainable_variables]
    excluded = ["Norm" in p or "bias" in p for p in paths]
    expected, ratios = numpy_lamb(initial, steps, 0.02, 0.05, excluded)
    assert_all_close(actual, expected)
    # The ratio really rescales: adapted variables have ratios far from 1.
    assert any(abs(r - 1) > 0.1 for r, e in zip(ratios, excluded) if not e)


def test_lamb_zero_weights_use_ratio_one():
    variable = keras.Variable(np.zeros((3,), "float32"), name="kernel")
    gradient = np.array([0.5, -1.0, 2.0], "float32")
    Lamb(0.1, weight_decay=0.0, exclude_from_weight_decay=[]).apply(
        [tf.constant(gradient)], [variable]
    )
    # Step 1: m_hat = g, v_hat = g^2, so update = g / (|g| + eps); ratio 1 for w = 0.
    np.testing.assert_allclose(
        variable.numpy(), -0.1 * gradient / (np.abs(gradient) + EPSILON), atol=1e-7
    )


def test_warmup_linear_decay_values():
    schedule = WarmupLinearDecay(1e-3, warmup_steps=100, total_steps=1100, end_lr=1e-5)

    def expected(step):
        if step < 100:
            return 1e-3 * step / 100
        if step >= 1100:
            return 1e-5
        return 1e-3 + (1e-5 - 1e-3) * (step - 100) / 1000

    for step in [0, 1, 50, 99, 100, 101, 600, 1099, 1100, 5000]:
        np.testing.assert_allclose(float(schedule(step)), expected(step), rtol=1e-5, atol=1e-12)
    without_warmup = WarmupLinearDecay(2.0, warmup_steps=0, total_steps=10)
    assert [float(without_warmup(s)) for s in (0, 5, 10, 20)] == pytest.approx([2, 1, 0, 0])


def test_piecewise_linear_values_like_bert4keras():
    schedule = PiecewiseLinear({1000: 1, 2000: 0.1}, base_lr=1e-4)
    steps = np.array([0, 250, 999, 1000, 1500, 2000, 2500, 10**6])
    expected = 1e-4 * np.interp(steps, [0, 1000, 2000], [0.0, 1.0, 0.1])
    actual = [float(schedule(int(s))) for s in steps]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-12)
    not_from_zero = PiecewiseLinear([(10, 2.0), (20, 1.0)], base_lr=1.0, from_zero=False)
    assert [float(not_from_zero(s)) for s in (0, 10, 15, 30)] == pytest.approx([2, 2, 1.5, 1])


def test_schedules_serialise_and_drive_the_optimizer():
    for schedule in (
        WarmupLinearDecay(1e-3, 10, 110, end_lr=1e-6),
        PiecewiseLinear({10: 1, 20: 0.5}, base_lr=3e-4),
    ):
        config = keras.saving.serialize_keras_object(schedule)
        restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(config)))
        for step in (0, 5, 15, 40):
            assert float(restored(step)) == pytest.approx(float(schedule(step)))
    # The optimizer reads the schedule at its iteration count (0 for the first update).
    variable = keras.Variable(np.ones((2,), "float32"), name="kernel")
    optimizer = keras.optimizers.SGD(PiecewiseLinear({4: 1.0}, base_lr=0.4))
    values = []
    for _ in range(3):
        before = variable.numpy().copy()
        optimizer.apply([tf.ones((2,))], [variable])
        values.append(float((before - variable.numpy())[0]))
    np.testing.assert_allclose(values, [0.0, 0.1, 0.2], atol=1e-7)


def test_layerwise_multipliers_and_their_effect(gradients_for):
    num_layers = 11  # layer 1 must not capture layer 10
    model = bert_like_model(num_layers=num_layers, hidden=2)
    multipliers = layerwise_lr_multipliers(model, decay=0.5)
    assert len(multipliers) == num_layers + 1

    def expected_multiplier(path):
        if path.startswith("Embedding-"):
            return 0.5 ** (num_layers + 1)
        match = re.match(r"Transformer-(\d+)-", path)
        return 0.5 ** (num_layers - int(match.group(1))) if match else 1.0

    paths = [v.path for v in model.trainable_variables]
    expected = [expected_multiplier(p) for p in paths]
    optimizer = AdamW(0.01, weight_decay=0.2, lr_multipliers=multipliers)
    initial = [v.numpy() for v in model.trainable_variables]
    steps = gradients_for(model, 1)
    actual = run_steps(optimizer, model, steps)
    assert [optimizer.learning_rate_multiplier(v) for v in model.trainable_variables] == (
        pytest.approx(expected)
    )
    decays = ["Norm" not in p and "bias" not in p for p in paths]
    assert_all_close(actual, numpy_adamw(initial, steps, 0.01, decays, expected, 0.2))


def test_lr_multipliers_first_matching_pattern_wins():
    model = bert_like_model()
    optimizer = AdamW(0.01, lr_multipliers={"Classifier/bias": 3.0, "Classifier": 2.0, "^Pooler": 0.0})
    optimizer.build(model.trainable_variables)
    by_path = {v.path: optimizer.learning_rate_multiplier(v) for v in model.trainable_variables}
    assert by_path["Classifier/bias"] == 3.0
    assert by_path["Classifier/kernel"] == 2.0
    assert by_path["Pooler-Dense/kernel"] == 0.0
    assert by_path["Transformer-0-FeedForward/kernel"] == 1.0
    with pytest.raises(ValueError, match="layer_pattern"):
        layerwise_lr_multipliers(model, layer_pattern=r"Encoder-(\d+)-")


def test_gradient_transform_clip_by_own_norm(gradients_for):
    model = bert_like_model()
    initial = [v.numpy() for v in model.trainable_variables]
    steps = gradients_for(model, 2)
    steps[0] = [g * 10 for g in steps[0]]  # clipped
    steps[1] = [g * 0.01 for g in steps[1]]  # left alone
    seen = []

    def clip_and_record(gradient, variable):
        seen.append(variable.path)
        return ClipByNorm(0.5)(gradient, variable)

    optimizer = AdamW(0.01, weight_decay=0.0, gradient_transform=clip_and_record)
    actual = run_steps(optimizer, model, steps)

    def clip(g):
        norm = np.linalg.norm(g)
        return g * min(1.0, 0.5 / norm)

    clipped = [[clip(g.astype("float64")) for g in step] for step in steps]
    n = len(initial)
    expected = numpy_adamw(initial, clipped, 0.01, [False] * n, [1.0] * n, 0.0)
    assert_all_close(actual, expected)
    unclipped = numpy_adamw(initial, steps, 0.01, [False] * n, [1.0] * n, 0.0)
    assert max(np.abs(a - b).max() for a, b in zip(expected, unclipped)) > 1e-3
    assert set(seen) == {v.path for v in model.trainable_variables}


def test_optimizers_serialise_with_their_rules():
    for optimizer in (
        AdamW(
            WarmupLinearDecay(1e-3, 10, 100),
            weight_decay=0.02,
            lr_multipliers={"^Embedding-": 0.5},
            gradient_transform=ClipByNorm(2.0),
        ),
        Lamb(1e-3, weight_decay=0.03, exclude_from_layer_adaptation=["Norm"]),
    ):
        config = json.loads(json.dumps(keras.optimizers.serialize(optimizer)))
        restored = keras.optimizers.deserialize(config)
        assert type(restored) is type(optimizer)
        for key in ("weight_decay", "exclude_from_weight_decay", "lr_multipliers"):
            assert restored.get_config()[key] == optimizer.get_config()[key]
    assert restored.exclude_from_layer_adaptation == ["Norm"]
    adamw = keras.optimizers.deserialize(
        json.loads(json.dumps(keras.optimizers.serialize(AdamW(gradient_transform=ClipByNorm(2.0)))))
    )
    assert isinstance(adamw.gradient_transform, ClipByNorm)
    assert adamw.gradient_transform.max_norm == 2.0


def test_model_saves_and_loads_with_optimizer(tmp_path):
    model = bert_like_model()
    model.compile(AdamW(PiecewiseLinear({5: 1.0}, base_lr=1e-3), weight_decay=0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(np.zeros((4, 3), "int32"), np.zeros((4,), "int32"), verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, AdamW)
    assert loaded.optimizer.get_config()["learning_rate"]["class_name"].endswith(
        "PiecewiseLinear"
    )
    assert int(loaded.optimizer.iterations.numpy()) == 1
    # The schedule at iteration 1: 1e-3 * 1 / 5.
    assert float(loaded.optimizer.learning_rate) == pytest.approx(2e-4)


# ------------------------------------------------------------------ accumulation


def tiny_classifier(initial=None):
    keras.utils.set_random_seed(3)
    token_ids = keras.Input((4,), dtype="int32")
    x = keras.layers.Embedding(9, 5, name="Embedding-Token")(token_ids)
    x = keras.layers.Dense(5, activation="tanh", name="Transformer-0-FeedForward")(x)
    x = keras.layers.LayerNormalization(name="Transformer-0-FeedForward-Norm")(x)
    logits = keras.layers.Dense(3, name="Classifier")(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(token_ids, logits)
    if initial is not None:
        model.set_weights(initial)
    return model


@pytest.fixture(scope="module")
def accumulation_data():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 9, size=(14, 4)).astype("int32")
    y = rng.integers(0, 3, size=(14,)).astype("int32")
    return x, y, tiny_classifier().get_weights()


def loss_function():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_accumulation_model_fit_equals_whole_batch_steps(accumulation_data):
    x, y, initial = accumulation_data
    reference = tiny_classifier(initial)
    reference.compile(AdamW(0.05, weight_decay=0.1), loss_function(), jit_compile=False)
    reference.fit(x, y, batch_size=7, epochs=1, shuffle=False, verbose=0)

    model = tiny_classifier(initial)
    trainer = GradientAccumulationModel(model, accumulation_steps=3)  # 3 + 3 + 1
    trainer.compile(AdamW(0.05, weight_decay=0.1), loss_function(), jit_compile=False)
    history = trainer.fit(x, y, batch_size=7, epochs=1, shuffle=False, verbose=0)

    assert int(trainer.optimizer.iterations.numpy()) == 2
    assert_all_close([w.numpy() for w in model.weights],
                     [w.numpy() for w in reference.weights], atol=1e-5)
    assert np.isfinite(history.history["loss"][0])
    evaluation = trainer.evaluate(x, y, verbose=0, return_dict=True)
    assert evaluation["loss"] == pytest.approx(
        reference.evaluate(x, y, verbose=0), rel=1e-4
    )


def test_gradient_accumulator_in_a_custom_step(accumulation_data):
    x, y, initial = accumulation_data
    reference = tiny_classifier(initial)
    reference_optimizer = Lamb(0.05, weight_decay=0.1)
    with tf.GradientTape() as tape:
        loss = loss_function()(y[:12], reference(x[:12], training=True))
    reference_optimizer.apply(tape.gradient(loss, reference.trainable_variables),
                              reference.trainable_variables)

    model = tiny_classifier(initial)
    optimizer = Lamb(0.05, weight_decay=0.1)
    accumulator = GradientAccumulator(model.trainable_variables)

    @tf.function
    def micro_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_function()(yb, model(xb, training=True))
        accumulator.accumulate(tape.gradient(loss, model.trainable_variables))

    for start in range(0, 12, 4):
        micro_step(x[start:start + 4], y[start:start + 4])
    assert int(optimizer.iterations.numpy()) == 0
    tf.function(lambda: accumulator.apply(optimizer))()
    assert int(optimizer.iterations.numpy()) == 1
    assert float(accumulator.total_weight.numpy()) == 0.0
    assert_all_close([w.numpy() for w in model.weights],
                     [w.numpy() for w in reference.weights], atol=1e-5)


def test_accumulation_under_mirrored_strategy_with_two_cpus():
    script = os.path.join(os.path.dirname(__file__), "accumulation_mirrored_script.py")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run(
        [sys.executable, script], capture_output=True, text=True, timeout=240, env=env
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["custom_loop_max_diff"] < 1e-5
    assert result["custom_loop_iterations"] == 2
    assert result["fit_max_diff"] < 1e-5
    assert result["fit_iterations"] == 2
    assert result["fit_loss_finite"]


# --------------------------------------------------------------------------- EMA


class RecordWeights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.history = []

    def on_train_batch_end(self, batch, logs=None):
        self.history.append([w.numpy().copy() for w in self.model.trainable_weights])


def test_exponential_moving_average_values_and_swap():
    model = bert_like_model()
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)
    initial = [w.numpy().copy() for w in model.trainable_weights]
    rng = np.random.default_rng(2)
    x = rng.integers(0, 7, size=(10, 3)).astype("int32")
    y = rng.integers(0, 2, size=(10,)).astype("int32")
    ema = ExponentialMovingAverage(momentum=0.8)
    recorder = RecordWeights()
    model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0, callbacks=[recorder, ema])
    assert len(recorder.history) == 5

    expected = [w.astype("float64") for w in initial]
    for weights in recorder.history:
        expected = [0.8 * a + 0.2 * w for a, w in zip(expected, weights)]
    assert_all_close([a.numpy() for a in ema.averages], expected)

    trained = [w.numpy().copy() for w in model.trainable_weights]
    assert max(np.abs(t - e).max() for t, e in zip(trained, expected)) > 1e-4
    ema.apply_ema_weights()
    assert_all_close([w.numpy() for w in model.trainable_weights], expected)
    with pytest.raises(ValueError, match="already"):
        ema.apply_ema_weights()
    ema.reset_old_weights()
    assert_all_close([w.numpy() for w in model.trainable_weights], trained, atol=0)
    with ema.averaged_weights():
        assert_all_close([w.numpy() for w in model.trainable_weights], expected)
    assert_all_close([w.numpy() for w in model.trainable_weights], trained, atol=0)


def test_optimizer_state_holds_no_model_variables():
    model = bert_like_model()
    optimizer = AdamW(0.01)
    optimizer.build(model.trainable_variables)
    model_ids = {id(v) for v in model.variables}
    assert not [v.path for v in optimizer.variables if id(v) in model_ids]
    # iteration + learning rate + (momentum, velocity) per variable.
    assert len(optimizer.variables) == 2 + 2 * len(model.trainable_variables)


CROSS_BACKEND_SCRIPT = r"""
import sys
import keras, numpy as np
from bert4x.optimizers import (AdamW, ClipByNorm, ExponentialMovingAverage, Lamb,
                               WarmupLinearDecay, layerwise_lr_multipliers)

def train():
    token_ids = keras.Input((3,), dtype="int32")
    x = keras.layers.Embedding(7, 4, name="Embedding-Token")(token_ids)
    x = keras.layers.Dense(4, name="Transformer-0-FeedForward")(x)
    x = keras.layers.LayerNormalization(name="Transformer-0-FeedForward-Norm")(x)
    x = keras.layers.Dense(2, name="Classifier")(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(token_ids, x)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    results = []
    for optimizer in (
        AdamW(WarmupLinearDecay(0.01, 1, 10), weight_decay=0.1,
              lr_multipliers=layerwise_lr_multipliers(model, 0.5),
              gradient_transform=ClipByNorm(1.0)),
        Lamb(0.01, weight_decay=0.1),
    ):
        model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        ema = ExponentialMovingAverage(0.9)
        model.fit(np.arange(24).reshape(8, 3) % 7, np.arange(8) % 2, batch_size=4,
                  epochs=2, shuffle=False, verbose=0, callbacks=[ema])
        results += [keras.ops.convert_to_numpy(w) for w in model.weights]
        results += [keras.ops.convert_to_numpy(a) for a in ema.averages]
    return results

if __name__ == "__main__":
    np.savez(sys.argv[1], *train())
"""


@pytest.mark.slow  # about 25 s: a JAX process; run with `pytest -m slow`
def test_same_training_on_jax_backend(tmp_path):
    script = tmp_path / "cross_backend.py"
    script.write_text(CROSS_BACKEND_SCRIPT)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "jax.npz"
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3",
               JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    completed = subprocess.run([sys.executable, str(script), str(out)],
                               capture_output=True, text=True, timeout=240, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    namespace = {"__name__": "cross_backend"}
    exec(compile(CROSS_BACKEND_SCRIPT, "cross_backend", "exec"), namespace)
    expected = namespace["train"]()  # this process runs the TensorFlow backend
    with np.load(out) as jax_results:
        actual = [jax_results[f"arr_{i}"] for i in range(len(expected))]
    assert_all_close(actual, expected, atol=1e-5)
