"""Pick the ``tf.distribute`` strategy for a pretraining run.

The rule: a TPU address gives ``TPUStrategy``; ``TF_CONFIG`` naming
several workers gives ``MultiWorkerMirroredStrategy``; several GPUs give
``MirroredStrategy``; otherwise the default strategy. The decision
(:func:`strategy_kind`) is a pure function, and :func:`make_strategy` takes its
factories as arguments, so both are tested without a TPU and without dialing any
address.
"""

import json
import os

STRATEGY_KINDS = ("tpu", "multi_worker", "mirrored", "default")


def cluster_workers(tf_config):
    """Number of workers (chief included) in a ``TF_CONFIG`` JSON string or dict."""
    if not tf_config:
        return 0
    if isinstance(tf_config, str):
        try:
            tf_config = json.loads(tf_config)
        except json.JSONDecodeError as error:
            raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from None
    cluster = tf_config.get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def strategy_kind(tpu=None, tf_config=None, num_gpus=0):
    """Decide which strategy a run uses.

    Args:
        tpu: a TPU address (``grpc://host:8470``), a TPU name, or ``"local"``.
        tf_config: the ``TF_CONFIG`` value (JSON string or dict), if any.
        num_gpus: GPUs visible to this process.

    Returns:
        One of ``"tpu"``, ``"multi_worker"``, ``"mirrored"``, ``"default"``.

    Example:
        >>> strategy_kind(tpu="grpc://10.0.0.2:8470")
        'tpu'
        >>> strategy_kind(tf_config={"cluster": {"worker": ["a:1", "b:2"]},
        ...                          "task": {"type": "worker", "index": 0}})
        'multi_worker'
        >>> strategy_kind(num_gpus=4)
        'mirrored'
        >>> strategy_kind()
        'default'
    """
    if tpu:
        return "tpu"
    if cluster_workers(tf_config) > 1:
        return "multi_worker"
    if num_gpus > 1:
        return "mirrored"
    return "default"


def make_strategy(kind, tpu=None, tpu_resolver_factory=None, tpu_strategy_factory=None,
                  connect=None, initialize_tpu_system=None, devices=None):
    """Create the strategy of ``kind``.

    Args:
        kind: from :func:`strategy_kind`.
        tpu: the TPU address or name (``kind == "tpu"``).
        tpu_resolver_factory: builds the cluster resolver from ``tpu``
            (default ``tf.distribute.cluster_resolver.TPUClusterResolver``).
        tpu_strategy_factory: builds the strategy from the resolver
            (default ``tf.distribute.TPUStrategy``).
        connect, initialize_tpu_system: called with the resolver before the
            strategy is built (defaults ``tf.config.experimental_connect_to_cluster``
            and ``tf.tpu.experimental.initialize_tpu_system``).
        devices: devices of a ``MirroredStrategy`` (default: all GPUs).

    Example:
        >>> strategy = make_strategy("default")
    """
    import tensorflow as tf
    if kind == "tpu":
        if not tpu:
            raise ValueError("a TPU strategy needs the TPU address or name (--tpu)")
        resolver_factory = (tpu_resolver_factory
                            or tf.distribute.cluster_resolver.TPUClusterResolver)
        resolver = resolver_factory(tpu="" if tpu == "local" else tpu)
        (connect or tf.config.experimental_connect_to_cluster)(resolver)
        (initialize_tpu_system or tf.tpu.experimental.initialize_tpu_system)(resolver)
        return (tpu_strategy_factory or tf.distribute.TPUStrategy)(resolver)
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if kind == "default":
        return tf.distribute.get_strategy()
    raise ValueError(f"unknown strategy kind {kind!r}; expected one of {STRATEGY_KINDS}")


def select_strategy(tpu=None, environ=None, **factories):
    """:func:`strategy_kind` on this process's environment, then :func:`make_strategy`.

    Returns:
        ``(kind, strategy)``.
    """
    import tensorflow as tf
    environ = os.environ if environ is None else environ
    kind = strategy_kind(tpu=tpu, tf_config=environ.get("TF_CONFIG"),
                         num_gpus=len(tf.config.list_physical_devices("GPU")))
    return kind, make_strategy(kind, tpu=tpu, **factories)


def is_chief(strategy):
    """True on the worker that logs, exports and writes the real checkpoints."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    cluster = resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and "chief" not in cluster
