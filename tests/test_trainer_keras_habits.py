"""tfdp.Trainer behaves as model.fit does: callbacks, History, epochs, predict, metric names, bad input."""

import os

import numpy as np
import pytest
import keras
import tensorflow as tf

import tfdp
from tests.models import GLOBAL_BATCH, dict_data, dict_model


def batches(n=45, batch_size=GLOBAL_BATCH):
    x, y = dict_data(n)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def make_trainer(strategy, optimizer=None, **options):
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = dict_model()
    return tfdp.Trainer(model, optimizer=optimizer or keras.optimizers.SGD(0.1), loss="mse", strategy=strategy,
                        **options)


def keras_fit(callbacks_fn, epochs, validation=True):
    """The same model, data and optimizer with stock model.fit on one device."""
    keras.utils.set_random_seed(7)
    model = dict_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    history = model.fit(batches(), epochs=epochs, verbose=0, callbacks=callbacks_fn(),
                        validation_data=batches() if validation else None)
    return history


def test_early_stopping_and_learning_rate_scheduler_behave_as_under_model_fit(two_replicas):
    def callbacks():
        return [keras.callbacks.EarlyStopping(monitor="val_loss", patience=0, min_delta=0.5),
                keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 * 0.5 ** epoch)]

    reference = keras_fit(callbacks, epochs=10)
    trainer = make_trainer(two_replicas)
    history = trainer.fit(batches(), epochs=10, verbose=0, callbacks=callbacks(), validation_data=batches())
    assert isinstance(history, keras.callbacks.History)
    assert history.epoch == reference.epoch and len(history.epoch) < 10  # stopped early, at the same epoch
    np.testing.assert_allclose(history.history["learning_rate"], reference.history["learning_rate"])
    np.testing.assert_allclose(history.history["val_loss"], reference.history["val_loss"], rtol=1e-5)


def test_user_callbacks_see_batches_and_can_stop_training(two_replicas):
    seen = {"batches": 0, "epochs": []}

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen["batches"] += 1
            assert "loss" in logs

        def on_epoch_end(self, epoch, logs=None):
            seen["epochs"].append(epoch)
            self.model.stop_training = epoch == 1

    trainer = make_trainer(two_replicas)
    history = trainer.fit(batches(), epochs=5, verbose=0, callbacks=[Stop(), keras.callbacks.TerminateOnNaN()])
    assert seen == {"batches": 12, "epochs": [0, 1]} and history.epoch == [0, 1]


def test_fit_twice_trains_twice_and_initial_epoch_counts_as_in_keras(two_replicas):
    trainer = make_trainer(two_replicas)
    trainer.fit(batches(), epochs=1, verbose=0)
    trainer.fit(batches(), epochs=1, verbose=0)
    assert int(trainer.optimizer.iterations.numpy()) == 12
    history = trainer.fit(batches(), epochs=4, initial_epoch=2, verbose=0)
    assert history.epoch == [2, 3] and int(trainer.optimizer.iterations.numpy()) == 24


def test_validation_freq(two_replicas):
    trainer = make_trainer(two_replicas)
    history = trainer.fit(batches(), epochs=4, verbose=0, validation_data=batches(), validation_freq=2)
    assert len(history.history["val_loss"]) == 2 and len(history.history["loss"]) == 4


def test_predict_is_ordered_and_equals_model_predict(two_replicas):
    trainer = make_trainer(two_replicas)
    x, _ = dict_data(41)  # the last global batch leaves replica 1 with nothing
    inputs = tf.data.Dataset.from_tensor_slices(x).batch(GLOBAL_BATCH)
    predicted = trainer.predict(inputs, verbose=0)
    assert predicted.shape == (41, 1)
    np.testing.assert_allclose(predicted, trainer.model(x).numpy(), atol=1e-6)


