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
import tensorflow as tf

import tfdp
from tests.models import dict_model
from tests.reference import assert_weights_close, repeated_loop
from tests.workers import LAUNCH, ROOT, Result, _env, _lines_with, launch, once_per_run, run_processes
from tfdp.cluster import TFConfig
from tfdp.launch import free_ports

BATCH, STEPS, EPOCHS, EXAMPLES = 8, 5, 2, 44  # 44 examples: the repeated data ends mid-batch every 5.5 steps

# The chief's program (every task runs it; workers and ps serve inside create_strategy).
# OPTIONS: one run's options, or a list of runs, trained one after the other on the same
# cluster (each with a model of its own), each printing its RESULT line.
CHIEF = """
import json, os, sys
import numpy as np, keras, tensorflow as tf, tfdp
from tests.models import OPTIMIZERS, dict_data, dict_model
strategy = tfdp.create_strategy("parameter_server")
runs = json.loads(os.environ.get("OPTIONS", "{}"))
for options in runs if isinstance(runs, list) else [runs]:
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = dict_model()
    x, y = dict_data(options.get("examples", 44))
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(8)
    trainer = tfdp.Trainer(model, optimizer=OPTIMIZERS[options.get("optimizer", "adam")](), loss="mse",
                           strategy=strategy, max_staleness=options.get("max_staleness"),
                           global_clipnorm=options.get("clip"),
                           steps_per_execution=options.get("steps_per_execution", 1),
                           model_dir=options.get("model_dir"))
    history = trainer.fit(data, epochs=options.get("epochs", 2), steps_per_epoch=options.get("steps", 5), verbose=2)
    print("RESULT " + json.dumps({"options": options, "weights": [w.tolist() for w in model.get_weights()],
                                  "iterations": int(trainer.optimizer.iterations.numpy()),
                                  "loss": history.history["loss"]}), flush=True)
"""


def results_of(output: str) -> list[dict]:
    """Every RESULT line the chief printed, in order."""
    return [json.loads(line.split("RESULT ", 1)[1]) for line in output.splitlines() if "RESULT " in line]


def result_of(output: str) -> dict:
    return results_of(output)[0]


SEQUENTIAL = {"adam-None": ("adam", None), "sgd-0.5": ("sgd", 0.5)}


