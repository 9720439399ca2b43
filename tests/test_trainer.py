"""tfdp.Trainer against a plain single-device loop written here."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfdp
from tests.models import GLOBAL_BATCH, OPTIMIZERS, dict_data, dict_model
from tests.reference import running_means, assert_weights_close as assert_close, plain_loop
from tests.workers import ROOT, Result, _env, once_per_run, run_python, run_workers


def run_trainer(strategy, data, *, epochs=2, batch_size=GLOBAL_BATCH, optimizer="sgd", steps_per_epoch=None,
                **options):
    x, y = data
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = dict_model()
    trainer = tfdp.Trainer(model, optimizer=OPTIMIZERS[optimizer](), loss="mse", strategy=strategy, **options)
    history = trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size), epochs=epochs,
                          steps_per_epoch=steps_per_epoch, verbose=0)
    return model, history.history, trainer


# name -> (Trainer options, plain_loop options, examples). 45 examples in batches of 8: an
# uneven last batch; with accumulation 2 the last group is one batch of 5 (data ending mid-group).
CASES = {
    "plain": (dict(), dict(), 45),
    "steps_per_execution": (dict(steps_per_execution=4), dict(), 45),
    "gradient_accumulation_steps": (dict(gradient_accumulation_steps=2), dict(accumulate=2), 48),
    "global_clipnorm": (dict(global_clipnorm=0.05), dict(clip=0.05), 45),
    "all_together": (dict(gradient_accumulation_steps=2, global_clipnorm=0.05, steps_per_execution=2),
                     dict(accumulate=2, clip=0.05), 45),
}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("options,reference,n", CASES.values(), ids=CASES.keys())
def test_two_replicas_equal_a_plain_single_device_loop(two_replicas, options, reference, n, optimizer):
    model, history, trainer = run_trainer(two_replicas, dict_data(n), epochs=3, optimizer=optimizer, **options)
    expected, iterations = plain_loop(dict_model, dict_data(n), batch_size=GLOBAL_BATCH, epochs=3,
                                      optimizer=optimizer, **reference)
    assert_close(model.get_weights(), expected)
    assert int(trainer.optimizer.iterations.numpy()) == iterations
    assert len(history["loss"]) == 3 and history["loss"][2] < history["loss"][0]


def test_steps_per_epoch_reads_the_data_again_without_empty_epochs(two_replicas):
    # 6 batches, 4 steps per epoch in chunks of 3: every epoch trains 4 steps, the data is
    # read again when it ends (mid-chunk), and Adam's iterations equal the steps taken.
    model, history, trainer = run_trainer(two_replicas, dict_data(45), epochs=3, optimizer="adam",
                                          steps_per_epoch=4, steps_per_execution=3)
    expected, iterations = plain_loop(dict_model, dict_data(45), batch_size=GLOBAL_BATCH, epochs=3,
                                      optimizer="adam", steps_per_epoch=4)
    assert iterations == 12 == int(trainer.optimizer.iterations.numpy())
    assert_close(model.get_weights(), expected)
    assert all(loss > 0 for loss in history["loss"])


def test_metrics_and_evaluate_are_aggregated_over_replicas(two_replicas):
    one = tfdp.create_strategy("one_device", devices=["/cpu:0"])
    results = []
    for strategy in (one, two_replicas):
        x, y = dict_data(45)
        keras.utils.set_random_seed(7)
        with strategy.scope():
            model = dict_model()
        trainer = tfdp.Trainer(model, optimizer="sgd", loss="mse", strategy=strategy, metrics=["mae"])
        batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
        history = trainer.fit(batches, epochs=1, validation_data=batches, verbose=0).history
        results.append((history["mae"], history["val_loss"], trainer.evaluate(batches, verbose=0)))
    (mae1, val1, eval1), (mae2, val2, eval2) = results
    np.testing.assert_allclose(mae2, mae1, rtol=1e-5)
    np.testing.assert_allclose(val2, val1, rtol=1e-5)
    assert eval2.keys() == eval1.keys() == {"loss", "mae"}
    np.testing.assert_allclose(list(eval2.values()), list(eval1.values()), rtol=1e-5)


def test_fp16_overflow_on_one_replica_skips_the_step_everywhere():
    result = run_python("""
        import json, numpy as np, keras, tensorflow as tf, tfdp
        strategy = tfdp.create_strategy("mirrored", num_cpu_replicas=2)
        tfdp.training.set_mixed_precision("mixed_float16")
        with strategy.scope():
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                                      keras.layers.Dense(1, dtype="float32")])
        trainer = tfdp.Trainer(model, optimizer=keras.optimizers.SGD(0.05), loss="mse", strategy=strategy,
                               mixed_precision="mixed_float16")
        x = np.ones((8, 4), "float32"); y = np.ones((8, 1), "float32")
        x_bad = x.copy(); x_bad[6] = 1e5  # float16 overflow in replica 1's half only
        before = [w.copy() for w in model.get_weights()]
        scale = float(trainer.loss_scale.scale.numpy())
        trainer.fit(tf.data.Dataset.from_tensor_slices((x_bad, y)).batch(8), epochs=1, verbose=0)
        unchanged = all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
        halved = float(trainer.loss_scale.scale.numpy()) == scale / 2
        history = trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=5, verbose=0).history
        print("RESULT " + json.dumps({"unchanged": unchanged, "halved": halved, "loss": history["loss"],
                                      "finite": bool(all(np.isfinite(w).all() for w in model.get_weights()))}))
    """, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = result.json_lines()[0]
    assert report["unchanged"] and report["halved"] and report["finite"]
    assert report["loss"][-1] < report["loss"][0]


def test_mixed_precision_must_be_set_before_the_model_is_built(two_replicas):
    with two_replicas.scope():
        model = dict_model()
    with pytest.raises(tfdp.ConfigError, match=r'set_mixed_precision\("mixed_float16"\) before'):
        tfdp.Trainer(model, optimizer="sgd", loss="mse", strategy=two_replicas, mixed_precision="mixed_float16")


@pytest.mark.parametrize("options,message", [
    (dict(gradient_accumulation_steps=0), "gradient_accumulation_steps=0"),
    (dict(steps_per_execution=1.5), "steps_per_execution=1.5"),
    (dict(global_clipnorm=-1), "global_clipnorm=-1"),
    (dict(all_reduce_dtype="fp8"), "all_reduce_dtype"),
    (dict(all_reduce_dtype="none"), "all_reduce_dtype"),
    (dict(max_checkpoints=0), "max_checkpoints=0"),
    (dict(save_every_steps=5), "give model_dir too"),
    (dict(loss=5), "loss=5"),
    (dict(loss="msee"), "not a Keras loss name"),
    (dict(optimizer=keras.optimizers.SGD(gradient_accumulation_steps=2)), "gradient_accumulation_steps=2"),
    (dict(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD())), 'mixed_precision="mixed_float16"'),
    (dict(mixed_precision="float16"), "mixed_precision"),
    (dict(gradient_acumulation_steps=2), 'no such option. Did you mean "gradient_accumulation_steps"'),
])
def test_bad_options_are_config_errors(two_replicas, options, message):
    with two_replicas.scope():
        model = dict_model()
    options = {"optimizer": "sgd", "loss": "mse", **options}
    with pytest.raises(tfdp.ConfigError, match=message):
        tfdp.Trainer(model, strategy=two_replicas, **options)


def test_the_first_option_names_still_work_with_a_deprecation_warning(two_replicas):
    with two_replicas.scope():
        model = dict_model()
    for old, new, value in (("grad_accum_steps", "gradient_accumulation_steps", 2),
                            ("clip_global_norm", "global_clipnorm", 1.0), ("steps_per_loop", "steps_per_execution", 3)):
        with pytest.warns(DeprecationWarning, match=f"Trainer\\({old}=...\\) is now {new}"):
            trainer = tfdp.Trainer(model, optimizer="adam", loss="mse", strategy=two_replicas, **{old: value})
        if new != "global_clipnorm":
            assert getattr(trainer, new) == value
        else:
            assert trainer.step.global_clipnorm == value


WORKER = """
import json, os, signal, sys, keras, tensorflow as tf, tfdp
from tests.models import OPTIMIZERS, BatchRecorder, dict_data, dict_model
strategy = tfdp.create_strategy()
x, y = dict_data(int(os.environ.get("N", "45")))
keras.utils.set_random_seed(7)
with strategy.scope():
    model = dict_model()