def test_accuracy_by_name_is_resolved_as_compile_does(two_replicas):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)).astype("float32"), rng.integers(0, 3, size=(40,))
    with two_replicas.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    trainer = tfdp.Trainer(model, optimizer="sgd", strategy=two_replicas, metrics=["accuracy"],
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    logs = trainer.evaluate(data, verbose=0)
    expected = float(np.mean(np.argmax(model(x).numpy(), axis=1) == y))
    assert [type(m) for m in trainer.metrics.compiled.metrics] == [keras.metrics.SparseCategoricalAccuracy]
    assert logs["accuracy"] == pytest.approx(expected)


def test_progress_is_one_line_per_epoch_when_not_a_terminal(two_replicas, capsys):
    trainer = make_trainer(two_replicas)
    trainer.fit(batches(), epochs=2, verbose="auto")
    out = capsys.readouterr().out
    assert out.count("Epoch 1/2") == 1 and out.count("Epoch 2/2") == 1 and "loss:" in out


@pytest.mark.parametrize("call,message", [
    (lambda t: t.fit(batches(), epochs=-1), r"fit\(epochs=-1\)"),
    (lambda t: t.fit(batches(), steps_per_epoch=0), r"fit\(steps_per_epoch=0\)"),
    (lambda t: t.fit(batches().take(0)), "yields no batch"),
    (lambda t: t.fit([1, 2, 3]), "give a tf.data.Dataset"),
    (lambda t: t.evaluate(batches().take(0)), "yields no batch"),
    (lambda t: t.fit(batches(), verbose=3), "verbose=3"),
    # a plain Dataset goes through tfdp.data's exactly-once path, which needs whole per-replica batches
    (lambda t: t.fit(batches(batch_size=9)), r"Trainer.fit\(data\): global_batch_size=9 does not divide"),
])
def test_bad_fit_arguments_are_config_errors(two_replicas, call, message):
    with pytest.raises(tfdp.ConfigError, match=message):
        call(make_trainer(two_replicas))


def test_distribute_refuses_an_already_batched_dataset(two_replicas):
    with pytest.raises(tfdp.ConfigError, match="already batched"):
        tfdp.data.distribute(two_replicas, batches(), global_batch_size=8)


def test_a_finished_run_resumed_says_so_and_trains_only_what_is_asked(two_replicas, tmp_path, capsys):
    first = make_trainer(two_replicas, model_dir=str(tmp_path))
    first.fit(batches(), epochs=2, verbose=0)
    second = make_trainer(two_replicas, model_dir=str(tmp_path))
    history = second.fit(batches(), epochs=2, verbose=0)
    assert "resumed from" in capsys.readouterr().out and history.epoch == []
    history = second.fit(batches(), epochs=3, initial_epoch=2, verbose=0)  # one more, as model.fit would
    assert history.epoch == [2] and int(second.optimizer.iterations.numpy()) == 18


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(two_replicas, tmp_path, caplog):
    make_trainer(two_replicas, model_dir=str(tmp_path)).fit(batches(), epochs=2, verbose=0)
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    data_file = next(p for p in (tmp_path / "checkpoints").iterdir()
                     if p.name.startswith(os.path.basename(latest) + ".data"))
    data_file.write_bytes(data_file.read_bytes()[:50])  # truncated, as by a kill mid-copy
    resumed = make_trainer(two_replicas, model_dir=str(tmp_path))
    with caplog.at_level("WARNING", logger="tfdp"):
        history = resumed.fit(batches(), epochs=3, verbose=0)
    assert latest in caplog.text and "trying the previous one" in caplog.text
    assert history.epoch == [1, 2]  # resumed after epoch 1, from the previous checkpoint
    uninterrupted = make_trainer(two_replicas)
    uninterrupted.fit(batches(), epochs=3, verbose=0)
    for a, b in zip(resumed.model.get_weights(), uninterrupted.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def _scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars of one run directory: tag -> [(step, value)]."""
    found: dict[str, list[tuple[int, float]]] = {}
    for name in sorted(os.listdir(run_dir)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(run_dir, name)):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    return found


def test_tensorboard_has_validation_curves_and_scalars_every_n_steps(two_replicas, tmp_path):
    trainer = make_trainer(two_replicas, keras.optimizers.Adam(0.01), model_dir=str(tmp_path), summary_every_steps=2)
    history = trainer.fit(batches(), epochs=2, verbose=0, validation_data=batches())
    trainer.close()
    train, validation = _scalars(tmp_path / "train"), _scalars(tmp_path / "validation")
    assert [step for step, _ in train["epoch_loss"]] == [1, 2]
    assert [v for _, v in validation["epoch_loss"]] == pytest.approx(history.history["val_loss"])
    assert "epoch_learning_rate" in train and not any(tag.startswith("epoch_val_") for tag in train)
    # 45 examples at a global batch of GLOBAL_BATCH: 6 steps per epoch, so Adam's iterations 2, 4, ..., 12.
    assert [step for step, _ in train["batch_loss"]] == [2, 4, 6, 8, 10, 12]


class _HookRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.calls = []

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_test_begin(self, logs=None):
        self.calls.append(("test_begin",))

    def on_test_end(self, logs=None):
        self.calls.append(("test_end", sorted(logs)))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch))


def test_callbacks_see_the_validation_run_as_under_model_fit(two_replicas):
    reference = _HookRecorder()
    keras_fit(lambda: [reference], epochs=2)
    recorder = _HookRecorder()
    make_trainer(two_replicas).fit(batches(), epochs=2, verbose=0, callbacks=[recorder], validation_data=batches())
    assert recorder.calls == reference.calls
    assert ("test_end", ["loss"]) in recorder.calls
