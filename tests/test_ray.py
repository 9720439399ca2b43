"""Ray Train: a real local Ray cluster, 2 TensorflowTrainer workers, tfdp inside, against one device."""

import json
import os

import numpy as np
import pytest

import tfdp
from tests.models import GLOBAL_BATCH, OPTIMIZERS, dict_data, dict_model, train
from tests.reference import assert_weights_close as assert_close, plain_loop
from tests.workers import Result, once_per_run, run_python

# The Ray driver: starts one local Ray cluster and one TensorflowTrainer of 2 workers that trains
# the cases one after the other (each in a directory of its own: its own backup, checkpoints, kill
# marker and result). A killed worker makes Ray restart both; the restarted loop passes over the
# cases that wrote their result and resumes the one that was killed. Prints one RESULT line.
DRIVER = """
import json, os, sys
import ray
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.tensorflow import TensorflowTrainer

def train_loop(config):
    import ray.train, tfdp
    strategy = tfdp.create_strategy()  # "auto": the TF_CONFIG Ray wrote names 2 workers
    for case in config["cases"]:
        if not os.path.exists(os.path.join(case["out"], "result.json")):  # not finished before a restart
            train_case(strategy, ray.train.get_context().get_world_rank(), **case)

def train_case(strategy, rank, case, out, loop, kill):
    import os, signal, keras, tensorflow as tf, tfdp
    import ray.train
    from tests.models import OPTIMIZERS, dict_data, dict_model
    marker = os.path.join(out, "killed")
    x, y = dict_data(45)
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    keras.backend.clear_session()  # the layers' names (which the backup's file holds) as in a fresh process
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = dict_model()

    class Report(keras.callbacks.Callback):  # every worker reports; the chief adds its checkpoint
        def on_epoch_end(self, epoch, logs=None):
            checkpoint = None
            if tfdp.is_chief(strategy):
                directory = os.path.join(out, f"epoch-{epoch}")
                os.makedirs(directory, exist_ok=True)
                self.model.save_weights(os.path.join(directory, "model.weights.h5"))
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report({"case": case, "epoch": epoch, "loss": float(logs["loss"])}, checkpoint=checkpoint)

    class KillOnce(keras.callbacks.Callback):  # SIGKILL of worker 1 mid-epoch, on the first attempt only
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if kill and rank == 1 and self.epoch == 1 and batch == 2 and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)

    if loop == "fit":
        with strategy.scope():
            model.compile(optimizer=OPTIMIZERS["adam"](), loss="mse")
        backup = keras.callbacks.BackupAndRestore(os.path.join(out, "backup"))
        model.fit(batches, epochs=3, verbose=0, callbacks=[backup, KillOnce(), Report()])
        iterations = int(model.optimizer.iterations.numpy())
    else:
        trainer = tfdp.Trainer(model, optimizer=OPTIMIZERS["adam"](), loss="mse", strategy=strategy,
                               model_dir=os.path.join(out, "model_dir"))
        trainer.fit(batches, epochs=3, verbose=0, callbacks=[KillOnce(), Report()])
        iterations = int(trainer.optimizer.iterations.numpy())
    if rank == 0:
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump({"weights": [w.tolist() for w in model.get_weights()], "iterations": iterations,
                       "keras": keras.__version__, "legacy": os.environ.get("TF_USE_LEGACY_KERAS")}, f)

ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
try:
    cases, storage = json.loads(sys.argv[1]), sys.argv[2]
    try:
        result = TensorflowTrainer(
            train_loop, train_loop_config={"cases": cases},
            scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(storage_path=storage, name="tfdp",
                                 failure_config=FailureConfig(max_failures=len(cases))),
        ).fit()
        report = {"checkpoints": [metrics for _, metrics in result.best_checkpoints or []],
                  "error": repr(result.error) if result.error else None}
    except Exception as e:
        report = {"checkpoints": [], "error": repr(e)}
    print("RESULT " + json.dumps(report), flush=True)
finally:
    ray.shutdown()
"""

CASES = {"fit": ("fit", False), "fit-worker-killed": ("fit", True), "trainer-worker-killed": ("trainer", True)}


@pytest.fixture(scope="session")
def ray_runs(tmp_path_factory):
    """The three cases, one after the other in one Ray Train run (once per test run):
    {case: (its directory, driver result)}."""
    def job(directory):
        cases = [{"case": case, "out": str(directory / case), "loop": loop, "kill": kill}
                 for case, (loop, kill) in CASES.items()]
        for case in cases:
            os.makedirs(case["out"])
        return run_python(DRIVER, args=(json.dumps(cases), str(directory / "ray_results")), timeout=900).as_dict()

    directory, result = once_per_run(tmp_path_factory, "ray", job)
    return {case: (directory / case, Result(**result)) for case in CASES}


@pytest.mark.xdist_group("ray")  # one Ray Train run for the three cases
@pytest.mark.parametrize("case", CASES)
def test_ray_train_with_tfdp_equals_one_device(ray_runs, case):
    (loop, kill), (tmp_path, result) = CASES[case], ray_runs[case]
    assert result.returncode == 0, result.stderr[-4000:]
    [report] = result.json_lines()
    assert report["error"] is None
    epochs = [metrics["epoch"] for metrics in report["checkpoints"] if metrics["case"] == case]
    assert epochs and max(epochs) == 2  # the chief's checkpoints reached the third epoch
    assert (tmp_path / "killed").exists() == kill
    got = json.loads((tmp_path / "result.json").read_text())
    assert got["keras"].startswith("3.") and got["legacy"] == "1"  # Keras 3 under Ray's TF_USE_LEGACY_KERAS=1
    if loop == "fit":
        reference, _ = train(tfdp.create_strategy("one_device", devices=["/cpu:0"]), dict_model, dict_data(45),
                             epochs=3, optimizer=OPTIMIZERS["adam"])
        expected, iterations = reference.get_weights(), int(reference.optimizer.iterations.numpy())
    else:
        expected, iterations = plain_loop(dict_model, dict_data(45), batch_size=GLOBAL_BATCH, epochs=3,
                                          optimizer="adam")
    assert_close([np.array(w) for w in got["weights"]], expected)
    assert got["iterations"] == iterations
    assert "this machine's own network address" in result.stderr  # Ray names the node IP, not loopback
    assert "beyond this machine" not in result.stderr