model_dir = sys.argv[1] if len(sys.argv) > 1 else None
options = json.loads(os.environ.get("OPTIONS", "{}"))
fit_options = options.pop("fit", {})
trainer = tfdp.Trainer(model, optimizer=OPTIMIZERS[os.environ.get("OPTIMIZER", "sgd")](), loss="mse",
                       strategy=strategy, model_dir=model_dir, **options)
batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(int(os.environ.get("BATCH", "8")))

class Kill(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if self._epoch == int(os.environ.get("KILL_EPOCH", -1)) and batch == int(os.environ["KILL_STEP"]) \
                and tfdp.is_chief(strategy):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

recorder = BatchRecorder()
history = trainer.fit(batches, epochs=3, verbose=0, callbacks=[Kill(), recorder], **fit_options)
trainer.close()
print("RESULT " + json.dumps({"weights": [w.tolist() for w in model.get_weights()],
                              "iterations": int(trainer.optimizer.iterations.numpy()),
                              "seen": recorder.seen, "loss": history.history["loss"]}))
"""


# The cases of one 2-worker job: id -> (optimizer, Trainer options, plain_loop options, examples).
TWO_WORKER_CASES = {
    "sgd-plain": ("sgd", {}, {}, 45),
    "adam-all-together": ("adam", {"steps_per_execution": 2, "global_clipnorm": 0.05, "gradient_accumulation_steps": 2},
                          {"clip": 0.05, "accumulate": 2}, 45),
}
CASES_WORKER = """
import json, sys, keras, tensorflow as tf, tfdp
from tests.models import OPTIMIZERS, dict_data, dict_model
strategy = tfdp.create_strategy()
for case, (optimizer, options, _, n) in json.loads(sys.argv[1]).items():
    x, y = dict_data(n)
    keras.backend.clear_session()  # each case's model as in a fresh process
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = dict_model()
    trainer = tfdp.Trainer(model, optimizer=OPTIMIZERS[optimizer](), loss="mse", strategy=strategy, **options)
    trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=3, verbose=0)
    trainer.close()
    print("RESULT " + json.dumps({"case": case, "weights": [w.tolist() for w in model.get_weights()],
                                  "iterations": int(trainer.optimizer.iterations.numpy())}), flush=True)
