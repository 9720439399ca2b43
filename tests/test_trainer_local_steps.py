"""tfdp.Trainer(local_steps=H) against independent per-replica loops written here, averaged by hand."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfdp
from tests.models import GLOBAL_BATCH, OPTIMIZERS, dict_data, dict_model, fp16_model
from tests.reference import assert_weights_close as assert_close, plain_loop, textbook_step
from tests.test_trainer import run_trainer
from tests.workers import run_workers

REPLICAS = 2


def local_sgd_reference(data, *, local_steps, epochs, optimizer="sgd", clip=None, outer=None,
                        steps_per_epoch=None, split="chunks", accumulate=1):
    """N independent one-device runs, each on its share of every global batch, averaged every H updates
    and at the end of every epoch; with `outer`, DiLoCo: outer step on (previous average - average).

    split: how a global batch is shared, as tfdp documents it: "chunks" (replicas of one process:
    consecutive per-replica batches, a short last batch filling the first replicas first) or
    "interleave" (workers: worker w keeps every N-th example, from the w-th). With `accumulate`
    K, a replica's step is over its shares of K global batches (a final smaller group as it is).
    """
    x, y = data
    keras.utils.set_random_seed(7)
    first = dict_model()
    models = [first] + [dict_model() for _ in range(REPLICAS - 1)]
    for m in models[1:]:
        m.set_weights(first.get_weights())
    opts = [OPTIMIZERS[optimizer]() for _ in models]
    anchor = [tf.Variable(w) for w in first.trainable_weights] if outer else None
    outer_opt = outer() if outer else None
    batches = [list(range(i, min(i + GLOBAL_BATCH, len(y)))) for i in range(0, len(y), GLOBAL_BATCH)]

    def average():  # the weights and the optimizers' float slots
        mean = [np.mean(ws, axis=0) for ws in zip(*[m.get_weights() for m in models])]
        for m in models:
            m.set_weights(mean)
        slots = [[v for v in o.variables if v.dtype == "float32"] for o in opts]
        for same in zip(*slots):
            value = np.mean([v.numpy() for v in same], axis=0)
            for v in same:
                v.assign(value)
        if outer:
            mean_trainable = [tf.convert_to_tensor(w) for w in first.trainable_weights]
            outer_opt.apply_gradients(zip([a - w for a, w in zip(anchor, mean_trainable)], anchor))
            for m in models:
                for v, a in zip(m.trainable_weights, anchor):
                    v.assign(a)

    for _ in range(epochs):
        since = 0
        order = batches if steps_per_epoch is None else [batches[i % len(batches)] for i in range(steps_per_epoch)]
        groups = [order[i:i + accumulate] for i in range(0, len(order), accumulate)]
        for group in groups:
            per_replica = GLOBAL_BATCH // REPLICAS  # tf.distribute splits a short last batch in these chunks
            for r, (model, opt) in enumerate(zip(models, opts)):
                shard = [i for index in group for i in (index[r * per_replica:(r + 1) * per_replica]
                                                        if split == "chunks" else index[r::REPLICAS])]
                if not shard:  # an empty share: a step with a zero gradient (the Trainer's rule)
                    opt.apply_gradients(zip([tf.zeros_like(v) for v in model.trainable_variables],
                                            model.trainable_variables))
                    continue
                textbook_step(model, opt, {k: v[shard] for k, v in x.items()}, y[shard], clip=clip)
            since += 1
            if since == local_steps:
                average()
                since = 0
        if since:
            average()
    return first.get_weights(), int(opts[0].iterations.numpy())


@pytest.mark.parametrize("optimizer,options,reference,n", [
    ("sgd", dict(local_steps=2), dict(local_steps=2), 44),  # 6 steps: 3 averages an epoch
    ("sgd", dict(local_steps=4), dict(local_steps=4), 44),  # the epoch ends 2 updates into a round
    ("adam", dict(local_steps=2), dict(local_steps=2), 45),  # replica 1's share of the last batch: 1 of 5
    ("adam", dict(local_steps=3, global_clipnorm=0.05, steps_per_execution=2), dict(local_steps=3, clip=0.05), 36),
    ("adam", dict(local_steps=2, gradient_accumulation_steps=2, global_clipnorm=0.05),
     dict(local_steps=2, accumulate=2, clip=0.05), 44),  # 3 steps of 2 batches, the last of 1 batch of 4
], ids=["sgd-h2", "sgd-h4-epoch-ends-mid-round", "adam-h2-uneven", "adam-h3-clip-steps_per_execution",
        "adam-h2-accumulation-clip"])
def test_local_steps_on_two_replicas_equal_independent_runs_averaged(two_replicas, optimizer, options,
                                                                        reference, n):
    model, _, trainer = run_trainer(two_replicas, dict_data(n), epochs=2, optimizer=optimizer, **options)
    expected, iterations = local_sgd_reference(dict_data(n), epochs=2, optimizer=optimizer, **reference)
    assert_close(model.get_weights(), expected)
    assert int(trainer.optimizer.iterations.numpy()) == iterations
    for variable in model.weights:  # after the epoch's average both replicas hold the same weights
        copies = [t.numpy() for t in variable.value.values]
        np.testing.assert_array_equal(copies[0], copies[1])


def test_the_replicas_really_drift_apart_between_averages(two_replicas):
    """Averaging every 100 updates (never within the epoch) is not the synchronous result."""
    local, _, _ = run_trainer(two_replicas, dict_data(44), epochs=1, local_steps=100)
    synchronous, _ = plain_loop(dict_model, dict_data(44), batch_size=GLOBAL_BATCH, epochs=1)
    assert max(np.abs(a - b).max() for a, b in zip(local.get_weights(), synchronous)) > 1e-3
    expected, _ = local_sgd_reference(dict_data(44), local_steps=100, epochs=1)
    assert_close(local.get_weights(), expected)


def test_local_steps_one_is_the_synchronous_trainer(two_replicas):
    model, _, _ = run_trainer(two_replicas, dict_data(45), epochs=2, optimizer="adam", local_steps=1)
    expected, _ = plain_loop(dict_model, dict_data(45), batch_size=GLOBAL_BATCH, epochs=2, optimizer="adam")
    assert_close(model.get_weights(), expected)


def test_an_outer_nesterov_optimizer_as_diloco(two_replicas):
    outer = lambda: keras.optimizers.SGD(0.7, momentum=0.9, nesterov=True)  # noqa: E731
    model, _, _ = run_trainer(two_replicas, dict_data(44), epochs=2, optimizer="adam", local_steps=2,
                              outer_optimizer=outer())
    expected, _ = local_sgd_reference(dict_data(44), local_steps=2, epochs=2, optimizer="adam", outer=outer)
    assert_close(model.get_weights(), expected)


@pytest.mark.parametrize("options,message", [
    (dict(outer_optimizer="sgd"), "give local_steps > 1 too"),
    (dict(local_steps=0), "local_steps"),
    (dict(local_steps=2, all_reduce_dtype="bfloat16"), "always in float32"),
    (dict(local_steps=4, save_every_steps=6, model_dir="/tmp/unused"), "a multiple of local_steps"),
])
def test_bad_local_step_options_are_config_errors(two_replicas, options, message):
    with two_replicas.scope():
        model = dict_model()
    with pytest.raises(tfdp.ConfigError, match=message):
        tfdp.Trainer(model, optimizer="sgd", loss="mse", strategy=two_replicas, **options)


WORKER = """
import json, os, sys, keras, tensorflow as tf, tfdp
from tests.models import OPTIMIZERS, dict_data, dict_model
strategy = tfdp.create_strategy()
x, y = dict_data(44)
keras.utils.set_random_seed(7)
with strategy.scope():
    model = dict_model()
