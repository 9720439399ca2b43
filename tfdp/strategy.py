"""`create_strategy`: a strategy name -> a ready `tf.distribute.Strategy`.

Everything that can be checked without TensorFlow (names, numbers, TF_CONFIG) is
checked first, so a mistake costs a clear `ConfigError`, not a half-started runtime.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import socket
import zlib
from collections.abc import Sequence

from typing import TYPE_CHECKING

from tfdp import _compat, parameter_server, stacks
from tfdp.startup import StartupWatchdog
from tfdp.strategy_names import COMMUNICATIONS, STRATEGY_NAMES
from tfdp import cluster as cluster_lib
from tfdp.roles import is_chief, num_workers
from tfdp._requirements import import_tensorflow
from tfdp.errors import ConfigError, check_choice, check_whole

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["create_strategy", "is_chief", "num_workers", "STRATEGY_NAMES", "COMMUNICATIONS"]

# Bounds every collective of a multi_worker strategy unless the caller says otherwise,
# so a worker that is alive but stuck ends the job instead of hanging its peers.
DEFAULT_MULTI_WORKER_TIMEOUT_SECONDS = 300.0
# Bounds waiting for every task of TF_CONFIG to start (a scheduler may start them minutes apart).
DEFAULT_STARTUP_TIMEOUT_SECONDS = 300.0

logger = logging.getLogger("tfdp")

_ORDERING_RULE = (
    "Fix: call tfdp.create_strategy(...) at the start of the program, before any other "
    "TensorFlow or Keras call creates a tensor, a model or a device list (TensorFlow fixes "
    "its devices and collective runtime the first time it runs anything).")


def _check_seconds(field: str, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real) or value <= 0):
        raise ConfigError(f"create_strategy({field}={value!r}): must be a number of seconds > 0, or None "
                          "for the default.")


def _check_arguments(name: str, num_cpu_replicas: int | None, devices: Sequence[str] | None,
                     communication: str, timeout_seconds: float | None,
                     startup_timeout_seconds: float | None, variable_shards: int | None) -> None:
    check_choice("create_strategy(name)", name, STRATEGY_NAMES)
    check_choice("create_strategy(communication)", communication, COMMUNICATIONS)
    check_whole("num_cpu_replicas", num_cpu_replicas, call="create_strategy", allow_none=True,
                meaning="None uses the devices as they are")
    if devices is not None and (isinstance(devices, str) or not devices
                                or not all(isinstance(d, str) for d in devices)):
        raise ConfigError(f"create_strategy(devices={devices!r}): must be a non-empty list of device "
                          'names such as ["/gpu:0", "/gpu:1"].')
    if devices is not None and num_cpu_replicas is not None:
        raise ConfigError("create_strategy: give devices or num_cpu_replicas, not both "
                          "(num_cpu_replicas=N already means devices /cpu:0 ... /cpu:N-1).")
    _check_seconds("timeout_seconds", timeout_seconds)
    _check_seconds("startup_timeout_seconds", startup_timeout_seconds)
    check_whole("variable_shards", variable_shards, call="create_strategy", allow_none=True)
    if variable_shards is not None and name not in ("auto", "parameter_server"):
        raise ConfigError(f'create_strategy("{name}", variable_shards={variable_shards}): variables are sharded '
                          'over ps tasks, so only "parameter_server" takes it.')
    if name == "one_device" and devices is not None and len(devices) != 1:
        raise ConfigError(f'create_strategy("one_device", devices={list(devices)}): takes exactly one '
                          'device; use "mirrored" for several.')
    if name == "one_device" and num_cpu_replicas not in (None, 1):
        raise ConfigError(f'create_strategy("one_device", num_cpu_replicas={num_cpu_replicas}): one '
                          'device is one replica; use "mirrored" for several CPU replicas.')
    if name == "parameter_server" and (num_cpu_replicas is not None or devices is not None):
        raise ConfigError('create_strategy("parameter_server"): the workers compute on their own devices; '
                          "num_cpu_replicas and devices apply to \"mirrored\". Start more workers instead "
                          "(tfdp-launch --num_workers N --num_ps P).")
    if name == "multi_worker" and (num_cpu_replicas not in (None, 1) or devices is not None):
        raise ConfigError('create_strategy("multi_worker"): each worker trains on its own GPUs, or on '
                          "one CPU replica when it has none; num_cpu_replicas and devices apply to "
                          '"mirrored". Start more workers for more CPU replicas (tfdp-launch --num_workers N).')


def configure_cpu_replicas(count: int) -> None:
    """Splits the physical CPU into `count` logical devices (once, before TF starts)."""
    tf = import_tensorflow()
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        raise ConfigError(
            f"create_strategy(num_cpu_replicas={count}): TensorFlow has already started with {have} "
            f"CPU device(s), and the CPU can be split into replicas only before it starts. "
            + _ORDERING_RULE) from None


def _resolve_name(name: str, tf_config: cluster_lib.TFConfig | None,
                  num_cpu_replicas: int | None, devices: Sequence[str] | None) -> str:
    if name != "auto":
        return name
    if tf_config is not None and tf_config.cluster.get("ps"):
        return "parameter_server"
    if tf_config is not None and tf_config.num_tasks > 1:
        return "multi_worker"
    if (num_cpu_replicas or 1) > 1 or (devices is not None and len(devices) > 1):
        return "mirrored"
    tf = import_tensorflow()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


def _mirrored_cross_device_ops(communication: str, has_gpus: bool):
    tf = import_tensorflow()
    if communication == "nccl":
        if not has_gpus:
            raise ConfigError('create_strategy(communication="nccl"): NCCL needs GPUs and none was '
                              'found; use communication="auto" or "ring".')
        return tf.distribute.NcclAllReduce()
    if communication == "ring" and has_gpus:
        return tf.distribute.HierarchicalCopyAllReduce()
    return None  # TensorFlow's choice: ring collectives on CPUs, NCCL on GPUs.


def _on_this_host(address: str) -> bool:
    """Whether a host:port names one of this machine's own network interfaces."""
    host = address.rpartition(":")[0].strip("[]")
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.bind((sockaddr[0], 0))  # only an address of this machine can be bound
            return True
        except OSError:
            continue
    return False


