"""create_strategy: names -> the right tf.distribute strategy; bad input -> ConfigError."""

import json
import logging
import signal
import time

import pytest
import tensorflow as tf

import tfdp
from tests.conftest import NUM_TEST_REPLICAS
from tests.workers import run_python, run_workers


@pytest.fixture(autouse=True)
def no_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)


def test_mirrored_on_cpu_replicas_has_one_replica_per_logical_cpu(caplog):
    with caplog.at_level(logging.INFO, logger="tfdp"):
        strategy = tfdp.create_strategy("mirrored", num_cpu_replicas=NUM_TEST_REPLICAS)
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 2
    assert [r.getMessage() for r in caplog.records if "tfdp: mirrored" in r.getMessage()]
    # The replicas really reduce: each contributes its replica id.
    result = strategy.run(lambda: tf.distribute.get_replica_context().replica_id_in_sync_group)
    assert int(strategy.reduce("SUM", result, axis=None)) == 0 + 1


def test_auto_picks_mirrored_for_several_cpu_replicas_and_default_otherwise():
    assert isinstance(tfdp.create_strategy(num_cpu_replicas=NUM_TEST_REPLICAS), tf.distribute.MirroredStrategy)
    default = tfdp.create_strategy("auto")
    assert default is tf.distribute.get_strategy() and default.num_replicas_in_sync == 1


def test_one_device_and_default():
    one = tfdp.create_strategy("one_device", devices=["/cpu:1"])
    assert isinstance(one, tf.distribute.OneDeviceStrategy) and one.num_replicas_in_sync == 1
    assert one.extended.worker_devices == ("/job:localhost/replica:0/task:0/device:CPU:1",)
    assert tfdp.create_strategy("default").num_replicas_in_sync == 1


def test_multi_worker_without_tf_config_is_one_local_worker():
    strategy = tfdp.create_strategy("multi_worker")
    assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    assert strategy.num_replicas_in_sync == 1 and tfdp.is_chief(strategy)


BAD_ARGUMENTS = {
    "unknown name": (dict(name="mirored"), ["create_strategy(name)", 'Did you mean "mirrored"']),
    "unknown name far": (dict(name="tpu"), ["'tpu' is not one of", "multi_worker"]),
    "zero replicas": (dict(num_cpu_replicas=0), ["num_cpu_replicas=0", ">= 1"]),
    "bool replicas": (dict(num_cpu_replicas=True), ["num_cpu_replicas=True"]),
    "float replicas": (dict(num_cpu_replicas=2.0), ["num_cpu_replicas=2.0", "whole number"]),
    "unknown communication": (dict(communication="nccl2"), ["create_strategy(communication)", 'Did you mean "nccl"']),
    "nccl without gpu": (dict(name="mirrored", communication="nccl"), ["NCCL needs GPUs"]),
    "bad timeout": (dict(name="multi_worker", timeout_seconds=0), ["timeout_seconds=0", "> 0"]),
    "devices a string": (dict(name="mirrored", devices="/cpu:0"), ["devices='/cpu:0'", "list of device"]),
    "devices and replicas": (dict(name="mirrored", devices=["/cpu:0"], num_cpu_replicas=2), ["not both"]),
    "one_device two devices": (dict(name="one_device", devices=["/cpu:0", "/cpu:1"]), ["exactly one", '"mirrored"']),
    "one_device replicas": (dict(name="one_device", num_cpu_replicas=2), ['"mirrored" for several']),
    "multi_worker replicas": (dict(name="multi_worker", num_cpu_replicas=2), ["tfdp-launch --num_workers"]),
    "replicas after start": (dict(name="mirrored", num_cpu_replicas=3), ["already started with 2 CPU", "at the start of the program"]),
}


