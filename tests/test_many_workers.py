"""Three and four workers: fit and the Trainer equal one device, tfdp.data reads every example once per
epoch, and a 3-worker job killed mid-epoch ends as an uninterrupted run.

One job per worker count checks all of it (one start-up each): 46 examples in global batches of
12, so the last batch (10) splits unevenly over 3 (4, 3, 3) and 4 workers (3, 3, 2, 2); Adam on a
learning-rate schedule with global clipping, against the textbook one-device loop.
"""

import json
import sys

from tests.data_sources import write_tfds, write_tfrecords
from tests.models import dict_data, dict_model
from tests.reference import assert_weights_close, plain_loop
from tests.workers import launch, run_workers

N, BATCH, CLIP, EPOCHS = 46, 12, 0.05, 2

WORKER = """
import json, os, signal, sys, keras, tensorflow as tf, tfdp
from tests.data_sources import ids_per_epoch, tfrecord_dataset
from tests.models import OPTIMIZERS, dict_data, dict_model
config = json.loads(sys.argv[1])
strategy = tfdp.create_strategy()  # "auto": TF_CONFIG names the workers
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
report = {"index": index, "data": {}}

x, y = dict_data(config["examples"])
batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(config["batch"])
adam = lambda **kw: keras.optimizers.Adam(  # noqa: E731  (OPTIMIZERS["adam"], with options)
    keras.optimizers.schedules.ExponentialDecay(0.02, decay_steps=3, decay_rate=0.7), **kw)

# A restarted job (TFDP_RESTART_COUNT) takes the data and fit results its workers wrote before
# the kill: only the Trainer's resume is what the restart is about.
saved = config.get("reports_dir") and os.path.join(config["reports_dir"], f"{index}.json")
if int(os.environ.get("TFDP_RESTART_COUNT", "0")) and saved and os.path.exists(saved):
    with open(saved) as f:
        report = json.load(f)
else:
    # tfdp.data: every example once per epoch over all workers, for each way of sharding
    files, n = config["files"], config["n"]
    sources = {
        "range": lambda: tf.data.Dataset.range(n),
        "unseeded shuffle": lambda: tf.data.Dataset.range(n).shuffle(n),
        "fewer files than workers": lambda: tfrecord_dataset(files["2"]),
        "more files than workers": lambda: tfrecord_dataset(files["5"]),
    }
    for name, make in sources.items():
        report["data"][name] = ids_per_epoch(strategy, tfdp.data.distribute(strategy, make(), global_batch_size=12))
    report["data"]["shuffle_buffer"] = ids_per_epoch(strategy, tfdp.data.distribute(
        strategy, tf.data.Dataset.range(n), global_batch_size=12, shuffle_buffer=n))
    import tensorflow_datasets as tfds
    builder = tfds.builder_from_directory(files["tfds"])
    report["data"]["tfds"] = ids_per_epoch(strategy, tfdp.data.distribute(
        strategy, tfdp.data.tfds_dataset_fn(builder, "train"), global_batch_size=12, shard="off"))

    # model.fit
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = dict_model()
        model.compile(optimizer=adam(global_clipnorm=config["clip"]), loss="mse")
    model.fit(batches, epochs=config["epochs"], verbose=0)
    report["fit"] = {"weights": [w.tolist() for w in model.get_weights()],
                     "iterations": int(model.optimizer.iterations.numpy())}

    if saved:
        with open(saved + ".tmp", "w") as f:
            json.dump(report, f)
        os.replace(saved + ".tmp", saved)

# tfdp.Trainer, checkpointing every 2 steps; worker 1 killed once after epoch 1's third step when asked
marker = config.get("kill_marker")

class KillOnce(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if marker and index == 1 and self.epoch == 1 and batch == 2 and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

keras.utils.set_random_seed(7)
with strategy.scope():
    model = dict_model()
model_dir = config.get("model_dir")
trainer = tfdp.Trainer(model, optimizer=adam(), loss="mse", strategy=strategy, global_clipnorm=config["clip"],
                       model_dir=model_dir, save_every_steps=2 if model_dir else None)
trainer.fit(batches, epochs=config["epochs"], verbose=0, callbacks=[KillOnce()])
trainer.close()
report["trainer"] = {"weights": [w.tolist() for w in model.get_weights()],
                     "iterations": int(trainer.optimizer.iterations.numpy())}
print("RESULT " + json.dumps(report), flush=True)
"""


def config(tmp_path, **extra) -> str:
    files = {str(k): write_tfrecords(tmp_path / f"rec{k}", k, N) for k in (2, 5)}
    files["tfds"] = write_tfds(str(tmp_path / "tfds"), N).data_dir
    return json.dumps({"files": files, "n": N, "examples": N, "batch": BATCH, "clip": CLIP, "epochs": EPOCHS,
                       **extra})


def assert_like_one_device(reports, workers):
    assert sorted(report["index"] for report in reports) == list(range(workers))
    expected, iterations = plain_loop(dict_model, dict_data(N), batch_size=BATCH, epochs=EPOCHS,
                                      optimizer="adam", clip=CLIP)
    for report in reports:
        for run in ("fit", "trainer"):
            assert_weights_close(report[run]["weights"], expected)
            assert report[run]["iterations"] == iterations == 8, run
        for name, epochs in report["data"].items():
            assert all(epochs), f"{name}: worker {report['index']} saw nothing"
    for name in reports[0]["data"]:
        for epoch in range(2):
            every = sorted(i for report in reports for i in report["data"][name][epoch])
            assert every == list(range(N)), f"{name}, epoch {epoch}: not every example once"


def test_three_workers_equal_one_device_and_a_killed_worker_restarts_to_the_same_end(tmp_path):
    marker, reports = tmp_path / "killed", tmp_path / "reports"
    reports.mkdir()
    result = launch(["--num_workers", "3", "--max_restarts", "1", "--grace_period", "5", "--",
                     sys.executable, "-c", WORKER,
                     config(tmp_path, model_dir=str(tmp_path / "model_dir"), kill_marker=str(marker),
                            reports_dir=str(reports))],
                    timeout=420)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert marker.exists() and "worker 1 failed first (killed by signal SIGKILL)" in result.stderr
    assert "at epoch 1 step 2" in output  # the Trainer's checkpoint before the kill, on 3 workers again
    reports = [json.loads(line.split("RESULT ", 1)[1]) for line in output.splitlines() if "RESULT " in line]
    assert_like_one_device(reports, 3)
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["0.json", "1.json", "2.json"]


def test_four_workers_equal_one_device(tmp_path):
    results = run_workers(WORKER, num_workers=4, timeout=300, args=(config(tmp_path),))
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    assert_like_one_device([r.json_lines()[0] for r in results], 4)
