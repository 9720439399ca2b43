"""tfdp.data: batch arithmetic, and every example exactly once per epoch."""

import json
import logging

import numpy as np
import pytest
import tensorflow as tf

import tfdp
from tests.data_sources import ids_per_epoch, tfrecord_dataset, write_tfds, write_tfrecords
from tests.workers import Result, once_per_run, run_workers
from tfdp import data

N = 45


def test_batch_arithmetic(two_replicas):
    assert data.per_replica_batch_size(64, two_replicas) == 32
    assert data.global_batch_size(32, two_replicas) == 64
    assert data.per_worker_batch_size(64, two_replicas) == 64  # one worker: both replicas
    with pytest.raises(tfdp.ConfigError, match=r"global_batch_size=9 does not divide by the 2 replicas.*8 or 10"):
        data.per_replica_batch_size(9, two_replicas)
    with pytest.raises(tfdp.ConfigError, match=r"per_replica_batch_size=0"):
        data.global_batch_size(0, two_replicas)
    with pytest.raises(tfdp.ConfigError, match='Did you mean "data"'):
        data.distribute(two_replicas, tf.data.Dataset.range(4), global_batch_size=2, shard="dta")


@pytest.mark.parametrize("source", ["range", "unseeded shuffle", "tfrecord", "function"])
def test_two_replicas_see_every_example_once(two_replicas, source, tmp_path):
    dataset = {
        "range": lambda: tf.data.Dataset.range(N),
        "unseeded shuffle": lambda: tf.data.Dataset.range(N).shuffle(N),
        "tfrecord": lambda: tfrecord_dataset(write_tfrecords(tmp_path, 3, N)),
        "function": lambda: (lambda context: tf.data.Dataset.range(N)),
    }[source]()
    for epoch in ids_per_epoch(two_replicas, data.distribute(two_replicas, dataset, global_batch_size=8)):
        assert sorted(epoch) == list(range(N))


def test_shuffle_buffer_gives_a_new_order_each_epoch_and_every_example_once(two_replicas):
    distributed = data.distribute(two_replicas, tf.data.Dataset.range(N), global_batch_size=8, shuffle_buffer=N,
                                  shuffle_seed=3)
    first, second = ids_per_epoch(two_replicas, distributed)
    assert sorted(first) == sorted(second) == list(range(N)) and first != second


def test_drop_remainder_drops_only_the_partial_batch(two_replicas):
    distributed = data.distribute(two_replicas, tf.data.Dataset.range(N), global_batch_size=8,
                                  drop_remainder=True)
    assert sorted(ids_per_epoch(two_replicas, distributed, epochs=1)[0]) == list(range(40))


def test_tfds_helper_reads_the_whole_split(two_replicas, tmp_path):
    builder = write_tfds(str(tmp_path), N)
    distributed = data.distribute(two_replicas, data.tfds_dataset_fn(builder, "train"), global_batch_size=8,
                                  shard="off")
    assert sorted(ids_per_epoch(two_replicas, distributed, epochs=1)[0]) == list(range(N))


def test_source_files_counts_the_files_a_dataset_reads(tmp_path):
    names = write_tfrecords(tmp_path, 3, 9)
    assert data.source_files(tfrecord_dataset(names)) == 3
    assert data.source_files(tf.data.TFRecordDataset(names[:2])) == 2
    assert data.source_files(tf.data.Dataset.range(3)) is None


def test_warnings_for_small_and_infinite_datasets(two_replicas, caplog):
    data._warned.clear()
    with caplog.at_level(logging.WARNING, logger="tfdp"):
        data.distribute(two_replicas, tf.data.Dataset.range(4), global_batch_size=8)
        data.distribute(two_replicas, tf.data.Dataset.range(4).repeat(), global_batch_size=8)
    assert "fewer than one global batch of 8" in caplog.text
    assert "the dataset is infinite" in caplog.text


WORKER = """
import json, sys, tensorflow as tf, tfdp
from tests.data_sources import ids_per_epoch, tfrecord_dataset
from tfdp import data
strategy = tfdp.create_strategy()
files = json.loads(sys.argv[1])
sources = {{
    "range": lambda: tf.data.Dataset.range({n}),
    "unseeded shuffle": lambda: tf.data.Dataset.range({n}).shuffle({n}),
    "fewer files than workers": lambda: tfrecord_dataset(files["1"]),
    "more files than workers": lambda: tfrecord_dataset(files["4"]),
    "lopsided files": lambda: tfrecord_dataset(files["3"]),
}}
report = {{name: ids_per_epoch(strategy, data.distribute(strategy, make(), global_batch_size=8))
          for name, make in sources.items()}}
report["shuffle_buffer"] = ids_per_epoch(strategy, data.distribute(
    strategy, tf.data.Dataset.range({n}), global_batch_size=8, shuffle_buffer={n}))
import tensorflow_datasets as tfds
builder = tfds.builder_from_directory(files["tfds"])
report["tfds"] = ids_per_epoch(strategy, data.distribute(strategy, data.tfds_dataset_fn(builder, "train"),
                                                          global_batch_size=8, shard="off"))
try:
    data.distribute(strategy, tfrecord_dataset(files["1"]), global_batch_size=8, shard="file")
    for _ in data.distribute(strategy, tfrecord_dataset(files["1"]), global_batch_size=8, shard="file"):
        pass
except tfdp.ConfigError as e:
    report["file error"] = str(e)
print("RESULT " + json.dumps(report))
"""