"""


@pytest.fixture(scope="session")
def two_worker_trainers(tmp_path_factory):
    """Every case of TWO_WORKER_CASES in one 2-worker job (once per test run): each worker's result."""
    _, results = once_per_run(tmp_path_factory, "trainer_two_workers", lambda _: [
        r.as_dict() for r in run_workers(CASES_WORKER, num_workers=2, timeout=240,
                                         args=(json.dumps(TWO_WORKER_CASES),))])
    return [Result(**r) for r in results]


@pytest.mark.xdist_group("trainer_two_workers")  # one job for every case
@pytest.mark.parametrize("case", TWO_WORKER_CASES)
def test_two_workers_equal_a_plain_single_device_loop(two_worker_trainers, case):
    optimizer, _, reference, n = TWO_WORKER_CASES[case]
    for r in reversed(two_worker_trainers):
        assert r.returncode == 0, r.stderr[-3000:]
    expected, iterations = plain_loop(dict_model, dict_data(n), batch_size=GLOBAL_BATCH, epochs=3,
                                      optimizer=optimizer, **reference)
    for r in two_worker_trainers:
        [report] = [line for line in r.json_lines() if line["case"] == case]
        assert_close([np.array(w) for w in report["weights"]], expected)
        assert report["iterations"] == iterations