options = json.loads(os.environ["OPTIONS"])
trainer = tfdp.Trainer(model, optimizer=OPTIMIZERS[os.environ["OPTIMIZER"]](), loss="mse", strategy=strategy,
                       model_dir=sys.argv[1] if len(sys.argv) > 1 else None, **options)
trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=2, verbose=0)
trainer.close()
print("RESULT " + json.dumps({"weights": [w.tolist() for w in model.get_weights()],
                              "iterations": int(trainer.optimizer.iterations.numpy())}))
"""


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_workers_average_to_identical_weights_equal_to_the_reference(optimizer):
    results = run_workers(WORKER, num_workers=2, timeout=180,
                          env={"OPTIONS": json.dumps({"local_steps": 4}), "OPTIMIZER": optimizer})
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    reports = [r.json_lines()[0] for r in results]
    assert reports[0]["weights"] == reports[1]["weights"]  # bit for bit after the average
    expected, iterations = local_sgd_reference(dict_data(44), local_steps=4, epochs=2, optimizer=optimizer,
                                               split="interleave")
    assert_close([np.array(w) for w in reports[0]["weights"]], expected)
    assert reports[0]["iterations"] == iterations


RESUME = """
import json, os, signal, sys, keras, tensorflow as tf, tfdp
strategy = tfdp.create_strategy("mirrored", num_cpu_replicas=2)
from tests.models import OPTIMIZERS, dict_data, dict_model
x, y = dict_data(44)
keras.utils.set_random_seed(7)
with strategy.scope():
    model = dict_model()