def test_two_workers_see_every_example_once_per_epoch(tmp_path, caplog):
    files = {str(k): write_tfrecords(tmp_path / f"rec{k}", k, N) for k in (1, 3, 4)}
    files["tfds"] = write_tfds(str(tmp_path / "tfds"), N).data_dir
    results = run_workers(WORKER.format(n=N), num_workers=2, timeout=180, args=(json.dumps(files),))
    for r in reversed(results):  # a crashed worker 1 takes worker 0 down with it: show it first
        assert r.returncode == 0, r.stderr[-3000:]
    reports = [r.json_lines()[0] for r in results]
    for name in ("range", "unseeded shuffle", "fewer files than workers", "more files than workers",
                 "lopsided files", "tfds", "shuffle_buffer"):
        for epoch in range(2):
            per_worker = [report[name][epoch] for report in reports]
            assert all(per_worker), f"{name}: a worker saw nothing"
            assert sorted(per_worker[0] + per_worker[1]) == list(range(N)), f"{name}, epoch {epoch}"
    shuffled = reports[0]["unseeded shuffle"]
    assert shuffled[0] != shuffled[1]  # a new order every epoch
    assert "fewer than the 2 input pipelines" in reports[0]["file error"]
    chief_log = results[0].stderr
    assert "sharding by FILE (4 files over 2 workers)" in chief_log or "sharding by" in chief_log
    assert "3 files on 2 workers" in chief_log


VOTE_WORKER = """
import json, os, sys, keras, numpy as np, tensorflow as tf, tfdp
from tests.models import OPTIMIZERS, dict_data, dict_model
strategy = tfdp.create_strategy()
for n, how in json.loads(sys.argv[1]):  # each case trains a model of its own
    x, y = dict_data(n)
    if how == "global":  # full global batches: every worker gets the same number of full batches
        data = tfdp.data.distribute_global_batches(strategy, tf.data.Dataset.from_tensor_slices((x, y)).batch(
            8, drop_remainder=True))
    else:  # unbatched, DATA-sharded, dropping remainders: worker 0 may get one more full batch
        data = tfdp.data.distribute(strategy, tf.data.Dataset.from_tensor_slices((x, y)), global_batch_size=8,
                                    drop_remainder=True)
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = dict_model()
    trainer = tfdp.Trainer(model, optimizer=OPTIMIZERS["adam"](), loss="mse", strategy=strategy)
    trainer.fit(data, epochs=2, verbose=0)
    print("RESULT " + json.dumps({"n": n, "how": how, "vote": bool(data._enable_get_next_as_optional),
                                  "weights": [w.tolist() for w in model.get_weights()]}), flush=True)
"""
VOTE_CASES = [(44, "global", False), (48, "unbatched", False),
              (47, "unbatched", True)]  # 47: 24 and 23 examples, 6 and 5 batches


@pytest.fixture(scope="session")
def vote_runs(tmp_path_factory):
    """Every case in one 2-worker job (one start-up, once per test run), one after the other."""
    _, results = once_per_run(tmp_path_factory, "vote", lambda _: [r.as_dict() for r in run_workers(
        VOTE_WORKER, num_workers=2, timeout=240, args=(json.dumps([[n, how] for n, how, _ in VOTE_CASES]),))])
    return [Result(**r) for r in results]


@pytest.mark.xdist_group("vote")  # one job for the three cases
@pytest.mark.parametrize("n,how,vote", VOTE_CASES)
def test_the_end_of_data_vote_is_skipped_only_where_every_worker_has_the_same_full_batches(vote_runs, n, how, vote):
    for r in vote_runs:  # a wrong skip would leave worker 0 waiting for worker 1 in a 6th step: a timeout
        assert r.returncode == 0, r.stderr[-3000:]
    reports = [next(line for line in r.json_lines() if (line["n"], line["how"]) == (n, how)) for r in vote_runs]
    assert [rep["vote"] for rep in reports] == [vote, vote]
    assert reports[0]["weights"] == reports[1]["weights"]
    if how == "global":  # the 5 full batches of 8, as on one device
        from tests.models import dict_data, dict_model
        from tests.reference import assert_weights_close as assert_close, plain_loop
        x, y = dict_data(n)
        expected, _ = plain_loop(dict_model, ({k: v[:40] for k, v in x.items()}, y[:40]), batch_size=8, epochs=2,
                                 optimizer="adam")
        assert_close([np.array(w) for w in reports[0]["weights"]], expected)