@pytest.fixture(scope="session")
def sequential_runs(tmp_path_factory):
    """Both optimizers' runs and a resumed run, one after the other on one cluster of a chief, 1 worker
    and 1 ps (once per test run)."""
    def job(directory):
        runs = [{"optimizer": optimizer, "max_staleness": 0, "clip": clip, "steps_per_execution": 2}
                for optimizer, clip in SEQUENTIAL.values()]
        # What a resumed asynchronous run promises: a fit of 1 epoch, then one of 2 in its model_dir
        # (a Trainer of its own, restored from the checkpoint) that trains the second epoch.
        runs += [{"optimizer": "adam", "max_staleness": 0, "model_dir": str(directory / "model_dir"),
                  "epochs": epochs, "resume": True} for epochs in (1, 2)]
        result = launch(["--num_workers", "1", "--num_ps", "1", "--job_timeout", "300", "--", sys.executable, "-c",
                         CHIEF], env={"OPTIONS": json.dumps(runs)}, timeout=360)
        return {"returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}

    return Result(**once_per_run(tmp_path_factory, "ps_sequential", job)[1])


@pytest.mark.xdist_group("ps_sequential")  # one cluster for both
@pytest.mark.parametrize("optimizer, clip", SEQUENTIAL.values(), ids=SEQUENTIAL.keys())
def test_one_worker_with_max_staleness_0_equals_one_device(sequential_runs, optimizer, clip):
    result = sequential_runs
    assert result.returncode == 0, result.stderr[-3000:]
    report = next(r for r in results_of(result.stdout)
                  if r["options"]["optimizer"] == optimizer and "resume" not in r["options"])
    expected, iterations = repeated_loop(optimizer, examples=EXAMPLES, batch_size=BATCH, steps=STEPS * EPOCHS,
                                         clip=clip)
    assert report["iterations"] == iterations == 10
    assert_weights_close(report["weights"], expected)
    assert "staleness of the applied updates" in result.stdout and "-> count: 0: 5" in result.stdout


@pytest.mark.xdist_group("ps_sequential")
def test_a_resumed_asynchronous_run_keeps_the_model_and_reads_the_data_again(sequential_runs):
    """docs/async.md's promise: the model, the optimizer and the epoch resume from the checkpoint;
    the workers read their data again from its beginning (here: 5 steps, then the same 5 batches)."""
    assert sequential_runs.returncode == 0, sequential_runs.stderr[-3000:]
    first, resumed = [r for r in results_of(sequential_runs.stdout) if "resume" in r["options"]]
    assert first["iterations"] == STEPS and resumed["iterations"] == 2 * STEPS
    assert len(resumed["loss"]) == 1  # the second epoch alone
    assert "at epoch 1 step 0" in sequential_runs.stdout
    expected, _ = repeated_loop("adam", examples=EXAMPLES, batch_size=BATCH, steps=2 * STEPS, read_again_every=STEPS)
    assert_weights_close(resumed["weights"], expected)
    continued, _ = repeated_loop("adam", examples=EXAMPLES, batch_size=BATCH, steps=2 * STEPS)
    assert not np.allclose(np.concatenate([np.ravel(w) for w in continued]),  # the data position is not kept
                           np.concatenate([np.ravel(w) for w in expected]), atol=1e-5)


def test_two_workers_report_staleness_and_drop_what_exceeds_the_bound(tmp_path):
    options = {"optimizer": "sgd", "max_staleness": 1, "steps": 30, "epochs": 1, "model_dir": str(tmp_path)}
    result = launch(["--num_workers", "2", "--num_ps", "1", "--job_timeout", "200", "--", sys.executable, "-c", CHIEF],
                    env={"OPTIONS": json.dumps(options)}, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if "staleness of the applied updates" in line)
    histogram = dict(pair.split(": ") for pair in line.split("-> count: ")[1].split("; dropped")[0].split(", "))
    applied, dropped = sum(map(int, histogram.values())), int(line.rsplit(": ", 1)[1])
    assert set(map(int, histogram)) <= {0, 1} and applied + dropped == 30
    assert result_of(result.stdout)["iterations"] == applied
    tags = {}  # TensorBoard: the histogram of the applied updates' staleness, and the dropped count
    for name in os.listdir(tmp_path / "train"):
        for event in tf.compat.v1.train.summary_iterator(str(tmp_path / "train" / name)):
            for value in event.summary.value:
                tags[value.tag] = tf.make_ndarray(value.tensor)
    assert tags["staleness"][:, 2].sum() == applied and float(tags["dropped_stale_steps"]) == dropped


def test_model_fit_is_a_config_error_pointing_to_the_trainer():
    program = """
import keras, numpy as np, tensorflow as tf, tfdp
strategy = tfdp.create_strategy("parameter_server")
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
data = tf.data.Dataset.from_tensor_slices((np.ones((8, 4), "float32"), np.ones((8, 1), "float32"))).batch(4)
try:
    tfdp.Trainer(model, optimizer="sgd", loss="mse", strategy=strategy).fit(data.repeat(), epochs=1)
except tfdp.ConfigError as e:
    print("TRAINER", e, flush=True)
try:
    tfdp.Trainer(model, optimizer="adam", loss="mse", strategy=strategy, gradient_accumulation_steps=2)
except tfdp.ConfigError as e:
    print("OPTIONS", e, flush=True)
try:
    tfdp.Trainer(model, optimizer="adam", loss="mse", strategy=strategy, save_every_steps=2, model_dir="/tmp/tfdp-x")
except tfdp.ConfigError as e:
    print("STEP SAVES", e, flush=True)
for repaired in (True, False):
    if not repaired:
        tfdp.keras_fixes.install(exclude=["parameter_server_fit"])
    try:
        model.fit(data, epochs=1, verbose=0)
    except Exception as e:
        print("REPAIRED" if repaired else "STOCK", type(e).__name__, str(e).replace(chr(10), " ")[:400], flush=True)
"""
    result = launch(["--num_workers", "1", "--num_ps", "1", "--job_timeout", "120", "--",
                     sys.executable, "-c", program], timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    repaired = next(line for line in result.stdout.splitlines() if "REPAIRED" in line)
    stock = next(line for line in result.stdout.splitlines() if "STOCK" in line)
    assert "ConfigError model.fit() under a parameter_server strategy" in repaired and "tfdp.Trainer" in repaired
    assert "ValueError" in stock and "create_per_worker_dataset" in stock  # stock Keras 3.15.1 / 3.16 nightly
    assert "[chief] TRAINER Trainer.fit(steps_per_epoch=None) on a parameter_server strategy" in result.stdout
    assert "[chief] OPTIONS Trainer(gradient_accumulation_steps=2) on a parameter_server strategy" in result.stdout
    assert "[chief] STEP SAVES Trainer(save_every_steps=2) on a parameter_server strategy" in result.stdout


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
    result = launch(["--num_workers", "2", "--num_ps", "1", "--job_timeout", "120", "--",
                     sys.executable, "-c", program], timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(line.split("] ", 1)[1].split() for line in result.stdout.splitlines()
                  if "] REPAIRED" in line or "] STOCK" in line)
    assert int(counts["REPAIRED"]) == 1000
    assert int(counts["STOCK"]) < 1000  # increments lost


# A parameter-server job without TensorFlow: a task fails as told on the first attempt (after
# leaving its pid in a file); the chief works until the launcher has reaped that task (its pid
# is gone), then ends; the other tasks serve until stopped.
TOY_JOB = """
import json, os, sys, time
task = json.loads(os.environ["TF_CONFIG"])["task"]
name, attempt = f"{task['type']} {task['index']}", int(os.environ["TFDP_RESTART_COUNT"])
failing = os.path.join(sys.argv[2], "failing.pid")
print(f"started {name} attempt {attempt}", flush=True)
if name == sys.argv[1] and attempt == 0:
    with open(failing + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(failing + ".tmp", failing)
    sys.exit(3)
if task["type"] != "chief":
    time.sleep(120)
deadline = time.monotonic() + 50
while time.monotonic() < deadline:
    try:
        os.kill(int(open(failing).read()), 0)  # a zombie answers until the launcher reaps it
    except (OSError, ValueError):
        if os.path.exists(failing):
            break
    time.sleep(0.05)
"""


def test_a_lost_worker_without_restarts_left_leaves_the_job_to_the_others(tmp_path):
    result = launch(["--num_workers", "2", "--num_ps", "1", "--grace_period", "1", "--", sys.executable, "-c",
                     TOY_JOB, "worker 1", str(tmp_path)], timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tfdp-launch: worker 1 lost (exit code 3); no restart left (--max_restarts 0): the job goes on" in \
        result.stderr
    assert "chief exit code 0" in result.stderr and "[chief] started chief 0 attempt 0" in result.stdout


def test_a_failed_ps_restarts_the_whole_job(tmp_path):
    result = launch(["--num_workers", "1", "--num_ps", "1", "--max_restarts", "1", "--grace_period", "1", "--",
                     sys.executable, "-c", TOY_JOB, "ps 0", str(tmp_path)], timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tfdp-launch: ps 0 failed first (exit code 3)" in result.stderr
    assert "restarting the whole job (chief, 1 workers, 1 ps) (restart 1 of 1)" in result.stderr
    assert "[chief] started chief 0 attempt 1" in result.stdout


def _serving_pid(line: str) -> int:
    return int(line.rsplit("(pid ", 1)[1].rstrip(")\n"))


def _child_pid(parent: int, task_type: str) -> int:
    """The pid of the launcher's child that runs `task_type` (read from its TF_CONFIG)."""
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        except (OSError, ValueError):
            continue
        if ppid == parent and json.loads(environ.get(b"TF_CONFIG", b"{}")).get("task", {}).get("type") == task_type:
            return int(entry)
    raise AssertionError(f"no {task_type} among the children of {parent}")


def test_digits_recipe_with_two_workers_survives_a_killed_worker(tmp_path):
    """The issue's done-when: chief + 2 workers + 1 ps reach >= 0.95 with worker 1 SIGKILLed mid-run."""
    command = [*LAUNCH, "--num_workers", "2", "--num_ps", "1", "--max_restarts", "1", "--job_timeout", "240", "--",
               sys.executable, "-m", "recipes.image_classification", "--strategy=parameter_server", "--loop=custom",
               "--epochs=14", f"--data_dir={tmp_path / 'data'}", f"--model_dir={tmp_path / 'run'}"]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE,  # timeout: the deadlines below, then SIGKILL
                                stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                env=_env({"TFDP_CONSOLE": "all"}), start_new_session=True)
    try:
        serving = _lines_with(launcher.stdout, "[worker 1] tfdp: worker 1 serving the chief", count=1, seconds=120)
        assert serving, "worker 1 never served"
        assert _lines_with(launcher.stdout, "[chief] Epoch 3/14", count=1, seconds=120), "training never started"
        chief = _child_pid(launcher.pid, "chief")
        os.kill(chief, signal.SIGSTOP)  # the chief waits for the restarted worker: 11 epochs take less than a restart
        os.kill(_serving_pid(serving[0]), signal.SIGKILL)
        rejoined = _lines_with(launcher.stdout, "[worker 1] tfdp: worker 1 serving the chief", count=1, seconds=120)
        os.kill(chief, signal.SIGCONT)
        assert rejoined and _serving_pid(rejoined[0]) != _serving_pid(serving[0]), "worker 1 was not restarted"
        stdout, stderr = launcher.communicate(timeout=240)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert launcher.returncode == 0, stderr[-3000:]
    assert "tfdp-launch: worker 1 lost (killed by signal SIGKILL); restarting it alone, on its address" in stderr
    assert "[chief] Epoch 14/14" in stdout  # the chief trained on after worker 1 came back
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["eval"]["accuracy"] >= 0.95 and results["config"]["workers"] == 2 and results["config"]["ps"] == 1


def test_sigterm_saves_on_the_chief_and_a_killed_ps_resumes_from_the_checkpoint(tmp_path):
    options = {"optimizer": "adam", "steps": 400, "epochs": 3, "model_dir": str(tmp_path)}
    command = [*LAUNCH, "--num_workers", "1", "--num_ps", "1", "--grace_period", "30", "--max_restarts", "1", "--",
               sys.executable, "-c", CHIEF]
    env = _env({"TFDP_CONSOLE": "all", "OPTIONS": json.dumps(options)})

    def run_until(text: str, action):
        launcher = subprocess.Popen(command, stdout=subprocess.PIPE,  # timeout: the deadlines below, then SIGKILL
                                    stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, start_new_session=True)
        try:
            seen = _lines_with(launcher.stdout, text, count=1, seconds=180)
            assert seen, f"never printed {text!r}"
            action(launcher, seen[0])
            stdout, stderr = launcher.communicate(timeout=240)
        finally:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
        return launcher.returncode, stdout, stderr

    # SIGTERM to the launcher in epoch 2: the chief saves first, while the ps still holds the variables.
    code, stdout, stderr = run_until("[chief] Epoch 2/3", lambda launcher, _: launcher.send_signal(signal.SIGTERM))
    assert code == 128 + signal.SIGTERM and "chief exit code 75" in stderr, stderr[-3000:]
    assert "[chief] tfdp: preempted (SIGTERM): saved epoch 1 step" in stdout
    # The rerun resumes there; its ps is SIGKILLed: the whole job restarts and resumes from the last checkpoint.
    options["steps"] = 40
    env["OPTIONS"] = json.dumps(options)
    code, stdout, stderr = run_until("[ps 0] tfdp: ps 0 serving", lambda _, line: os.kill(_serving_pid(line),
                                                                                         signal.SIGKILL))
    assert code == 0, stderr[-3000:]
    assert "ps 0 failed first (killed by signal SIGKILL)" in stderr and "restarting the whole job" in stderr
    assert stdout.count("resumed from") >= 1 and "at epoch 1 step" in stdout
    assert result_of(stdout)["iterations"] > 0


def test_sharded_variables_are_a_config_error_for_keras_layers():
    program = """
import keras, tfdp
strategy = tfdp.create_strategy("parameter_server", variable_shards=2, min_shard_bytes=1024)
with strategy.scope():
    model = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Embedding(1000, 16, name="table"),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
try:
    tfdp.Trainer(model, optimizer="adam", loss="mse", strategy=strategy)
except tfdp.ConfigError as e:
    print("ERROR", e, flush=True)
"""
    result = launch(["--num_workers", "1", "--num_ps", "2", "--job_timeout", "120", "--",
                     sys.executable, "-c", program], timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[chief] ERROR Trainer: sequential/table/embeddings is sharded over the ps tasks" in result.stdout
    assert "Keras 3 layers cannot use sharded variables" in result.stdout
