"""model.fit on 2 real worker processes equals one device at the same global batch."""

import json
import os
import signal
import subprocess
import sys

import keras  # noqa: F401  (used by the eval'd configurations)
import numpy as np
import pytest

import tfdp
import tensorflow as tf

from tests.models import GLOBAL_BATCH, BatchRecorder, dict_data, dict_model, train
from tests.reference import assert_weights_close
from tests.workers import ROOT, Result, _env, once_per_run, run_python, run_workers

# Each configuration: (name, train() keyword arguments, reference keyword arguments).
CONFIGS = {
    "plain": ("dict(epochs=3)", "dict(epochs=3)"),
    "global_clipnorm": ("dict(optimizer=lambda: keras.optimizers.SGD(0.1, global_clipnorm=0.05))",) * 2,
    "steps_per_execution": ("dict(steps_per_execution=3)", "dict()"),
    "gradient_accumulation": ("dict(optimizer=lambda: keras.optimizers.SGD(0.1, gradient_accumulation_steps=2))",
                              "dict(batch_size=16)"),
}

WORKER = """
import json, os, keras, tensorflow as tf, tfdp
from tests.models import dict_data, dict_model, train
strategy = tfdp.create_strategy()  # "auto": TF_CONFIG names 2 workers
for n, configs in {cases}.items():
    report = {{"n": n, "chief": tfdp.is_chief(strategy)}}
    for name, kwargs in configs.items():
        model, history = train(strategy, dict_model, dict_data(n), **eval(kwargs))
        report[name] = {{"weights": [w.tolist() for w in model.get_weights()], "loss": history["loss"]}}
    x, y = dict_data(n)
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    report["evaluate"] = model.evaluate(batches, verbose=0)
    report["predict"] = model.predict(tf.data.Dataset.from_tensor_slices(x).batch(8), verbose=0).tolist()
    print("RESULT " + json.dumps(report), flush=True)
"""
SIZES = (45, 48)  # an uneven last batch; full batches


def configs_for(n: int) -> dict[str, str]:
    configs = {name: worker for name, (worker, _) in CONFIGS.items()}
    if n % 16:  # accumulation == a 2x batch only when every micro-batch is full
        del configs["gradient_accumulation"]
    return configs


@pytest.fixture(scope="session")
def two_worker_fits(tmp_path_factory):
    """One 2-worker job (one cluster, one start-up, once per test run) for both data sizes, then
    the callbacks case (SHARED_DIR) and the tutorial's shape (TUTORIAL_DIR): (its directory, each
    worker's result)."""
    cases = {n: configs_for(n) for n in SIZES}
    code = WORKER.format(cases=cases) + CALLBACKS_CASE + TUTORIAL_CASE

    def job(directory):
        env = {name: str(directory / sub) for name, sub in
               (("SHARED_DIR", "shared"), ("TMPDIR", "tmp"), ("TUTORIAL_DIR", "tutorial"))}
        for path in env.values():
            os.makedirs(path)
        return [r.as_dict() for r in run_workers(code, num_workers=2, timeout=300, env=env)]

    directory, results = once_per_run(tmp_path_factory, "fit_two_workers", job)
    return directory, [Result(**r) for r in results]


@pytest.mark.xdist_group("fit_two_workers")  # one job for both sizes, the callbacks and the tutorial
@pytest.mark.parametrize("n", SIZES)
def test_fit_on_two_workers_equals_one_device(two_worker_fits, n):
    configs = configs_for(n)
    _, results = two_worker_fits
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    reports = [next(line for line in r.json_lines() if line.get("n") == n) for r in results]
    assert [rep["chief"] for rep in reports] == [True, False]
    one = tfdp.create_strategy("one_device", devices=["/cpu:0"])
    for name in configs:
        reference, ref_history = train(one, dict_model, dict_data(n), **eval(CONFIGS[name][1]))
        for report in reports:
            for got, want in zip(report[name]["weights"], reference.get_weights()):
                np.testing.assert_allclose(np.array(got), want, atol=1e-5, rtol=0, err_msg=name)
            if name != "gradient_accumulation":
                np.testing.assert_allclose(report[name]["loss"], ref_history["loss"], rtol=1e-5, err_msg=name)
    # evaluate and predict of the last model trained (the gradient-accumulation or spe one)
    x, y = dict_data(n)
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    last = list(configs)[-1]
    reference, _ = train(one, dict_model, dict_data(n), **eval(CONFIGS[last][1]))
    for report in reports:
        np.testing.assert_allclose(report["evaluate"], reference.evaluate(batches, verbose=0), rtol=1e-5)
        predicted = np.array(report["predict"])
        assert predicted.shape == (n, 1)  # every example once, in order
        np.testing.assert_allclose(predicted, reference.predict(x, batch_size=GLOBAL_BATCH, verbose=0), atol=1e-5)


