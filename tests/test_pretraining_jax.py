"""The JAX route of pretraining: keras.distribution over CPU devices (data and model
parallel meshes), gradient accumulation, and the settings it refuses.

The runs happen in subprocesses with ``KERAS_BACKEND=jax`` (tests/pretraining_worker.py);
the default run's four checks share one (the ``jax_jobs`` fixture).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

from pretraining_helpers import (WORKER, corpus, data_dir, free_ports,  # noqa: E402,F401
                                 subprocess_env, tiny_config)


def _run_jobs(jobs, tmp_path, device_count):
    """The worker's ``jax_jobs`` mode: ``jobs`` (``[(name, mode, config or None, device
    count or None)]``) in one JAX process of ``device_count`` CPU devices;
    ``{name: {key: array}}``."""
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps([[name, mode, config and config.to_dict(), devices]
                                for name, mode, config, devices in jobs]), encoding="utf-8")
    result = tmp_path / "jobs.npz"
    process = subprocess.run(
        [sys.executable, WORKER, "jax_jobs", str(path), str(result)], capture_output=True,
        text=True, timeout=900,
        env=subprocess_env(KERAS_BACKEND="jax",
                           XLA_FLAGS=f"--xla_force_host_platform_device_count={device_count}"))
    assert process.returncode == 0, process.stderr[-3000:]
    arrays = {job[0]: {} for job in jobs}
    with np.load(result) as stored:
        for key in stored:
            name, _, field = key.partition(":")
            arrays[name][field] = stored[key]
    return arrays


def _job(arrays, name):
    """The arrays of one job; its traceback as the failure when it failed."""
    job = arrays[name]
    assert "error" not in job, str(job["error"])
    return job


@pytest.fixture(scope="module")
def jax_jobs(tmp_path_factory, data_dir):
    """The default run's JAX checks in one JAX process of 8 CPU devices (one JAX and
    TensorFlow start instead of four): the meshes (8 devices), run_pretraining's data
    parallel route (a host of 2 devices), the accumulated update (a host of 1) and
    the refused TPU setting."""
    tmp_path = tmp_path_factory.mktemp("jax_jobs")
    data_parallel = tiny_config(tmp_path / "data_parallel", data_dir, backend="jax",
                                accumulation_steps=1, train_steps=30, warmup_steps=3,
                                learning_rate=3e-3, batch_size=8, checkpoint_every=10,
                                log_every=10, eval_batches=2)
    accumulation = _worker_config(tmp_path / "accumulation", data_dir)
    accumulation = accumulation.replace(model=dict(accumulation.model, num_hidden_layers=1))
    return _run_jobs([("mesh", "jax_mesh", _mesh_config(tmp_path / "mesh", data_dir), None),
                      ("data_parallel", "jax", data_parallel, 2),
                      ("accumulation", "jax_accumulation", accumulation, 1),
                      ("tpu", "jax_refuses_tpu", None, None)], tmp_path, device_count=8)


def test_jax_data_parallel_two_devices(jax_jobs):
    """JAX backend: model.fit under keras.distribution.DataParallel on 2 CPU devices."""
    arrays = _job(jax_jobs, "data_parallel")
    assert int(arrays["devices"]) == 2 and int(arrays["mesh"]) == 2
    assert not arrays["distribution_left"]  # the caller's keras.distribution is untouched
    losses = arrays["losses"]
    # The newest checkpoint (step 30) was truncated: the resume starts at step 20.
    assert len(losses) == 30 and len(arrays["resumed"]) == 16
    assert np.all(np.isfinite(losses))
    assert losses[-5:].mean() < losses[:5].mean() - 0.1, losses
    # Resumed with the optimiser state: no jump back to the initial loss.
    assert arrays["resumed"].mean() < losses[:5].mean() - 0.1
    assert int(arrays["eval_targets"]) > 0
    exported, trained = arrays["exported"], arrays["trained"]
    assert np.all(np.isfinite(exported))
    np.testing.assert_allclose(exported.sum(-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(exported, tf.nn.softmax(trained).numpy(), atol=1e-5)


def test_jax_route_rejects_unsupported_settings(tmp_path, data_dir, jax_jobs):
    from bert4x.pretraining.jax_trainer import JaxPretrainer
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=jax"):
        JaxPretrainer(tiny_config(tmp_path, data_dir, backend="jax"))
    with pytest.raises(ValueError, match="mesh .* needs backend 'jax'"):
        tiny_config(tmp_path, data_dir, mesh="data=1")
    # --tpu on JAX takes the TPU chips JAX sees; on this CPU it sees none.
    error = str(_job(jax_jobs, "tpu")["refusal"])
    assert error.startswith("RuntimeError: tpu='local' on the JAX backend trains on the TPU "
                            "chips JAX sees, and JAX sees none"), error


def _worker_config(tmp_path, data_dir):
    """A tiny JAX config with dropout, 2 micro-batches of 4 per update, 8 updates,
    checkpoints every 3."""
    model = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 64,
             "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
    return tiny_config(tmp_path, data_dir, backend="jax", model=model, batch_size=4,
                       accumulation_steps=2, train_steps=8, warmup_steps=2,
                       checkpoint_every=3, log_every=2, steps_per_loop=1, eval_batches=1)


def _jax_worker(mode, tmp_path_factory, data_dir):
    """Run ``mode`` of the worker in a JAX process on :func:`_worker_config`."""
    tmp_path = tmp_path_factory.mktemp(mode)
    config = _worker_config(tmp_path, data_dir)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()), encoding="utf-8")
    result = tmp_path / "result.npz"
    process = subprocess.run([sys.executable, WORKER, mode, str(path), str(result)],
                             env=subprocess_env(KERAS_BACKEND="jax"), capture_output=True,
                             text=True, timeout=900)
    assert process.returncode == 0, process.stderr[-3000:]
    return dict(np.load(result))


@pytest.fixture(scope="module")
def jax_features(tmp_path_factory, data_dir):
    """One JAX process: bfloat16, steps_per_loop, stopped-and-resumed runs (about 5
    minutes of CPU time: 4 trainings with their compiles)."""
    return _jax_worker("jax_features", tmp_path_factory, data_dir)


def test_jax_accumulated_update_is_the_whole_batch_gradient(jax_jobs):
    """2 micro-batches with different target counts: the update (SGD, lr 1) is the
    gradient of the mean cross-entropy over all targets of the whole batch."""
    arrays = _job(jax_jobs, "accumulation")
    counts = arrays["micro_targets"]
    assert counts[0] != counts[1] and counts.min() > 0, counts
    expected = arrays["expected"]
    np.testing.assert_allclose(arrays["accumulated"], expected, rtol=1e-4,
                               atol=1e-6 * np.abs(expected).max())
    # The check can tell token weighting from a plain mean of the micro-batch losses.
    assert np.abs(arrays["naive"] - expected).max() > 100 * 1e-6 * np.abs(expected).max()


@pytest.mark.slow
def test_jax_bfloat16_trains_and_exports_float32(jax_features):
    arrays = jax_features
    assert "bfloat16" in arrays["bf16_compute"].tolist()
    losses = arrays["bf16_losses"]
    assert len(losses) == 16 and np.all(np.isfinite(losses))
    # 16 updates with dropout: the loss falls by about 0.06 (4.80 to 4.74, means of
    # the first and last 4 updates).
    assert losses[-4:].mean() < losses[:4].mean() - 0.03, losses
    # The exported checkpoint holds float32 weights (the master copy) and loads.
    assert arrays["export_dtypes"].tolist() == ["float32"]
    assert bool(arrays["export_outputs_finite"])


@pytest.mark.slow
def test_jax_steps_per_loop_and_exact_resume(jax_features):
    arrays = jax_features
    # steps_per_loop 3 with log_every 2, checkpoint_every 3 over 8 updates: fit calls
    # of 2, 1, 1, 2, 2 updates, run as 5 compiled calls instead of 8.
    assert int(arrays["one_calls"]) == 8 and int(arrays["loop_calls"]) == 5
    np.testing.assert_allclose(arrays["loop_weights"], arrays["one_weights"], atol=1e-6,
                               rtol=0)
    # Stopped after the checkpoint of step 3 (dropout on), resumed: the same bits.
    assert bool(arrays["resumed_from_3"])
    np.testing.assert_array_equal(arrays["resumed_weights"], arrays["one_weights"])
    assert not arrays["distribution_left"]


def _mesh_config(tmp_path, data_dir):
    """Tiny, dropout 0, a total batch of 8 (1 row per device on data=8), 12 updates; the
    whole vocabulary (21128 rows, a multiple of 4, so the model axis splits it)."""
    model = dict(tiny_config(tmp_path, data_dir).model, num_hidden_layers=1)
    return tiny_config(tmp_path, data_dir, backend="jax", batch_size=8, accumulation_steps=1,
                       vocab_trim_min_count=0, model=model,
                       train_steps=12, warmup_steps=2, checkpoint_every=12, log_every=12,
                       eval_batches=1, learning_rate=3e-3)


def _run_mesh_worker(mode, config, tmp_path, timeout=600, **env):
    path = tmp_path / f"{mode}.json"
    path.write_text(json.dumps(config.to_dict()), encoding="utf-8")
    result = tmp_path / f"{mode}.npz"
    process = subprocess.run(
        [sys.executable, WORKER, mode, str(path), str(result)], capture_output=True, text=True,
        env=subprocess_env(KERAS_BACKEND="jax",
                            XLA_FLAGS="--xla_force_host_platform_device_count=8", **env),
        timeout=timeout)
    assert process.returncode == 0, process.stderr[-3000:]
    return dict(np.load(result))


def _assert_same_export(arrays, name, reference="one", atol=1e-4):
    names = sorted(key.split("/", 1)[1] for key in arrays if key.startswith(reference + "/"))
    assert len(names) > 20, names
    assert names == sorted(key.split("/", 1)[1] for key in arrays
                           if key.startswith(name + "/"))
    initial_gap = 0.0
    for official in names:
        np.testing.assert_allclose(arrays[f"{name}/{official}"],
                                   arrays[f"{reference}/{official}"], atol=atol, rtol=0,
                                   err_msg=f"{name}: {official}")
        initial_gap = max(initial_gap, np.abs(arrays[f"{reference}/{official}"]).max())
    assert initial_gap > 0


def test_jax_meshes_data_8_and_data_2_model_4_give_the_one_device_weights(jax_jobs):
    """8 CPU devices: the exported weights of data=8 and of data=2,model=4 (weights
    split Megatron style) equal the one-device run's within 1e-4 after 12 updates;
    the README's fine-tuning snippet under ModelParallel gives the one-device outputs."""
    arrays = _job(jax_jobs, "mesh")
    assert arrays["one_devices"].tolist() == [1, 1]
    assert arrays["data8_devices"].tolist() == [8, 1]
    assert arrays["data2_model4_devices"].tolist() == [2, 4]
    # The first feed-forward kernel is split by columns over the model axis, the token
    # embedding on the vocabulary.
    assert arrays["kernel_shape"].tolist() == [32, 64]
    assert arrays["kernel_shards"].tolist() == [[32, 16]]
    assert arrays["embeddings_shape"].tolist() == [21128, 32]
    assert arrays["embeddings_shards"].tolist() == [[21128 // 4, 32]]
    for name in ("data8", "data2_model4"):
        _assert_same_export(arrays, name)
        np.testing.assert_allclose(arrays[f"{name}_eval"], arrays["one_eval"], rtol=1e-4)
    assert arrays["snippet_embedding_shards"] == 4  # the vocabulary split in 4
    np.testing.assert_allclose(arrays["snippet_outputs"], arrays["snippet_expected"],
                               atol=1e-5)
    assert not arrays["distribution_left"]


@pytest.mark.slow
def test_jax_two_processes_of_four_devices_give_the_one_device_weights(tmp_path, data_dir):
    """2 processes x 4 CPU devices on 127.0.0.1 (keras.distribution.initialize from the
    KERAS_DISTRIBUTION_* variables), mesh data=2,model=4 over both: process 0's export
    equals the one-device run's within 1e-4."""
    config = _mesh_config(tmp_path, data_dir)
    reference = _run_mesh_worker("jax_one_device", config.replace(
        output_dir=str(tmp_path / "reference")), tmp_path)
    path = tmp_path / "multi.json"
    path.write_text(json.dumps(config.replace(output_dir=str(tmp_path / "multi")).to_dict()),
                    encoding="utf-8")
    port, = free_ports(1)
    processes = [subprocess.Popen(
        [sys.executable, WORKER, "jax_process", str(path), str(tmp_path / "multi.npz")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=subprocess_env(KERAS_BACKEND="jax",
                            XLA_FLAGS="--xla_force_host_platform_device_count=4",
                            KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
                            KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                            KERAS_DISTRIBUTION_PROCESS_ID=str(index)))
        for index in range(2)]
    outputs = [process.communicate(timeout=900) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    # Only process 0 logs.
    assert "step 12/12" in outputs[0][0] and "step 12/12" not in outputs[1][0]
    arrays = [dict(np.load(tmp_path / f"multi-{index}.npz")) for index in range(2)]
    for process in arrays:
        assert int(process["processes"]) == 2 and int(process["devices"]) == 8
        assert process["mesh"].tolist() == [2, 4]
    assert not any(key.startswith("multi/") for key in arrays[1])  # process 0 exports
    _assert_same_export({**reference, **arrays[0]}, "multi")


@pytest.mark.slow
def test_jax_stopped_model_parallel_run_resumes_exactly_on_any_mesh(tmp_path, data_dir):
    """A data=2,model=4 run stopped after its checkpoint of step 6 and resumed on the
    same mesh ends with the uninterrupted run's weights bit for bit; resumed on data=8
    (same total batch), within 1e-4."""
    arrays = _run_mesh_worker("jax_resume", _mesh_config(tmp_path, data_dir), tmp_path)
    for name in ("same", "other"):
        assert bool(arrays[f"{name}_resumed_at_6"]) and int(arrays[f"{name}_steps_run"]) == 6
    _assert_same_export(arrays, "same", reference="whole", atol=0)
    _assert_same_export(arrays, "other", reference="whole")
