"""Runs the backend-dependent model checks of ``test_models.py`` under one Keras backend.

The backend is fixed when Keras is imported, so ``test_models.py`` runs this file
once per other backend (``KERAS_BACKEND=jax`` / ``torch``) as a subprocess and calls
:func:`run` in-process for its own. Nothing is compared here: every result goes
into an ``.npz`` that the test compares against Hugging Face ``transformers``.

Usage: ``python tests/_model_worker.py WORKDIR OUT.npz``; WORKDIR is the folder
``test_models.py`` prepared (``inputs.npz`` and the checkpoint folders).
"""

import os
import sys
import tempfile


def run(workdir, out_path):
    import keras
    import numpy as np

    from bert4x.models import attention_model, build_transformer_model, intermediate_model

    inputs = np.load(os.path.join(workdir, "inputs.npz"))
    ids, segments = inputs["token_ids"], inputs["segment_ids"]
    unilm_segments = inputs["unilm_segment_ids"]
    results = {"backend": np.array(keras.backend.backend())}

    def predict(model, *arrays):
        # A direct call: no predict function to trace for each of these small models.
        outputs = model([keras.ops.convert_to_tensor(array) for array in arrays],
                        training=False)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        return [keras.ops.convert_to_numpy(output) for output in outputs]

    layers = int(inputs["num_layers"])
    probes = ["Embedding-Norm"] + [f"Transformer-{i}-FeedForward-Norm" for i in range(layers)]
    for act in ("gelu", "gelu_new"):
        folder = os.path.join(workdir, f"ckpt_{act}")
        # Google checkpoint given as a prefix; the config is found beside it.
        model = build_transformer_model(
            os.path.join(folder, "bert_config.json"), os.path.join(folder, "bert_model.ckpt"),
            with_pool=True, with_nsp="linear", with_mlm="linear")
        sequence, pooled, nsp, mlm = predict(model, ids, segments)
        results.update({f"{act}/sequence": sequence, f"{act}/pooled": pooled,
                        f"{act}/nsp_logits": nsp, f"{act}/mlm_logits": mlm})
        for name, value in zip(probes, predict(intermediate_model(model, probes), ids,
                                                segments)):
            results[f"{act}/hidden/{name}"] = value
        for index, probs in enumerate(predict(attention_model(model, list(range(layers))),
                                              ids, segments)):
            results[f"{act}/attention/{index}"] = probs

    # Folder form, probabilities instead of logits.
    folder = os.path.join(workdir, "ckpt_gelu")
    probs_model = build_transformer_model(checkpoint_path=folder, with_mlm=True,
                                          with_nsp=True)
    _, results["gelu/nsp_probs"], results["gelu/mlm_probs"] = predict(
        probs_model, ids, segments)

    # UniLM: its attention probabilities and a .keras round trip.
    unilm = build_transformer_model(checkpoint_path=folder, application="unilm")
    results["unilm/mlm_probs"] = predict(unilm, ids, unilm_segments)[0]
    for index, probs in enumerate(predict(attention_model(unilm, [0, layers - 1]), ids,
                                          unilm_segments)):
        results[f"unilm/attention/{index}"] = probs

    # .keras round trips: encoder with every head, UniLM, and a CLN model whose
    # condition weights are made non-zero so that they matter.
    cln_inputs = keras.Input((), dtype="int32", name="Input-Label")
    condition = keras.layers.Embedding(3, 8, name="Label-Embedding")(cln_inputs)
    cln = build_transformer_model(
        checkpoint_path=folder, with_mlm="linear", layer_norm_cond=condition,
        layer_norm_cond_hidden_size=6, layer_norm_cond_hidden_act="tanh",
        additional_input_layers=[cln_inputs])
    rng = np.random.default_rng(7)
    for variable in cln.weights:
        if "gamma_dense" in variable.path or "beta_dense" in variable.path:
            variable.assign(rng.normal(0, 0.3, variable.shape).astype("float32"))
    labels = np.array([0, 2, 1][: len(ids)], dtype="int32")
    with tempfile.TemporaryDirectory() as scratch:
        for key, model, arrays in (("encoder", model, (ids, segments)),
                                   ("unilm", unilm, (ids, unilm_segments)),
                                   ("cln", cln, (ids, segments, labels))):
            path = os.path.join(scratch, f"{key}.keras")
            before = predict(model, *arrays)
            model.save(path)
            loaded = keras.saving.load_model(path)
            after = predict(loaded, *arrays)
            if key == "unilm":  # probes work on a reloaded model too
                results["reloaded/unilm/attention/0"] = predict(
                    attention_model(loaded, 0), *arrays)[0]
            for index, (first, second) in enumerate(zip(before, after)):
                results[f"keras_roundtrip/{key}/{index}/before"] = first
                results[f"keras_roundtrip/{key}/{index}/after"] = second
    results["gelu_gradient"] = gelu_gradient(GELU_GRID)
    np.savez(out_path, **results)


GELU_GRID = [-7.0, -3.0, -1.5, -0.5, -1e-3, 0.0, 0.25, 1.0, 2.5, 6.0]


def gelu_gradient(points):
    """d/dx of bert4x's exact GELU at ``points`` by this backend's autodiff, in
    float32 and under bfloat16 inputs (the hand-written gradient must hold in both)."""
    import keras
    import numpy as np

    from bert4x.layers import get_activation
    gelu = get_activation("gelu")
    backend = keras.backend.backend()
    rows = []
    for dtype in ("float32", "bfloat16"):
        x = np.asarray(points, "float32")
        if backend == "tensorflow":
            import tensorflow as tf
            tensor = tf.cast(tf.constant(x), dtype)
            with tf.GradientTape() as tape:
                tape.watch(tensor)
                total = tf.reduce_sum(gelu(tensor) * tf.cast(3.0, dtype))
            grad = tape.gradient(total, tensor)
        elif backend == "jax":
            import jax
            import jax.numpy as jnp
            grad = jax.grad(lambda v: jnp.sum(gelu(v) * 3.0).astype("float32"))(
                jnp.asarray(x, dtype))
        else:
            import torch
            tensor = torch.tensor(x).to(getattr(torch, dtype)).requires_grad_()
            (gelu(tensor) * 3.0).sum().backward()
            grad = tensor.grad
        rows.append(keras.ops.convert_to_numpy(keras.ops.cast(grad, "float32")))
    return np.stack(rows)


if __name__ == "__main__":
    # The weights are the checkpoint's (or the .keras file's): under JAX, drawing
    # random ones first would compile an XLA program per shape.
    from _family_worker import skip_random_initialisation_under_jax
    skip_random_initialisation_under_jax()
    run(sys.argv[1], sys.argv[2])