# Runs after `strategy` exists (in the shared job, and alone on stock Keras below).
CALLBACKS_CASE = """
shared = os.environ["SHARED_DIR"]
keras.backend.clear_session()  # the case's model as in a fresh process
callbacks = [
    keras.callbacks.ModelCheckpoint(os.path.join(shared, "ckpt-{epoch}.weights.h5"), save_weights_only=True),
    keras.callbacks.TensorBoard(os.path.join(shared, "tb")),
    keras.callbacks.BackupAndRestore(os.path.join(shared, "backup"), delete_checkpoint=False),
]
model, _ = train(strategy, dict_model, dict_data(45), epochs=2, fit_kwargs=dict(callbacks=callbacks, verbose=1))
print("RESULT " + json.dumps({"callbacks_chief": tfdp.is_chief(strategy)}), flush=True)
"""


@pytest.mark.xdist_group("fit_two_workers")
def test_only_the_chief_writes_the_users_files_and_prints_progress(two_worker_fits):
    directory, results = two_worker_fits
    shared, private_tmp = directory / "shared", directory / "tmp"
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    chief, worker = results
    assert [line["callbacks_chief"] for r in results for line in r.json_lines() if "callbacks_chief" in line] == [
        True, False]
    assert sorted(p.name for p in shared.iterdir()) == ["backup", "ckpt-1.weights.h5", "ckpt-2.weights.h5", "tb"]
    assert sorted(p.name for p in (shared / "backup").iterdir()) == [  # the previous backup is kept too
        "latest.weights.h5", "latest.weights.h5.bkp", "training_metadata.json", "training_metadata.json.bkp"]
    assert (shared / "tb" / "train").is_dir()
    assert "Epoch 2/2" in chief.stdout and "Epoch" not in worker.stdout
    assert not [p for p in private_tmp.iterdir() if p.name.startswith("tfdp-worker-")]  # removed


STOCK_CALLBACKS_WORKER = """
import json, os, keras, tfdp
from tests.models import dict_data, dict_model, train
strategy = tfdp.create_strategy(timeout_seconds=60)
tfdp.keras_fixes.install(exclude=["chief_writes"])
""" + CALLBACKS_CASE


def test_stock_callbacks_write_from_every_worker(tmp_path):
    """Guards chief_writes (reproduced on Keras 3.15.1 and 3.16.0.dev2026102704): without it the
    non-chief worker prints a progress bar and writes the user's files, or dies on their lock."""
    shared, private_tmp = tmp_path / "shared", tmp_path / "tmp"
    shared.mkdir()
    private_tmp.mkdir()
    results = run_workers(STOCK_CALLBACKS_WORKER, num_workers=2, timeout=180,
                          env={"SHARED_DIR": str(shared), "TMPDIR": str(private_tmp)})
    worker = results[1]
    assert worker.returncode != 0 or "Epoch 2/2" in worker.stdout, (worker.stdout[-2000:], worker.stderr[-2000:])


STOCK_FIT_WORKER = """
import tfdp
from tests.models import dict_data, dict_model, train
strategy = tfdp.create_strategy(timeout_seconds=60)
tfdp.keras_fixes.install(exclude=["multi_worker_fit"])
train(strategy, dict_model, dict_data(48))
print("TRAINED")
"""


def test_stock_keras_fit_crashes_on_two_workers():
    """Guards multi_worker_fit (keras-team/keras#20585; reproduced on Keras 3.15.1 and
    3.16.0.dev2026102704): fit under MultiWorkerMirroredStrategy fails without it."""
    results = run_workers(STOCK_FIT_WORKER, num_workers=2, timeout=180)
    for r in results:
        assert r.returncode != 0 and "TRAINED" not in r.stdout
    assert any("PerReplica" in r.stderr or "reduction dimension" in r.stderr for r in results), \
        results[0].stderr[-3000:]


KILLED_WORKER = """
import json, os, signal, sys, keras, tfdp
from tests.models import dict_data, dict_model, train
run_dir = sys.argv[1]
strategy = tfdp.create_strategy()

class SigkillOnce(keras.callbacks.Callback):
    # A real SIGKILL mid-epoch, once: in epoch 1 after step 4 (backups every 3 steps).
    def on_train_batch_end(self, batch, logs=None):
        first_run = int(os.environ.get("TFDP_RESTART_COUNT", "0")) == 0
        marker = os.path.join(run_dir, "killed")
        if self.params and first_run and not os.path.exists(marker) and self._epoch == 1 and batch == 3 \\
                and tfdp.is_chief(strategy) == bool(int(os.environ.get("KILL_CHIEF", "0"))):
            open(marker, "w").close()
            if os.environ.get("DAMAGE_BACKUP"):  # the newest backup torn, as by a node lost mid-save
                with open(os.path.join(run_dir, "backup", "latest.weights.h5"), "r+b") as f:
                    f.truncate(100)
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

backup = keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup"), save_freq=3)
recorder = BatchRecorder()
model, history = train(strategy, dict_model, dict_data(45), epochs=3,
                       fit_kwargs=dict(callbacks=[backup, SigkillOnce(), recorder]))
if tfdp.is_chief(strategy):
    with open(os.path.join(run_dir, "run.json"), "w") as f:
        json.dump({"weights": [w.tolist() for w in model.get_weights()], "seen": recorder.seen,
                   "history": history}, f)
""".replace("from tests.models import", "from tests.models import BatchRecorder,")