@pytest.mark.parametrize("kwargs,expected", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bad_arguments_raise_config_error(kwargs, expected):
    with pytest.raises(tfdp.ConfigError) as raised:
        tfdp.create_strategy(**kwargs)
    for part in expected:
        assert part in str(raised.value), str(raised.value)


def test_multi_worker_after_tensorflow_started_explains_the_ordering(monkeypatch):
    tf.constant(1.0)  # TensorFlow is running in this process.
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}))
    with pytest.raises(tfdp.ConfigError, match="already running.*at the start of the program"):
        tfdp.create_strategy("auto")


def test_parameter_server_jobs_are_refused_by_multi_worker(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"worker": ["127.0.0.1:1"], "ps": ["127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}))
    with pytest.raises(tfdp.ConfigError, match=r"job\(s\) \['ps'\]"):
        tfdp.create_strategy("multi_worker")
    with pytest.raises(tfdp.ConfigError, match="parameter_server.*TF_CONFIG has no 'chief' task"):
        tfdp.create_strategy("auto")  # a ps job means parameter servers


def test_is_chief_outside_a_scope_reads_tf_config(monkeypatch):
    assert tfdp.is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}))
    assert not tfdp.is_chief()


def test_bad_tf_config_fails_before_tensorflow_starts():
    result = run_python("""
        import json, os
        import tfdp
        from tensorflow.python.eager import context
        cases = {
            "bad json": "{cluster",
            "index out of range": json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}),
            "no port": json.dumps({"cluster": {"worker": ["127.0.0.1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}),
        }
        for name, text in cases.items():
            os.environ["TF_CONFIG"] = text
            for strategy_name in ("auto", "multi_worker"):
                try:
                    tfdp.create_strategy(strategy_name)
                    print("NO ERROR", name)
                except tfdp.ConfigError as e:
                    print("ConfigError", name, "|", e)
        print("CONTEXT STARTED", context.context()._context_handle is not None)
    """, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "NO ERROR" not in result.stdout
    assert result.stdout.count("ConfigError") == 6
    assert "CONTEXT STARTED False" in result.stdout


def test_num_cpu_replicas_in_a_fresh_process():
    result = run_python("""
        import tfdp
        for n in (3, 3):  # the second call with the same count is accepted
            s = tfdp.create_strategy(num_cpu_replicas=n)
        print("REPLICAS", s.num_replicas_in_sync, type(s).__name__)
    """, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "REPLICAS 3 MirroredStrategy" in result.stdout


WORKER = """
import json, tensorflow as tf, tfdp
strategy = tfdp.create_strategy()  # "auto": TF_CONFIG names two tasks
total = strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
print("RESULT " + json.dumps({"mwms": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy), "replicas": strategy.num_replicas_in_sync,
                              "chief": tfdp.is_chief(strategy), "total": float(total)}))
"""


def test_multi_worker_from_tf_config_in_two_processes():
    results = run_workers(WORKER, num_workers=2, timeout=120)
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    reports = [r.json_lines()[0] for r in results]
    assert [rep["mwms"] for rep in reports] == [True, True]
    assert [rep["replicas"] for rep in reports] == [2, 2]
    assert [rep["chief"] for rep in reports] == [True, False]
    assert [rep["total"] for rep in reports] == [2.0, 2.0]  # one from each worker


def test_a_second_mirrored_strategy_does_not_reuse_collective_keys():
    # Without fresh keys the runtime matches the second strategy's all-reduce with the
    # first one's cached shape: "Shape mismatch in the collective instance".
    result = run_python("""
        import tensorflow as tf, tfdp
        for size in (3, 5):
            strategy = tfdp.create_strategy("mirrored", num_cpu_replicas=2)
            value = strategy.run(tf.function(lambda: tf.distribute.get_replica_context().all_reduce(
                "SUM", tf.ones([size]))))
            print("SUM", strategy.experimental_local_results(value)[0].numpy().tolist())
    """, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SUM [2.0, 2.0, 2.0]" in result.stdout and "SUM [2.0, 2.0, 2.0, 2.0, 2.0]" in result.stdout


def test_remote_addresses_get_a_security_warning(caplog):
    from tfdp.cluster import TFConfig
    from tfdp.strategy import warn_about_remote_addresses

    remote = TFConfig.from_dict({"cluster": {"worker": ["127.0.0.1:1", "10.1.2.3:2222"]},
                                 "task": {"type": "worker", "index": 0}})
    with caplog.at_level(logging.WARNING, logger="tfdp"):
        warn_about_remote_addresses(TFConfig.local_workers([1, 2], 0))
        assert not caplog.records
        warn_about_remote_addresses(remote)
    assert "10.1.2.3:2222" in caplog.text and "isolated network" in caplog.text


STARTUP_WORKER = """
import sys, time, tfdp
start = time.monotonic()
try:
    tfdp.create_strategy("multi_worker", startup_timeout_seconds=8)
except tfdp.ConfigError as e:  # TensorFlow gave up first
    print(f"CONFIG_ERROR after {time.monotonic() - start:.0f} s: {e}", file=sys.stderr)
    sys.exit(3)
print("made a strategy without its peer")
"""


@pytest.mark.parametrize("alone", [0, 1])  # the coordination leader, and a task waiting for the leader
def test_a_peer_that_never_starts_ends_start_up_in_the_timeout_naming_its_address(alone):
    from tfdp.launch import free_ports
    ports = free_ports(2)
    tf_config = tfdp.cluster.TFConfig.local_workers(ports, alone)
    started = time.monotonic()
    result = run_python(STARTUP_WORKER, env={"TF_CONFIG": tf_config.to_json()}, timeout=120)
    assert time.monotonic() - started < 60
    missing = f"worker {1 - alone} (127.0.0.1:{ports[1 - alone]}) never accepted a connection"
    assert result.returncode in (3, -signal.SIGKILL), result.stderr[-3000:]  # SIGKILL: from the watchdog
    assert missing in result.stderr and "startup_timeout_seconds" in result.stderr
    assert "made a strategy" not in result.stdout


def test_a_google_cloud_tf_config_with_an_evaluator_builds_multi_worker_from_auto():
    """chief + 2 workers with Cloud's extra keys, and a side evaluator that trains with nobody."""
    from tfdp.launch import free_ports
    from tests.workers import run_processes
    ports = [f"127.0.0.1:{p}" for p in free_ports(4)]
    cluster = {"chief": ports[:1], "worker": ports[1:3], "evaluator": ports[3:]}
    tasks = [("chief", 0), ("worker", 0), ("worker", 1), ("evaluator", 0)]
    envs = [{"TF_CONFIG": json.dumps({"cluster": cluster, "environment": "cloud", "job": {"scale_tier": "CUSTOM"},
                                      "task": {"type": job, "index": index, "trial": "", "cloud": "x-ml"}})}
            for job, index in tasks]
    results = run_processes([WORKER] * 4, envs=envs, timeout=180)
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    reports = [r.json_lines()[0] for r in results]
    assert [rep["mwms"] for rep in reports] == [True] * 4
    assert [rep["total"] for rep in reports] == [3.0, 3.0, 3.0, 1.0]  # the evaluator is not in the all-reduce
    assert [rep["chief"] for rep in reports] == [True, False, False, True]  # an evaluator writes its own files


def test_a_task_whose_own_address_does_not_resolve_is_told_so_within_the_timeout():
    """A Kubernetes pod template naming a Service that does not exist: TensorFlow would wait forever."""
    env = {"JOB_COMPLETION_INDEX": "0", "TFDP_K8S_WORKERS": "1", "TFDP_K8S_JOB": "train",
           "TFDP_K8S_SERVICE": "no-such-service"}
    started = time.monotonic()
    result = run_python(STARTUP_WORKER, env=env, timeout=120)
    assert time.monotonic() - started < 60
    assert result.returncode in (3, -signal.SIGKILL), result.stderr[-3000:]
    assert "this task's own address train-0.no-such-service:12345 does not resolve" in result.stderr
