"""tfdp.Trainer under float16 and compressed all-reduces: trains as well as Keras, never overflows silently."""

import numpy as np
import pytest
import keras
import tensorflow as tf

import tfdp
from tfdp.training import all_reduce


@pytest.fixture
def mixed_float16(dtype_policy):
    tfdp.training.set_mixed_precision("mixed_float16")


def mlp():
    return keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, activation="tanh"),
                             keras.layers.Dense(64, activation="tanh"), keras.layers.Dense(1, dtype="float32")])


def regression(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype("float32")
    return x, np.sin(x[:, :4]).sum(axis=1, keepdims=True).astype("float32")


def trainer_run(strategy, precision, data, *, steps):
    keras.utils.set_random_seed(3)
    with strategy.scope():
        model = mlp()
    trainer = tfdp.Trainer(model, optimizer=keras.optimizers.SGD(0.01), loss="mse", strategy=strategy,
                           mixed_precision=precision, steps_per_execution=10)
    trainer.fit(tf.data.Dataset.from_tensor_slices(data).batch(64), epochs=1, steps_per_epoch=steps, verbose=0)
    return model, trainer


def test_a_100_step_float16_run_skips_no_more_than_keras_and_tracks_float32(two_replicas, mixed_float16):
    data = regression(6400)
    model16, trainer = trainer_run(two_replicas, "mixed_float16", data, steps=100)
    skipped = int(trainer.skipped_steps.numpy())
    assert skipped + int(trainer.optimizer.iterations.numpy()) == 100
    # Keras's LossScaleOptimizer (model.fit under mixed_float16) on one device, same model and data.
    keras.utils.set_random_seed(3)
    reference = mlp()
    reference.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    reference.fit(*data, batch_size=64, epochs=1, verbose=0, shuffle=False)
    keras_skipped = 100 - int(reference.optimizer.iterations.numpy())
    assert skipped <= keras_skipped + 1, (skipped, keras_skipped)
    keras.mixed_precision.set_dtype_policy("float32")
    model32, _ = trainer_run(two_replicas, None, data, steps=100)
    scale = max(np.abs(w).max() for w in model32.get_weights())
    drift = max(np.abs(a - b).max() for a, b in zip(model16.get_weights(), model32.get_weights()))
    assert drift / scale < 1e-2, drift / scale


def test_after_a_nan_on_one_replica_the_next_good_steps_apply(two_replicas, mixed_float16):
    x, y = regression(5 * 64)
    x[40] = np.nan  # replica 1's half of the first global batch
    keras.utils.set_random_seed(3)
    with two_replicas.scope():
        model = mlp()
    trainer = tfdp.Trainer(model, optimizer=keras.optimizers.SGD(0.01), loss="mse", strategy=two_replicas,
                           mixed_precision="mixed_float16")
    before = [w.copy() for w in model.get_weights()]
    trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).take(64).batch(64), epochs=1, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # skipped everywhere
    assert float(trainer.loss_scale.scale.numpy()) == 2.0 ** 14
    trainer.fit(tf.data.Dataset.from_tensor_slices((x[64:], y[64:])).batch(64), epochs=1, verbose=0)
    assert int(trainer.optimizer.iterations.numpy()) >= 3  # of the 4 good steps
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_compressed_count_is_exact_at_4096_examples_x_16_micro_batches(two_replicas):
    grads = [tf.fill([3], 2.0 ** 15)]  # sums that would overflow float16 if sent undivided

    @tf.function
    def reduce(dtype):
        return two_replicas.run(lambda: all_reduce.mean_gradients(
            [grads], tf.constant([4096.0 * 16]), counts_at=[0], replicas=2, dtype=dtype))

    for dtype in ("float16", "bfloat16", "float32"):
        means, total = (two_replicas.experimental_local_results(v)[0] for v in reduce(dtype))
        assert float(total[0]) == 2 * 4096 * 16
        np.testing.assert_allclose(means[0].numpy(), 2 * 2.0 ** 15 / (2 * 4096 * 16), rtol=1e-2)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_compressed_all_reduce_at_4096_x_16_trains_as_float32(two_replicas, dtype):
    x, y = regression(2 * 4096 * 16 * 2, seed=1)
    data = tf.data.Dataset.from_tensor_slices((x * 100, y * 100)).batch(2 * 4096)  # large sums

    def run(all_reduce_dtype):
        keras.utils.set_random_seed(3)
        with two_replicas.scope():
            model = mlp()
        trainer = tfdp.Trainer(model, optimizer=keras.optimizers.SGD(1e-5), loss="mse", strategy=two_replicas,
                               gradient_accumulation_steps=16, all_reduce_dtype=all_reduce_dtype)
        trainer.fit(data, epochs=1, verbose=0)
        assert int(trainer.optimizer.iterations.numpy()) == 2 and int(trainer.skipped_steps.numpy()) == 0
        return model.get_weights()

    reference, compressed = run("float32"), run(dtype)
    scale = max(np.abs(w).max() for w in reference)
    assert max(np.abs(a - b).max() for a, b in zip(reference, compressed)) / scale < 1e-2


def test_the_optimizers_loss_scale_factor_is_honoured(two_replicas):
    data = regression(640)

    def run(**optimizer_options):
        keras.utils.set_random_seed(3)
        with two_replicas.scope():
            model = mlp()
        trainer = tfdp.Trainer(model, optimizer=keras.optimizers.SGD(0.01, **optimizer_options), loss="mse",
                               strategy=two_replicas, global_clipnorm=0.5)  # SGD: a lost factor shows
        trainer.fit(tf.data.Dataset.from_tensor_slices(data).batch(64), epochs=2, verbose=0)
        return model.get_weights()

    for a, b in zip(run(), run(loss_scale_factor=128.0)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