def test_kill_and_restart_from_model_dir_resumes_and_ends_the_same(tmp_path):
    env = {"KILL_EPOCH": "2", "KILL_STEP": "0", "OPTIMIZER": "adam"}
    killed = run_python(WORKER, args=(str(tmp_path),), env=env, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert os.path.exists(tmp_path / "checkpoints" / "checkpoint")
    resumed = run_python(WORKER, args=(str(tmp_path),), env={"OPTIMIZER": "adam"}, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "at epoch 2 step 0" in resumed.stdout
    expected, iterations = plain_loop(dict_model, dict_data(45), batch_size=GLOBAL_BATCH, epochs=3,
                                      optimizer="adam")
    report = resumed.json_lines()[0]
    assert_close([np.array(w) for w in report["weights"]], expected)
    assert report["iterations"] == iterations
    assert any(name.startswith("events") for name in os.listdir(tmp_path / "train"))  # TensorBoard


def test_two_workers_killed_mid_epoch_resume_step_exact(tmp_path):
    """steps_per_epoch shorter than the data, a checkpoint every 2 steps, worker 0 killed by
    SIGKILL at epoch 1 step 3: tfdp-launch restarts the job and it ends as an uninterrupted run."""
    options = {"save_every_steps": 2, "fit": {"steps_per_epoch": 4}}
    env = {**_env(None), "OPTIONS": json.dumps(options), "OPTIMIZER": "adam", "KILL_EPOCH": "1",
           "KILL_STEP": "2"}
    marker = tmp_path / "killed"
    command = [sys.executable, "-m", "tfdp.launch", "--num_workers", "2", "--console", "all", "--max_restarts", "1",
               "--grace_period", "5", "--", sys.executable, "-c",
               WORKER.replace("os.kill(os.getpid(), signal.SIGKILL)",
                              f"(os.path.exists({str(marker)!r}) or (open({str(marker)!r}, 'w').close(), "
                              "os.kill(os.getpid(), signal.SIGKILL)))"), str(tmp_path)]
    result = subprocess.run(command, timeout=300, capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert marker.exists() and "resumed from" in result.stdout + result.stderr
    assert "at epoch 1 step 2" in result.stdout  # the checkpoint of step 2, the last before the kill
    step_losses = []
    expected, iterations = plain_loop(dict_model, dict_data(45), batch_size=GLOBAL_BATCH, epochs=3,
                                      optimizer="adam", steps_per_epoch=4, step_losses=step_losses)
    reports = [json.loads(line.split("RESULT ", 1)[1]) for line in (result.stdout + result.stderr).splitlines()
               if "RESULT " in line]
    assert len(reports) == 2
    seen = [s for s in running_means(step_losses, steps_per_epoch=4) if tuple(s[:2]) >= (1, 2)]
    epoch_losses = [s[2] for s in seen if s[1] == 3]  # the resumed epoch 1 (all its steps) and epoch 2
    for report in reports:
        assert_close([np.array(w) for w in report["weights"]], expected)
        assert report["iterations"] == iterations == 12
        # callbacks see the steps trained after the resume, with the logs of an uninterrupted run
        assert [s[:2] for s in report["seen"]] == [s[:2] for s in seen]
        np.testing.assert_allclose([s[2] for s in report["seen"]], [s[2] for s in seen], rtol=1e-5)
        np.testing.assert_allclose(report["loss"], epoch_losses, rtol=1e-5)


def test_compute_loss_hook_for_unsupervised_models(two_replicas):
    # An autoencoder: batches are x alone. 2 replicas equal one device.
    x = np.random.default_rng(5).normal(size=(45, 6)).astype("float32")

    def reconstruction(model, batch, training):
        return tf.reduce_mean(tf.square(model(batch, training=training) - batch), axis=-1)

    weights = []
    for strategy in (tfdp.create_strategy("one_device", devices=["/cpu:0"]), two_replicas):
        keras.utils.set_random_seed(7)
        with strategy.scope():
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3), keras.layers.Dense(6)])
        trainer = tfdp.Trainer(model, optimizer=keras.optimizers.SGD(0.1), compute_loss=reconstruction,
                               strategy=strategy)
        history = trainer.fit(tf.data.Dataset.from_tensor_slices(x).batch(8), epochs=3, verbose=0).history
        assert history["loss"][-1] < history["loss"][0] and history["examples_per_sec"][0] > 0
        weights.append(model.get_weights())
    assert_close(weights[1], weights[0])
    with pytest.raises(tfdp.ConfigError, match="exactly one"):
        tfdp.Trainer(model, optimizer="sgd", strategy=two_replicas)