def warn_about_remote_addresses(tf_config: cluster_lib.TFConfig) -> None:
    """Warns when the cluster is reachable from a network: TF's gRPC has no authentication."""
    non_local = tf_config.non_loopback_addresses()
    if not non_local:
        return
    if all(_on_this_host(address) for address in non_local):  # e.g. Ray on one machine
        logger.warning(
            "TF_CONFIG names this machine's own network address(es) (%s), not loopback: every "
            "worker is on this host, but their TensorFlow gRPC servers (unauthenticated, "
            "unencrypted) are reachable from the network it is on. Run on an isolated network.",
            ", ".join(non_local))
        return
    logger.warning(
        "TF_CONFIG names addresses beyond this machine (%s). TensorFlow's gRPC runtime is "
        "unauthenticated and unencrypted: run the cluster on an isolated network.",
        ", ".join(non_local))


def _agree_on_random_seed(tf_config: cluster_lib.TFConfig | None) -> None:
    """Gives every worker the same global seed unless the user set one.

    Unseeded random ops (a dataset's `shuffle()` above all) then draw the same numbers on
    every worker, as they are created in the same order by the same program: sharding
    by DATA sees every example exactly once, and `reshuffle_each_iteration` still gives a
    new order each epoch. The seed comes from TFDP_SEED (tfdp-launch sets a fresh one per
    job), else from the cluster's addresses.
    """
    tf = import_tensorflow()
    if tf_config is None or _compat.global_seed() is not None:
        return
    seed = os.environ.get(cluster_lib.SEED_ENV)
    if seed is None or not seed.isdigit():
        seed = zlib.crc32(json.dumps(tf_config.cluster, sort_keys=True).encode())
    tf.random.set_seed(int(seed))


def _multi_worker(tf_config: cluster_lib.TFConfig | None, communication: str,
                  timeout_seconds: float | None, startup_timeout_seconds: float | None):
    tf = import_tensorflow()
    if tf_config is not None:
        extra = [job for job in tf_config.cluster if job not in (*cluster_lib.TRAINING_TASK_TYPES, "evaluator")]
        if extra:
            raise ConfigError(f'TF_CONFIG cluster has job(s) {extra}, which "multi_worker" '
                              '(MultiWorkerMirroredStrategy) does not use. Fix: list only "chief", '
                              '"worker" and "evaluator" tasks (a "ps" job is for "parameter_server").')
        warn_about_remote_addresses(tf_config)
    implementation = {
        "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
        "ring": tf.distribute.experimental.CommunicationImplementation.RING,
        "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
    }[communication]
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=implementation,
        timeout_seconds=DEFAULT_MULTI_WORKER_TIMEOUT_SECONDS if timeout_seconds is None
        else float(timeout_seconds))
    if tf_config is None:
        return _make_multi_worker(options)
    watchdog = StartupWatchdog(tf_config, seconds=startup_timeout_seconds or DEFAULT_STARTUP_TIMEOUT_SECONDS)
    with watchdog:
        try:
            return _make_multi_worker(options)
        except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError):
            raise watchdog.error() from None


def _make_multi_worker(options) -> tf.distribute.Strategy:
    tf = import_tensorflow()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except RuntimeError as e:
        if "must be configured at program startup" not in str(e):
            raise
        raise ConfigError('create_strategy("multi_worker"): TensorFlow was already running when the '
                          "strategy was created, and its collective runtime can be set up only at "
                          "start-up. " + _ORDERING_RULE) from None


