"""model.fit/evaluate/predict under 2 CPU replicas equal one device at the same global batch."""

import numpy as np
import pytest
import tensorflow as tf
import keras

import tfdp
from tests.models import GLOBAL_BATCH, conv_data, conv_model, dict_data, dict_model, fp16_fit_with_a_nan_on_replica_1, train

@pytest.fixture
def strategies():
    return (tfdp.create_strategy("one_device", devices=["/cpu:0"]),
            tfdp.create_strategy("mirrored", num_cpu_replicas=2))


def assert_same_weights(a, b, atol=1e-5):
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, atol=atol, rtol=0)


@pytest.mark.parametrize("n", [40, 45, 41], ids=["even", "uneven last batch", "empty replica share"])
def test_fit_on_two_replicas_equals_one_device(strategies, n):
    one, two = strategies
    reference, ref_history = train(one, dict_model, dict_data(n))
    replicated, history = train(two, dict_model, dict_data(n))
    assert_same_weights(reference, replicated)
    np.testing.assert_allclose(history["loss"], ref_history["loss"], rtol=1e-5)


def test_evaluate_and_predict_match_one_device(strategies):
    one, two = strategies
    x, y = dict_data(41)
    reference, _ = train(one, dict_model, (x, y), epochs=1)
    replicated, _ = train(two, dict_model, (x, y), epochs=1)
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    np.testing.assert_allclose(replicated.evaluate(batches, verbose=0),
                               reference.evaluate(batches, verbose=0), rtol=1e-5)
    inputs = tf.data.Dataset.from_tensor_slices(x).batch(GLOBAL_BATCH)
    predicted = replicated.predict(inputs, verbose=0)
    assert predicted.shape == (41, 1)  # every example once, in order
    np.testing.assert_allclose(predicted, reference.predict(inputs, verbose=0), atol=1e-5)


def test_conv_model_survives_an_empty_replica_share(strategies):
    one, two = strategies
    data = conv_data(33)  # last global batch: 1 example, so replica 1 gets none
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    reference, _ = train(one, conv_model, data, loss=loss)
    replicated, _ = train(two, conv_model, data, loss=loss)
    assert_same_weights(reference, replicated)


@pytest.mark.parametrize("clip", [dict(global_clipnorm=0.05), dict(clipnorm=0.05), dict(clipvalue=0.01)],
                         ids=["global_clipnorm", "clipnorm", "clipvalue"])
def test_clipping_applies_to_the_all_reduced_gradient(strategies, clip):
    one, two = strategies
    optimizer = lambda: keras.optimizers.SGD(0.1, **clip)  # noqa: E731
    reference, _ = train(one, dict_model, dict_data(45), optimizer=optimizer)
    replicated, _ = train(two, dict_model, dict_data(45), optimizer=optimizer)
    assert_same_weights(reference, replicated)


@pytest.fixture
def mixed_float16(dtype_policy):
    dtype_policy("mixed_float16")


def test_fp16_nan_on_one_replica_skips_the_step_everywhere(strategies, mixed_float16):
    _, two = strategies
    model, initial, scale = fp16_fit_with_a_nan_on_replica_1(two)
    for before, after in zip(initial, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert float(model.optimizer.dynamic_scale.numpy()) == scale / 2
    # Training goes on: a clean batch is applied and the loss falls.
    history = model.fit(np.ones((8, 4), "float32"), np.ones((8, 1), "float32"), batch_size=8,
                        epochs=3, verbose=0)
    assert np.isfinite(model.get_weights()[0]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]


def bn_model():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(6), keras.layers.BatchNormalization(),
                             keras.layers.Dense(1)])


def bn_data(n):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 4)).astype("float32") * np.arange(1, n + 1, dtype="float32")[:, None] / n
    return x, rng.normal(size=(n, 1)).astype("float32")


def test_batch_norm_warns_then_matches_one_device_once_synchronized(strategies, caplog):
    one, two = strategies
    reference, _ = train(one, bn_model, bn_data(48))
    with caplog.at_level("WARNING", logger="tfdp"):
        unsynced, _ = train(two, bn_model, bn_data(48))
    assert "tfdp.synchronize_batch_norm(model)" in caplog.text
    moving_mean = lambda m: m.layers[1].moving_mean.numpy()  # noqa: E731
    assert np.abs(moving_mean(unsynced) - moving_mean(reference)).max() > 1e-3

    def synced_bn_model():
        model = bn_model()
        assert tfdp.synchronize_batch_norm(model) == 1
        return model

    caplog.clear()
    with caplog.at_level("WARNING", logger="tfdp"):
        synced, _ = train(two, synced_bn_model, bn_data(48))
    assert "BatchNormalization" not in caplog.text
    assert_same_weights(reference, synced)


def test_steps_per_execution_matches_one_device(strategies):
    one, two = strategies
    reference, ref_history = train(one, dict_model, dict_data(45))
    replicated, history = train(two, dict_model, dict_data(45), steps_per_execution=3)
    assert_same_weights(reference, replicated)
    np.testing.assert_allclose(history["loss"], ref_history["loss"], rtol=1e-5)
    x, y = dict_data(45)
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    np.testing.assert_allclose(replicated.evaluate(batches, verbose=0), reference.evaluate(batches, verbose=0),
                               rtol=1e-5)
    inputs = tf.data.Dataset.from_tensor_slices(x).batch(GLOBAL_BATCH)
    np.testing.assert_allclose(replicated.predict(inputs, verbose=0), reference.predict(inputs, verbose=0),
                               atol=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_gradient_accumulation_equals_one_twice_larger_batch(strategies, optimizer):
    one, two = strategies
    make = {"sgd": lambda **kw: keras.optimizers.SGD(0.1, **kw),
            "adam": lambda **kw: keras.optimizers.Adam(0.01, **kw)}[optimizer]
    reference, _ = train(one, dict_model, dict_data(48), optimizer=make, batch_size=2 * GLOBAL_BATCH)
    accumulated, _ = train(two, dict_model, dict_data(48),
                           optimizer=lambda: make(gradient_accumulation_steps=2))
    assert_same_weights(reference, accumulated)
