"""Each repair is needed: with that one repair excluded, stock Keras is wrong or crashes.

Reproduced on Keras 3.15.1 and keras-nightly 3.16.0.dev2026102704 (the nightly lane of
.ci/run runs this file). The same cases with the repairs installed equal one device.
The two repairs that only show on several workers (multi_worker_fit, chief_writes) are
guarded in tests/test_fit_multi_worker.py.
"""

import numpy as np
import pytest
import keras
import tensorflow as tf

import tfdp
from tfdp import keras_fixes
from tests.models import dict_data, dict_model, fp16_fit_with_a_nan_on_replica_1, train


@pytest.fixture
def strategies():
    return (tfdp.create_strategy("one_device", devices=["/cpu:0"]),
            tfdp.create_strategy("mirrored", num_cpu_replicas=2))


@pytest.fixture
def without():
    """without(name): the repairs installed except `name`, restored afterwards."""
    yield lambda name: keras_fixes.install(exclude=[name])
    keras_fixes.install(exclude=())


def max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a.get_weights(), b.get_weights()))


def adam_with_clip():
    return keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(0.01, 3, 0.5), global_clipnorm=0.05)


def case_partial_batch(one, two):
    reference, _ = train(one, dict_model, dict_data(45))
    return max_diff(reference, train(two, dict_model, dict_data(45))[0])


def case_partial_batch_tokens(one, two):
    """A masked per-token loss with ~3x the valid tokens on replica 0: Keras divides by each replica's own."""
    from tests import zoo

    return zoo.largest_difference(zoo.fit("tagger", one, optimizer="adam"), zoo.fit("tagger", two, optimizer="adam"))


def case_reduce_before_clip(one, two):
    reference, _ = train(one, dict_model, dict_data(45), optimizer=adam_with_clip)
    return max_diff(reference, train(two, dict_model, dict_data(45), optimizer=adam_with_clip)[0])


def case_steps_per_execution(one, two):
    reference, _ = train(one, dict_model, dict_data(45), optimizer=adam_with_clip)
    return max_diff(reference, train(two, dict_model, dict_data(45), optimizer=adam_with_clip,
                                     steps_per_execution=3)[0])


class Interrupt(keras.callbacks.Callback):
    """Raises after `step` steps of epoch 1 (the kill of a real run)."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch == 1 and batch + 1 == self.step:
            raise RuntimeError("interrupted")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch


def case_backup_and_restore(one, two, tmp_path):
    """Interrupted mid-epoch after a backup, resumed: the steps taken equal an uninterrupted run's."""
    def run(callbacks):
        return train(two, dict_model, dict_data(48), epochs=3, optimizer=lambda: keras.optimizers.Adam(0.01),
                     fit_kwargs=dict(callbacks=callbacks))[0]

    reference = run([])
    backup = lambda: keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), save_freq=2)  # noqa: E731
    with pytest.raises(RuntimeError, match="interrupted"):
        run([backup(), Interrupt(step=3)])
    resumed = run([backup()])
    assert int(reference.optimizer.iterations.numpy()) == 18
    return max(max_diff(reference, resumed), abs(int(resumed.optimizer.iterations.numpy()) - 18))


# case -> (case, how stock Keras fails: None = trains to different weights, else its error message);
# the repair excluded is the case's name up to its first "-".
CASES = {"partial_batch": (case_partial_batch, None),
         "partial_batch-tokens": (case_partial_batch_tokens, None),
         "reduce_before_clip": (case_reduce_before_clip, None),
         "steps_per_execution": (case_steps_per_execution, "You must feed a value for placeholder tensor"),
         "backup_and_restore": (case_backup_and_restore, None)}


def run_case(name, strategies, tmp_path):
    kwargs = {"tmp_path": tmp_path} if name == "backup_and_restore" else {}
    return CASES[name][0](*strategies, **kwargs)


@pytest.mark.parametrize("name", CASES)
def test_stock_keras_is_wrong_without(name, strategies, without, tmp_path):
    assert run_case(name, strategies, tmp_path / "repaired") < 1e-5
    without(name.split("-")[0])
    crash = CASES[name][1]
    if crash:
        with pytest.raises(tf.errors.InvalidArgumentError, match=crash):
            run_case(name, strategies, tmp_path / "stock")
    else:
        drift = run_case(name, strategies, tmp_path / "stock")
        print(f"stock Keras without {name}: {drift:.3g} from one device")
        assert drift > 1e-3, f"stock Keras matched one device without {name}: retire the repair?"


def test_stock_loss_scale_optimizer_applies_a_nan_seen_by_one_replica(strategies, without, dtype_policy):
    """reduce_before_clip's second half: the finite check must read the reduced gradients."""
    _, two = strategies
    dtype_policy("mixed_float16")
    without("reduce_before_clip")
    model, _, _ = fp16_fit_with_a_nan_on_replica_1(two)
    assert not all(np.isfinite(w).all() for w in model.get_weights())


def test_stock_gradient_accumulation_crashes_in_fit(strategies, without):
    """reduce_before_clip's third half (keras-team/keras#20582)."""
    _, two = strategies
    without("reduce_before_clip")
    with pytest.raises((RuntimeError, ValueError, tf.errors.InvalidArgumentError), match="merge_call"):
        train(two, dict_model, dict_data(48), optimizer=lambda: keras.optimizers.SGD(0.1, gradient_accumulation_steps=2))


def test_repairs_change_nothing_on_one_device(strategies, without):
    one, _ = strategies
    repaired, _ = train(one, dict_model, dict_data(45), optimizer=adam_with_clip, steps_per_execution=3)
    keras_fixes.uninstall()
    stock, _ = train(one, dict_model, dict_data(45), optimizer=adam_with_clip, steps_per_execution=3)
    for a, b in zip(repaired.get_weights(), stock.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_damaged_latest_backup_falls_back_to_the_previous_one(strategies, tmp_path, caplog):
    """Without double_checkpoint too: tfdp always keeps the previous backup."""
    _, two = strategies

    def run(callbacks):
        return train(two, dict_model, dict_data(48), epochs=3, optimizer=lambda: keras.optimizers.Adam(0.01),
                     fit_kwargs=dict(callbacks=callbacks))[0]

    reference = run([])
    backup = lambda: keras.callbacks.BackupAndRestore(str(tmp_path), save_freq=2)  # noqa: E731
    with pytest.raises(RuntimeError, match="interrupted"):
        run([backup(), Interrupt(step=5)])  # backups after steps 2 and 4 of epoch 1
    (tmp_path / "latest.weights.h5").write_bytes(b"0")  # damaged, as by a disk or a bad copy
    with caplog.at_level("WARNING", logger="tfdp"):
        resumed = run([backup()])
    assert "latest.weights.h5 is damaged" in caplog.text
    assert int(resumed.optimizer.iterations.numpy()) == 18
    assert max_diff(reference, resumed) < 1e-5