@pytest.mark.parametrize("replicas", [1, 2])
def test_float32_applies_a_non_finite_step_as_keras_does(two_replicas, replicas):
    # Only mixed_float16 skips non-finite steps (its loss scale needs that); in float32 a
    # NaN gradient is applied, as Keras's own optimizers do, so divergence shows.
    strategy = two_replicas if replicas == 2 else tfdp.create_strategy("one_device", devices=["/cpu:0"])
    with strategy.scope():
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    nan_loss = lambda model, batch, training: model(batch, training=training)[:, 0] * float("nan")  # noqa: E731
    trainer = tfdp.Trainer(model, optimizer=keras.optimizers.SGD(0.1), compute_loss=nan_loss, strategy=strategy)
    trainer.fit(tf.data.Dataset.from_tensor_slices(np.ones((4, 2), "float32")).batch(4), epochs=1, verbose=0)
    assert not np.isfinite(model.get_weights()[0]).any()


def test_bfloat16_and_compressed_all_reduce_train_close_to_float32(two_replicas, dtype_policy):
    reference, _, _ = run_trainer(two_replicas, dict_data(45))
    compressed, _, _ = run_trainer(two_replicas, dict_data(45), all_reduce_dtype="bfloat16")
    drift = max(np.abs(a - b).max() for a, b in zip(reference.get_weights(), compressed.get_weights()))
    assert 0 < drift < 0.05  # rounded, not broken
    tfdp.training.set_mixed_precision("mixed_bfloat16")
    mixed, history, trainer = run_trainer(two_replicas, dict_data(45), mixed_precision="mixed_bfloat16")
    assert trainer.loss_scale is None and history["loss"][1] < history["loss"][0]
    assert mixed.layers[-1].compute_dtype == "bfloat16"


DISAGREE_WORKER = """
import os, sys, tensorflow as tf, tfdp
from tests.models import dict_data, dict_model
strategy = tfdp.create_strategy(timeout_seconds=60)
with strategy.scope():
    model = dict_model()
rank = tfdp.cluster.TFConfig.from_env().worker_rank
trainer = tfdp.Trainer(model, optimizer="sgd", loss="mse", strategy=strategy,
                       model_dir=os.path.join(sys.argv[1], str(rank)))  # not shared: each its own
x, y = dict_data(16)
try:
    trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=2, verbose=0)
except tfdp.ConfigError as e:
    print("CONFIG_ERROR", e)
"""


def test_workers_restoring_different_checkpoints_is_a_config_error_not_a_hang(tmp_path, two_replicas):
    with two_replicas.scope():
        model = dict_model()
    x, y = dict_data(16)
    tfdp.Trainer(model, optimizer="sgd", loss="mse", strategy=two_replicas, model_dir=str(tmp_path / "0")).fit(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0)  # only worker 0's has one
    results = run_workers(DISAGREE_WORKER, num_workers=2, timeout=180, args=(str(tmp_path),))
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
        assert "CONFIG_ERROR" in r.stdout and "filesystem every worker shares" in r.stdout


