"""Asynchronous training on parameter servers: a real chief, workers and ps tasks on 127.0.0.1.

Equivalence: with one worker and max_staleness=0 every step is applied to the weights the
previous step left, so Trainer.fit equals an independent one-device loop (GradientTape and
the same Keras optimizer) over the same batches in the same order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import keras
import tensorflow as tf

import tfdp
from tests.models import OPTIMIZERS, dict_data, dict_model
from tests.workers import ROOT, _env, _lines_with, run_processes
from tfdp.cluster import TFConfig
from tfdp.launch import free_ports

LAUNCH = [sys.executable, "-m", "tfdp.launch"]
BATCH, STEPS, EPOCHS, EXAMPLES = 8, 5, 2, 44  # 44 examples: the repeated data ends mid-batch every 5.5 steps

# The chief's program (every task runs it; workers and ps serve inside create_strategy).
CHIEF = """
import json, os, sys
import numpy as np, keras, tensorflow as tf, tfdp
from tests.models import OPTIMIZERS, dict_data, dict_model
strategy = tfdp.create_strategy("parameter_server")
options = json.loads(os.environ.get("OPTIONS", "{}"))
keras.utils.set_random_seed(7)
with strategy.scope():
    model = dict_model()
x, y = dict_data(options.get("examples", 44))
data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8)
trainer = tfdp.Trainer(model, optimizer=OPTIMIZERS[options.get("optimizer", "adam")](), loss="mse",
                       strategy=strategy, max_staleness=options.get("max_staleness"),
                       clip_global_norm=options.get("clip"), steps_per_loop=options.get("steps_per_loop", 1),
                       model_dir=options.get("model_dir"))
history = trainer.fit(data, epochs=options.get("epochs", 2), steps_per_epoch=options.get("steps", 5), verbose=2)
print("RESULT " + json.dumps({"weights": [w.tolist() for w in model.get_weights()],
                              "iterations": int(trainer.optimizer.iterations.numpy()),
                              "loss": history.history["loss"]}), flush=True)
"""


def launch(args, *, env=None, timeout=240):
    return subprocess.run([*LAUNCH, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=_env({"TFDP_CONSOLE": "all", **(env or {})}))


def reference(optimizer: str, *, steps: int, clip=None):
    """The independent one-device loop: the same batches in order, GradientTape + the Keras optimizer."""
    keras.utils.set_random_seed(7)
    model = dict_model()
    opt = OPTIMIZERS[optimizer]()
    x, y = dict_data(EXAMPLES)
    batches = iter(tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(BATCH))
    for _ in range(steps):
        xb, yb = next(batches)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.mean_squared_error(yb, model(xb, training=True))) + tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        if clip:
            grads, _ = tf.clip_by_global_norm(grads, clip)
        opt.apply(grads, model.trainable_variables)
    return model.get_weights(), int(opt.iterations.numpy())


def result_of(output: str) -> dict:
    return json.loads(next(line.split("RESULT ", 1)[1] for line in output.splitlines() if "RESULT " in line))


@pytest.mark.parametrize("optimizer, clip", [("adam", None), ("sgd", 0.5)])
def test_one_worker_with_max_staleness_0_equals_one_device(optimizer, clip):
    options = {"optimizer": optimizer, "max_staleness": 0, "clip": clip, "steps_per_loop": 2}
    result = launch(["--num_workers", "1", "--num_ps", "1", "--timeout", "200", "--", sys.executable, "-c", CHIEF],
                    env={"OPTIONS": json.dumps(options)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = result_of(result.stdout)
    expected, iterations = reference(optimizer, steps=STEPS * EPOCHS, clip=clip)
    assert report["iterations"] == iterations == 10
    for got, want in zip(report["weights"], expected):
        np.testing.assert_allclose(np.array(got), want, atol=1e-5)
    assert "staleness of the applied updates" in result.stdout and "-> count: 0: 5" in result.stdout


def test_two_workers_report_staleness_and_drop_what_exceeds_the_bound():
    options = {"optimizer": "sgd", "max_staleness": 1, "steps": 30, "epochs": 1}
    result = launch(["--num_workers", "2", "--num_ps", "1", "--timeout", "200", "--", sys.executable, "-c", CHIEF],
                    env={"OPTIONS": json.dumps(options)})
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if "staleness of the applied updates" in line)
    histogram = dict(pair.split(": ") for pair in line.split("-> count: ")[1].split("; dropped")[0].split(", "))
    applied, dropped = sum(map(int, histogram.values())), int(line.rsplit(": ", 1)[1])
    assert set(map(int, histogram)) <= {0, 1} and applied + dropped == 30
    assert result_of(result.stdout)["iterations"] == applied


def test_model_fit_is_a_config_error_pointing_to_the_trainer():
    program = """
