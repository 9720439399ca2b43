"""create_strategy("parameter_server"): the chief coordinates, the workers and ps tasks serve.

One program runs on every task of a cluster with a chief, workers and ps tasks. On the
chief, `create_strategy` returns a `tf.distribute.ParameterServerStrategy` (variables
live on the ps tasks, round-robin or sharded; `tfdp.Trainer` schedules the steps on the
workers through a ClusterCoordinator). On a worker or ps task it starts the task's
TensorFlow server and never returns: the task serves the chief until the chief's job is
over — the chief's process ended, so its address stops accepting connections — and then
the process exits with status 0. So the same program ends by itself on every task, with
or without tfdp-launch (a Kubernetes Indexed Job, SLURM).
"""

from __future__ import annotations

import os
import socket
import sys
import time

from tfdp import cluster as cluster_lib
from tfdp.errors import ConfigError

PROBE_SECONDS = 0.5  # how often a serving task checks that the chief is still there
GONE_AFTER_MISSES = 3  # consecutive refused connections that mean the chief has ended


def check_cluster(tf_config: cluster_lib.TFConfig | None) -> cluster_lib.TFConfig:
    """The cluster, checked for what a parameter-server job needs: a chief, workers, ps tasks."""
    if tf_config is None:
        raise ConfigError('create_strategy("parameter_server"): no cluster (TF_CONFIG is unset). Fix: start the job '
                          "with tfdp-launch --num_workers N --num_ps P, or give every task a TF_CONFIG naming a "
                          '"chief", "worker" and "ps" job.')
    missing = [job for job in ("chief", "worker", "ps") if not tf_config.cluster.get(job)]
    if missing:
        raise ConfigError(f'create_strategy("parameter_server"): TF_CONFIG has no {" and no ".join(map(repr, missing))} '
                          'task: a parameter-server job needs a "chief" (it runs the training loop), "worker" '
                          'tasks (they compute) and "ps" tasks (they hold the variables). Fix: tfdp-launch '
                          "--num_workers N --num_ps P builds such a TF_CONFIG.")
    if tf_config.task_type == "evaluator":
        raise ConfigError('create_strategy("parameter_server"): this task is an "evaluator"; evaluate with '
                          'create_strategy("default") there (it reads the checkpoints the chief writes).')
    return tf_config


def _accepts(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except OSError:
        return False


def serve(tf_config: cluster_lib.TFConfig, *, startup_timeout_seconds: float) -> None:
    """Runs this worker or ps task's server until the chief has come and gone; exits the process."""
    import tensorflow as tf

    name = f"{tf_config.task_type} {tf_config.task_index}"
    tf.distribute.Server(tf.train.ClusterSpec(tf_config.cluster), job_name=tf_config.task_type,
                         task_index=tf_config.task_index, protocol=tf_config.rpc_layer or "grpc", start=True)
    chief = tf_config.cluster["chief"][0]
    deadline = time.monotonic() + startup_timeout_seconds
    while not _accepts(chief):
        if time.monotonic() > deadline:
            print(f"tfdp: {name}: the chief ({chief}) never accepted a connection within {startup_timeout_seconds:g} "
                  "s; exiting. Fix: start the chief, or raise startup_timeout_seconds.", file=sys.stderr, flush=True)
            os._exit(1)
        time.sleep(PROBE_SECONDS)
    print(f"tfdp: {name} serving the chief at {chief} (pid {os.getpid()})", flush=True)
    misses = 0
    while misses < GONE_AFTER_MISSES:
        time.sleep(PROBE_SECONDS)
        misses = 0 if _accepts(chief) else misses + 1
    print(f"tfdp: {name}: the chief has ended; exiting", flush=True)
    sys.stderr.flush()
    os._exit(0)  # TensorFlow's server threads would keep a normal interpreter exit waiting


def make_strategy(*, min_shard_bytes: int | None, max_shards: int | None):
    """The chief's ParameterServerStrategy, variables sharded over the ps tasks when asked."""
    import tensorflow as tf

    partitioner = None
    if min_shard_bytes is not None or max_shards is not None:
        partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=min_shard_bytes or 256 << 10, max_shards=max_shards or 1)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return tf.distribute.experimental.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