UNTIL_SIGTERM = """
import signal, time


def until_sigterm(seconds=60):
    watch = signal.getsignal(signal.SIGTERM).__self__  # the PreemptionWatch of the running fit
    deadline = time.monotonic() + seconds
    while not watch.signalled and time.monotonic() < deadline:
        time.sleep(0.01)  # Python runs the signal handler between these sleeps
    assert watch.signalled, "tfdp-launch did not pass SIGTERM on"
"""


def test_sigterm_to_the_launcher_saves_at_an_agreed_step_and_the_next_run_resumes_exactly(tmp_path):
    """What a scheduler does before preempting: SIGTERM (here mid-epoch, from worker 0 to tfdp-launch).
    The checkpoint 2 workers wrote resumes on 3 workers and on 1 process (a job requeued in another
    shape), each ending as an uninterrupted one-device run (batches of 12: 2 and 3 divide them)."""
    model_dir, marker = tmp_path / "model_dir", tmp_path / "preempted"
    # Worker 0 then waits until tfdp-launch's SIGTERM reached it too (its preemption watch noted it),
    # so the agreed step is the next one in this epoch however busy the machine is (without the
    # wait, the remaining steps of the epoch could run before the launcher passes the signal on).
    worker = UNTIL_SIGTERM + WORKER.replace(
        "os.kill(os.getpid(), signal.SIGKILL)",
        f"(os.path.exists({str(marker)!r}) or (open({str(marker)!r}, 'w').close(), "
        "os.kill(os.getppid(), signal.SIGTERM), until_sigterm()))")
    env = {**_env(None), "OPTIONS": json.dumps({"fit": {"steps_per_epoch": 4}}), "OPTIMIZER": "adam",
           "KILL_EPOCH": "1", "KILL_STEP": "1", "BATCH": "12"}

    def command(workers):
        return [sys.executable, "-m", "tfdp.launch", "--num_workers", str(workers), "--console", "all",
                "--grace_period", "60", "--", sys.executable, "-c", worker, str(model_dir)]

    first = subprocess.run(command(2), timeout=300, capture_output=True, text=True, cwd=ROOT, env=env)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-3000:]
    assert "preempted (SIGTERM): saved epoch 1 step" in first.stdout
    assert "worker 0 exit code 75, worker 1 exit code 75" in first.stderr  # both saved and exited
    shutil.copytree(model_dir, tmp_path / "for_one_process")
    on_three = subprocess.run(command(3), timeout=300, capture_output=True, text=True, cwd=ROOT, env=env)
    assert on_three.returncode == 0, on_three.stderr[-3000:]
    assert re.search(r"resumed from \S+ at epoch 1 step \d \(written by 2 workers, 2 replicas; now 3 workers, "
                     r"3 replicas\)", on_three.stdout), on_three.stdout[-3000:]
    on_one = run_python(worker, args=(str(tmp_path / "for_one_process"),), timeout=120,
                        env={k: env[k] for k in ("OPTIONS", "OPTIMIZER", "BATCH")})
    assert on_one.returncode == 0, on_one.stderr[-3000:]
    assert "(written by 2 workers, 2 replicas; now 1 worker, 1 replica)" in on_one.stdout
    expected, iterations = plain_loop(dict_model, dict_data(45), batch_size=12, epochs=3,
                                      optimizer="adam", steps_per_epoch=4)
    reports = [json.loads(line.split("RESULT ", 1)[1]) for line in on_three.stdout.splitlines() if "RESULT " in line]
    assert len(reports) == 3
    for report in reports + on_one.json_lines():
        assert_close([np.array(w) for w in report["weights"]], expected)
        assert report["iterations"] == iterations == 12
