"""Devices and the ``tf.distribute`` strategy: the only place that decides where training runs.

* ``mirrored``: synchronous data parallelism over the local GPUs (or, without GPUs, ``runtime.replicas``
  logical CPU devices, so the multi-replica path runs and is tested on any machine).
* ``central_storage``: the same, but variables live on one device (the paper kept them on GPU 0).
* ``multi_worker``: ``MultiWorkerMirroredStrategy`` across machines, from ``TF_CONFIG`` or a SLURM
  allocation; every worker runs the same command.
* ``one_device``: one GPU, or the CPU.
* ``auto``: ``multi_worker`` when ``TF_CONFIG``/SLURM describe more than one task, ``mirrored`` when
  there are several devices, else ``one_device``.

Devices must be configured before TensorFlow creates its context: call :func:`make_strategy` first.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

from asr.config import RuntimeConfig


class StrategyError(RuntimeError):
    """A device request this machine cannot satisfy; the message names the setting."""


@dataclass(frozen=True)
class Cluster:
    """Where this process sits among the training workers."""

    workers: int
    task_index: int

    @property
    def is_chief(self) -> bool:
        """Worker 0 writes checkpoints, summaries and the event log; the others write to scratch."""
        return self.task_index == 0


def cluster_from_environment(env: dict[str, str] | None = None) -> Cluster:
    """Workers and this task's index from ``TF_CONFIG`` or SLURM (``SLURM_NTASKS``/``SLURM_PROCID``)."""
    env = dict(os.environ if env is None else env)
    raw = env.get("TF_CONFIG")
    if raw:
        try:
            config = json.loads(raw)
            workers = len(config.get("cluster", {}).get("worker", [])) + len(
                config.get("cluster", {}).get("chief", [])
            )
            task = config.get("task", {})
            index = int(task.get("index", 0))
            if task.get("type") == "worker" and config.get("cluster", {}).get("chief"):
                index += 1
            return Cluster(max(workers, 1), index)
        except (ValueError, AttributeError, TypeError) as error:
            raise StrategyError(f"TF_CONFIG: not a valid cluster description ({error})") from None
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return Cluster(int(env["SLURM_NTASKS"]), int(env.get("SLURM_PROCID", "0")))
    return Cluster(1, 0)


def _configure_devices(runtime: RuntimeConfig) -> tuple[list[str], str]:
    """Device names to replicate over and their kind ("GPU" or "CPU"); splits the CPU when asked."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        for gpu in gpus:
            with contextlib.suppress(RuntimeError):
                tf.config.experimental.set_memory_growth(gpu, True)
        wanted = runtime.replicas or len(gpus)
        if wanted > len(gpus):
            raise StrategyError(f"runtime.replicas: {wanted} requested but this machine has {len(gpus)} GPUs")
        return [f"/gpu:{i}" for i in range(wanted)], "GPU"
    wanted = max(runtime.replicas, 1)
    cpus = tf.config.list_physical_devices("CPU")
    if wanted > 1:
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(wanted)]
            )
        except RuntimeError:
            if len(tf.config.list_logical_devices("CPU")) < wanted:
                raise StrategyError(
                    f"runtime.replicas: {wanted} CPU replicas requested after TensorFlow started with fewer"
                ) from None
    return [f"/cpu:{i}" for i in range(wanted)], "CPU"


def make_strategy(runtime: RuntimeConfig, env: dict[str, str] | None = None):
    """The ``tf.distribute.Strategy`` the recipe asks for; also sets numerics (precision, XLA)."""
    import keras
    import tensorflow as tf

    cluster = cluster_from_environment(env)
    kind = runtime.strategy
    if kind == "auto":
        kind = "multi_worker" if cluster.workers > 1 else None
    if kind == "multi_worker":
        environment = dict(os.environ if env is None else env)
        resolver = None
        if not environment.get("TF_CONFIG") and int(environment.get("SLURM_NTASKS", "1") or 1) > 1:
            resolver = tf.distribute.cluster_resolver.SlurmClusterResolver()
        communication = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver, communication_options=communication
        )
    else:
        devices, device_kind = _configure_devices(runtime)
        if kind is None:
            kind = "mirrored" if len(devices) > 1 else "one_device"
        if kind == "one_device":
            if len(devices) > 1 and runtime.replicas > 1:
                raise StrategyError(
                    f"runtime.strategy: one_device cannot use runtime.replicas={runtime.replicas}"
                )
            strategy = tf.distribute.OneDeviceStrategy(devices[0])
        elif kind == "mirrored":
            cross = None if device_kind == "GPU" else tf.distribute.ReductionToOneDevice()
            strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=cross)
        elif kind == "central_storage":
            strategy = tf.distribute.experimental.CentralStorageStrategy(
                compute_devices=devices, parameter_device=devices[0]
            )
        else:
            raise StrategyError(f"runtime.strategy: unknown strategy {runtime.strategy!r}")
    if runtime.mixed_precision != "float32":
        keras.mixed_precision.set_global_policy(f"mixed_{runtime.mixed_precision}")
    else:
        keras.mixed_precision.set_global_policy("float32")
    return strategy


def describe(strategy) -> str:
    """One line: strategy class, replicas and their devices."""
    extended = strategy.extended
    devices = getattr(extended, "worker_devices", None) or ()
    return f"{type(strategy).__name__}: {strategy.num_replicas_in_sync} replica(s)" + (
        f" on {', '.join(devices)}" if devices else ""
    )