import keras, numpy as np, tensorflow as tf, tfdp
strategy = tfdp.create_strategy("parameter_server")
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
data = tf.data.Dataset.from_tensor_slices((np.ones((8, 4), "float32"), np.ones((8, 1), "float32"))).batch(4)
for repaired in (True, False):
    if not repaired:
        tfdp.keras_fixes.install(exclude=["parameter_server_fit"])
    try:
        model.fit(data, epochs=1, verbose=0)
    except Exception as e:
        print("REPAIRED" if repaired else "STOCK", type(e).__name__, str(e).replace(chr(10), " ")[:400], flush=True)
"""
    result = launch(["--num_workers", "1", "--num_ps", "1", "--timeout", "120", "--", sys.executable, "-c", program])
    assert result.returncode == 0, result.stderr[-3000:]
    repaired = next(line for line in result.stdout.splitlines() if "REPAIRED" in line)
    stock = next(line for line in result.stdout.splitlines() if "STOCK" in line)
    assert "ConfigError model.fit() under a parameter_server strategy" in repaired and "tfdp.Trainer" in repaired
    assert "ValueError" in stock and "create_per_worker_dataset" in stock  # stock Keras 3.15.1 / 3.16 nightly


def test_workers_and_ps_serve_and_end_with_the_chief_without_a_launcher():
    ports = free_ports(3)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{ports[1]}"], "ps": [f"127.0.0.1:{ports[2]}"]}
    envs = [{"TF_CONFIG": TFConfig(cluster=cluster, task_type=t, task_index=0).to_json(),
             "OPTIONS": json.dumps({"optimizer": "sgd", "epochs": 1, "steps": 3})} for t in ("chief", "worker", "ps")]
    results = run_processes([CHIEF] * 3, envs=envs, timeout=180)
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr[-2000:] for r in results]
    assert "RESULT " in results[0].stdout and "RESULT " not in results[1].stdout + results[2].stdout
    for r, name in zip(results[1:], ("worker 0", "ps 0")):
        assert f"tfdp: {name} serving the chief" in r.stdout and f"tfdp: {name}: the chief has ended" in r.stdout


@pytest.mark.parametrize("tf_config, message", [
    ({"cluster": {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]}, "task": {"type": "chief", "index": 0}},
     "TF_CONFIG has no 'ps' task"),
    ({"cluster": {"worker": ["127.0.0.1:2"], "ps": ["127.0.0.1:3"]}, "task": {"type": "worker", "index": 0}},
     "TF_CONFIG has no 'chief' task"),
])
def test_a_cluster_without_chief_or_ps_is_a_config_error(monkeypatch, tf_config, message):
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    with pytest.raises(tfdp.ConfigError, match=message):
        tfdp.create_strategy("parameter_server")


def test_parameter_server_options_are_checked(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(tfdp.ConfigError, match="no cluster"):
        tfdp.create_strategy("parameter_server")
    with pytest.raises(tfdp.ConfigError, match="num_cpu_replicas and devices apply to"):
        tfdp.create_strategy("parameter_server", num_cpu_replicas=2)
    with pytest.raises(tfdp.ConfigError, match="only \"parameter_server\" takes it"):
        tfdp.create_strategy("mirrored", variable_shards=2)
    strategy = tfdp.create_strategy("mirrored", num_cpu_replicas=2)
    with strategy.scope():
        model = dict_model()
    with pytest.raises(tfdp.ConfigError, match="staleness exists only in asynchronous training"):
        tfdp.Trainer(model, optimizer="sgd", loss="mse", strategy=strategy, max_staleness=0)


def test_stock_keras_loses_increments_of_concurrent_workers():
    """atomic_assign_add: Keras's read-then-write assign_add, 2 workers adding at once (Keras 3.15.1, 3.16 nightly)."""
    program = """
import keras, tensorflow as tf, tfdp
strategy = tfdp.create_strategy("parameter_server")
coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
for repaired in (True, False):
    if not repaired:
        tfdp.keras_fixes.install(exclude=["atomic_assign_add"])
    with strategy.scope():
        counter = keras.Variable(0, dtype="int64", trainable=False)

    @tf.function
    def add():
        for _ in range(50):  # unrolled: autograph cannot read the source of a -c program
            counter.assign_add(1)

    for _ in range(20):
        coordinator.schedule(add)
    coordinator.join()
    print("REPAIRED" if repaired else "STOCK", int(counter.numpy()), flush=True)
"""
    result = launch(["--num_workers", "2", "--num_ps", "1", "--timeout", "120", "--", sys.executable, "-c", program])
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(line.split("] ", 1)[1].split() for line in result.stdout.splitlines()
                  if "] REPAIRED" in line or "] STOCK" in line)
    assert int(counts["REPAIRED"]) == 1000
    assert int(counts["STOCK"]) < 1000  # increments lost