def assert_resumed_like_an_uninterrupted_run(run_dir, *, resumed_at, batch_logs=True):
    """The run's weights, the batches its callbacks saw from `resumed_at` (epoch, step) on (and
    their logs, `batch_logs`), and its History (from the resumed epoch on) equal an uninterrupted
    one-device run's. (On several replicas a batch's logs are the first replica's, as Keras
    logs them: only the epoch's logs are over all of them.)"""
    recorder = BatchRecorder()
    reference, history = train(tfdp.create_strategy("one_device", devices=["/cpu:0"]), dict_model,
                               dict_data(45), epochs=3, fit_kwargs=dict(callbacks=[recorder]))
    got = json.loads((run_dir / "run.json").read_text())
    assert_weights_close(got["weights"], reference.get_weights())
    expected = [seen for seen in recorder.seen if tuple(seen[:2]) >= resumed_at]
    assert [seen[:2] for seen in got["seen"]] == [seen[:2] for seen in expected]  # only the trained ones
    if batch_logs:
        np.testing.assert_allclose([seen[2] for seen in got["seen"]], [seen[2] for seen in expected], rtol=1e-5)
    np.testing.assert_allclose(got["history"]["loss"], history["loss"][resumed_at[0]:], rtol=1e-5)


def test_sigkill_mid_epoch_then_restart_ends_like_an_uninterrupted_run(tmp_path):
    # One process: killed, started again by hand, as a user would.
    first = run_python(KILLED_WORKER, args=(str(tmp_path),), env={"KILL_CHIEF": "1"}, timeout=120)
    assert first.returncode == -signal.SIGKILL and (tmp_path / "killed").exists()
    assert not (tmp_path / "run.json").exists()
    second = run_python(KILLED_WORKER, args=(str(tmp_path),), env={"KILL_CHIEF": "1"}, timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "at epoch 1 step 3" in second.stdout  # the backup after epoch 1's third step
    assert_resumed_like_an_uninterrupted_run(tmp_path, resumed_at=(1, 3))


def test_two_workers_sharing_a_backup_survive_a_sigkill_and_a_torn_backup(tmp_path):
    """Worker 1 killed mid-epoch, the newest backup torn: both workers fall back to the previous one
    (the chief from the user's directory, worker 1 through its private copy) and train to the end."""
    command = [sys.executable, "-m", "tfdp.launch", "--num_workers", "2", "--max_restarts", "1",
               "--grace_period", "5", "--", sys.executable, "-c", KILLED_WORKER, str(tmp_path)]
    result = subprocess.run(command, timeout=300, capture_output=True, text=True, cwd=ROOT,
                            env=_env({"DAMAGE_BACKUP": "1", "TFDP_CONSOLE": "all"}))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "worker 1 failed first (killed by signal SIGKILL)" in result.stderr
    output = result.stdout + result.stderr
    assert "is damaged" in output and "restoring the previous one" in output
    # The previous backup: epoch 0 after its 6 steps; the metrics restored give epoch 0's History.
    assert "at epoch 0 step 6" in output
    assert_resumed_like_an_uninterrupted_run(tmp_path, resumed_at=(0, 6), batch_logs=False)


# The Keras multi-worker tutorial's shape, with tfdp's strategy (the shared job's): a repeated,
# shuffled dataset with steps_per_epoch, BackupAndRestore, and model.save on the chief only.
TUTORIAL_CASE = """
import numpy as np
run_dir = os.environ["TUTORIAL_DIR"]
keras.backend.clear_session()
x = np.random.default_rng(0).normal(size=(256, 8, 8, 1)).astype("float32")
y = (x.mean(axis=(1, 2, 3)) > 0).astype("int64")
dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(256, seed=1).repeat().batch(32)
with strategy.scope():
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
model.fit(dataset, epochs=3, steps_per_epoch=5, verbose=0,
          callbacks=[keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup"))])
if tfdp.is_chief(strategy):
    model.save(os.path.join(run_dir, "model.keras"))
print("RESULT " + json.dumps({"tutorial": [w.tolist() for w in model.get_weights()]}), flush=True)
"""


@pytest.mark.xdist_group("fit_two_workers")
def test_the_multi_worker_tutorial_pattern_runs_on_two_workers(two_worker_fits):
    directory, results = two_worker_fits
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    chief, worker = ([line["tutorial"] for line in r.json_lines() if "tutorial" in line][0] for r in results)
    for a, b in zip(chief, worker):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    saved = keras.models.load_model(directory / "tutorial" / "model.keras")
    for a, b in zip(saved.get_weights(), chief):
        np.testing.assert_array_equal(a, np.array(b))