def create_strategy(name: str = "auto", *, num_cpu_replicas: int | None = None,
                    devices: Sequence[str] | None = None, communication: str = "auto",
                    timeout_seconds: float | None = None,
                    startup_timeout_seconds: float | None = None,
                    variable_shards: int | None = None,
                    min_shard_bytes: int = 256 << 10) -> tf.distribute.Strategy:
    """Creates a `tf.distribute.Strategy` by name.

    Call it first thing in the program: it may split the CPU into logical devices or
    start the multi-worker runtime, which TensorFlow allows only before it runs anything.
    The arguments and TF_CONFIG are checked before TensorFlow is imported, so a mistake
    is a ConfigError in well under a second.

    Args:
        name: "auto" (multi_worker when the cluster, read from TF_CONFIG or failing that
            from a Kubernetes Indexed Job's variables, names more than one task, mirrored when
            several replicas are asked for or there are several GPUs, else default),
            "default", "one_device", "mirrored", "multi_worker" or "parameter_server"
            (TF_CONFIG with a chief, workers and ps tasks: on the chief a
            ParameterServerStrategy for tfdp.Trainer; on a worker or ps task this call
            serves the chief and ends the process when the chief has ended). "auto"
            picks "parameter_server" when TF_CONFIG has a "ps" job.
        num_cpu_replicas: split the CPU into this many logical devices and use them as
            replicas (for laptops and CI without GPUs). None uses the devices as they are.
        devices: explicit device names for "mirrored" or "one_device".
        communication: "auto", "ring" or "nccl": how gradients are all-reduced.
        timeout_seconds: bounds every multi-worker collective, so a stuck worker ends the
            job; None means 300 s for "multi_worker". Single-process strategies cannot
            lose a peer and ignore it.
        startup_timeout_seconds: bounds waiting for every task of TF_CONFIG to start
            ("multi_worker"); None means 300 s. When it passes, tfdp prints which tasks
            never answered and ends the process with SIGKILL (TensorFlow waits holding
            the GIL, so nothing gentler can interrupt it). For "parameter_server", how
            long a worker or ps task waits for the chief.
        variable_shards: "parameter_server": split each variable larger than
            `min_shard_bytes` into up to this many shards over the ps tasks (large
            embedding tables); None keeps every variable whole on one ps task.
        min_shard_bytes: the smallest shard `variable_shards` makes.

    Returns:
        The strategy; build and compile models inside `strategy.scope()`. The repairs
        of `tfdp.keras_fixes` are installed, so Keras's own fit/evaluate/predict are
        correct in that scope.

    Raises:
        ConfigError: a bad argument or TF_CONFIG, or a call after TensorFlow started.
    """
    _check_arguments(name, num_cpu_replicas, devices, communication, timeout_seconds,
                     startup_timeout_seconds, variable_shards)
    tf_config = cluster_lib.TFConfig.from_env()
    if tf_config is not None:  # what TensorFlow reads: "master" as "chief", Kubernetes' cluster
        os.environ[cluster_lib.ENV_VAR] = tf_config.to_json()
    resolved = _resolve_name(name, tf_config, num_cpu_replicas, devices)
    if resolved == "parameter_server":
        tf_config = parameter_server.check_cluster(tf_config)
        os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")  # a lost worker fails its steps at once (TF's advice)
    # TensorFlow (seconds to import) only now that the arguments and TF_CONFIG are right.
    tf = import_tensorflow()
    from tfdp import keras_fixes, preemption

    if num_cpu_replicas is not None:
        configure_cpu_replicas(num_cpu_replicas)
    has_gpus = bool(tf.config.list_physical_devices("GPU"))

    if resolved == "parameter_server":
        preemption.restore_default_sigterm()
        startup = startup_timeout_seconds or DEFAULT_STARTUP_TIMEOUT_SECONDS
        if tf_config.task_type in ("worker", "ps"):
            parameter_server.serve(tf_config, startup_timeout_seconds=startup)  # ends the process
        warn_about_remote_addresses(tf_config)
        with StartupWatchdog(tf_config, seconds=startup):
            strategy = parameter_server.make_strategy(
                min_shard_bytes=min_shard_bytes if variable_shards else None, max_shards=variable_shards)
        stacks.enable_dump_on_signal()
    elif resolved == "multi_worker":
        strategy = _multi_worker(tf_config, communication, timeout_seconds, startup_timeout_seconds)
        _agree_on_random_seed(tf_config)
        preemption.restore_default_sigterm()
        stacks.enable_dump_on_signal()
    elif resolved == "mirrored":
        if devices is None and not has_gpus:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        keras_fixes.use_fresh_collective_keys()
        strategy = tf.distribute.MirroredStrategy(
            devices=devices, cross_device_ops=_mirrored_cross_device_ops(communication, has_gpus))
    elif resolved == "one_device":
        strategy = tf.distribute.OneDeviceStrategy(
            devices[0] if devices else ("/gpu:0" if has_gpus else "/cpu:0"))
    else:
        strategy = tf.distribute.get_strategy()

    keras_fixes.install()
    if is_chief(strategy):
        logger.info("tfdp: %s strategy (%s), %d replica(s) in sync, %d worker(s), devices %s, "
                    "communication %s", resolved, type(strategy).__name__,
                    strategy.num_replicas_in_sync, num_workers(strategy),
                    _device_names(resolved, strategy), communication)
    return strategy


def _device_names(resolved: str, strategy: tf.distribute.Strategy) -> str:
    if resolved == "default":  # The default strategy has no device list of its own.
        return "TensorFlow's default placement"
    return ", ".join(strategy.extended.worker_devices)