trainer = tfdp.Trainer(model, optimizer=OPTIMIZERS["adam"](), loss="mse", strategy=strategy, model_dir=sys.argv[1],
                       local_steps=2, save_every_steps=2,
                       outer_optimizer=keras.optimizers.SGD(0.7, momentum=0.9, nesterov=True))

class Kill(keras.callbacks.Callback):  # SIGKILL after epoch 1's step 3, the first time
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 2 and os.environ.get("KILL"):
            os.kill(os.getpid(), signal.SIGKILL)

trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=2, verbose=0, callbacks=[Kill()])
print("RESULT " + json.dumps({"weights": [w.tolist() for w in model.get_weights()]}))
"""


def test_a_run_killed_between_averages_resumes_from_the_last_one_and_ends_the_same(tmp_path):
    import signal
    from tests.workers import run_python
    killed = run_python(RESUME, args=(str(tmp_path),), env={"KILL": "1"}, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run_python(RESUME, args=(str(tmp_path),), timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at epoch 1 step 2" in resumed.stdout  # the last save: an averaging boundary
    outer = lambda: keras.optimizers.SGD(0.7, momentum=0.9, nesterov=True)  # noqa: E731
    expected, _ = local_sgd_reference(dict_data(44), local_steps=2, epochs=2, optimizer="adam", outer=outer)
    assert_close([np.array(w) for w in resumed.json_lines()[0]["weights"]], expected)


FLOAT16_WORKER = """
import json, sys, keras, numpy as np, tensorflow as tf, tfdp
strategy = tfdp.create_strategy()
tfdp.training.set_mixed_precision("mixed_float16")
from tests.models import fp16_model
rng = np.random.default_rng(3)
x = rng.normal(size=(256, 4)).astype("float32")
y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], "float32")).astype("float32")
keras.utils.set_random_seed(7)
with strategy.scope():
    model = fp16_model()
trainer = tfdp.Trainer(model, optimizer=keras.optimizers.SGD(0.05), loss="mse", strategy=strategy,
                       mixed_precision="mixed_float16", local_steps=4, model_dir=sys.argv[1])
history = trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=4, verbose=0)
print("RESULT " + json.dumps({"loss": history.history["loss"], "scale": float(trainer.loss_scale.scale.numpy()),
                              "weights": [w.tolist() for w in model.get_weights()]}))
"""


def test_float16_local_steps_keep_a_loss_scale_per_worker_and_train(tmp_path, dtype_policy):
    results = run_workers(FLOAT16_WORKER, num_workers=2, timeout=180, args=(str(tmp_path),))
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    reports = [r.json_lines()[0] for r in results]
    assert reports[0]["weights"] == reports[1]["weights"]  # averaged at the end of each epoch
    for report in reports:
        assert report["loss"][-1] < 0.2 * report["loss"][0]  # it learns the linear map
        assert report["scale"] > 1  # a finite, working loss scale of its own
    # Its checkpoint (a loss scale per replica) cannot resume on another number of replicas.
    dtype_policy("mixed_float16")
    one = tfdp.create_strategy("one_device", devices=["/cpu:0"])
    with one.scope():
        model = fp16_model()
    trainer = tfdp.Trainer(model, optimizer=keras.optimizers.SGD(0.05), loss="mse", strategy=one,
                           mixed_precision="mixed_float16", local_steps=4, model_dir=str(tmp_path))
    data = tf.data.Dataset.from_tensor_slices((np.ones((16, 4), "float32"), np.ones((16, 1), "float32"))).batch(16)
    with pytest.raises(tfdp.ConfigError, match="written by 2 replicas, each with a float16 loss scale of its own, "
                                               "and cannot resume on 1. Fix: resume on 2 replicas"):
        trainer.fit(data, epochs=5, verbose=0)
