"""partial_batch: uneven per-replica batches, tokens and empty shares weighed as on one device.

Keras divides each replica's loss by the replica's OWN count (its examples, or its valid
tokens under a mask) and averages the replicas. With an uneven last batch (45 examples
on 2 replicas: 23 + 22), or replicas holding different numbers of valid tokens (a masked
per-token loss), that weights examples and tokens unequally: the weights differ from one
device's at the same global batch. A replica whose share is empty (tf.data can hand
[30, 0]) runs its model on zero examples, where TensorFlow's oneDNN CPU kernels fail
(Conv2D returns the input's shape; the MaxPool gradient aborts the process).

The repair, in train_step and test_step of several replicas: every Keras loss divides
its SUM by the COUNT summed over all replicas and workers (`tfdp.loss_reduction`: the
valid tokens under a mask, the values otherwise, the weights for
"mean_with_sample_weight"), so the replicas' losses add up to one device's; an empty
share is padded with one example that counts nothing (its loss, counts and metric
updates are multiplied away). Nothing changes on one replica.

Upstream: keras-team/keras#19891 (the output of fit/evaluate changes with the number of
replicas; its fix, keras#20609, scaled regularisers but kept the local-batch average); the
empty share's crash is keras-team/keras#19246's AddN "[1,...] != [0,...]".
"""

from __future__ import annotations

import contextlib
import threading

import keras
import tensorflow as tf

from tfdp import _compat, batch_norm, loss_reduction
from tfdp import gradients
from tfdp._cross_replica import nonempty_batch, only_if_real, real
from tfdp.keras_fixes._base import Fix, Undo, check_functions, check_methods, patch, patch_module, replicas_in_sync

# Set, per replica thread (MirroredStrategy runs each replica's step in a thread of its
# own), while a repaired step computes its loss: the replica's "real" flag.
_global = threading.local()


@contextlib.contextmanager
def _global_denominators(real_flag: tf.Tensor):
    previous = getattr(_global, "real", None)
    _global.real = real_flag
    try:
        yield
    finally:
        _global.real = previous


def _reduce_weighted_values(stock):
    """Keras's reduction, dividing by the global COUNT inside a repaired step."""

    def reduce_weighted_values(values, sample_weight=None, mask=None, reduction="sum_over_batch_size",
                               dtype=None):
        real_flag = getattr(_global, "real", None)
        if real_flag is None or reduction not in loss_reduction.DIVIDED:
            return stock(values, sample_weight=sample_weight, mask=mask, reduction=reduction, dtype=dtype)
        values = tf.convert_to_tensor(values, dtype=dtype)
        total, count = loss_reduction.sum_and_count(values, sample_weight=sample_weight, mask=mask,
                                                    reduction=reduction, dtype=values.dtype)
        is_real = real_flag > 0
        global_count = tf.distribute.get_replica_context().all_reduce("SUM", tf.where(is_real, count, 0))
        return tf.math.divide_no_nan(tf.where(is_real, total, 0), global_count)

    return reduce_weighted_values


def _forward(model, x, training: bool):
    return model(x, training=training) if _compat.call_has_training_arg(model) else model(x)


def _replica_loss(model, x, y, y_pred, sample_weight, n, training: bool):
    """(this replica's part of the global batch's data loss, of model.losses, the batch's loss for the
    tracker (weighed by n); the data part is None for a custom compute_loss, which returns one value)."""
    replicas = replicas_in_sync()
    n_float = tf.cast(n, tf.float32)
    n_global = tf.distribute.get_replica_context().all_reduce("SUM", n_float)
    compiled = _compat.compile_loss(model)
    if type(model).compute_loss is not _compat.base_trainer_class().compute_loss or compiled is None:
        # A custom compute_loss: keep its value, reweighted by this replica's share of the examples.
        share = tf.math.divide_no_nan(n_float * replicas, n_global)
        loss = _compat.compute_loss_private(model, x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                            training=training)
        return None, loss * tf.cast(share, loss.dtype), loss * replicas
    with _global_denominators(real(n)):
        data_loss = compiled(y, y_pred, sample_weight)  # SUM here / COUNT of all replicas
    extra = [_compat.aggregate_additional_loss(model, loss) for loss in model.losses]  # each / replicas
    extra = tf.add_n(extra) if extra else tf.zeros((), data_loss.dtype)
    # Weighed by n on each replica, the tracker's mean is one device's: the data parts add up
    # over replicas, model.losses count once.
    tracked = tf.math.divide_no_nan(data_loss * tf.cast(n_global, data_loss.dtype), tf.cast(n_float, data_loss.dtype))
    return data_loss, extra, tracked + extra * replicas


def _gradients(model, tape, data_loss, other, n):
    """Gradients of data_loss + other. The data part is zero on the padding of an empty share
    (NaN-safe: a select); `other` (model.losses, or a custom compute_loss) counts on every replica."""
    weights = model.trainable_weights
    grads = tape.gradient(other, weights)
    if data_loss is None:
        return grads
    data = [only_if_real(g, n) for g in tape.gradient(data_loss, weights)]
    return [d if o is None else o if d is None else gradients.add(d, o) for d, o in zip(data, grads)]


def _compute_metrics(model, x, y, y_pred, sample_weight, n):
    """model.compute_metrics, skipped for the padding of an empty share."""
    return tf.cond(n > 0, lambda: model.compute_metrics(x, y, y_pred, sample_weight=sample_weight),
                   model.get_metrics_result)


def _apply() -> Undo:
    trainer = _compat.tf_trainer_class()
    stock = {name: trainer.__dict__[name] for name in ("train_step", "test_step", "predict_step")}

    def train_step(self, data):
        if replicas_in_sync() == 1:
            return stock["train_step"](self, data)
        batch_norm.warn_if_unsynchronized(self, num_replicas=replicas_in_sync())
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, y, sample_weight, n = nonempty_batch(x, y, sample_weight)
        with tf.GradientTape(persistent=True) as tape:
            y_pred = _forward(self, x, training=True)
            data_loss, other, tracked = _replica_loss(self, x, y, y_pred, sample_weight, n, training=True)
            _compat.loss_tracker(self).update_state(tracked, sample_weight=n)
            if self.optimizer is not None:
                data_loss = None if data_loss is None else self.optimizer.scale_loss(data_loss)
                other = self.optimizer.scale_loss(other)
        if self.trainable_weights:
            self.optimizer.apply_gradients(zip(_gradients(self, tape, data_loss, other, n), self.trainable_weights))
        del tape
        return _compute_metrics(self, x, y, y_pred, sample_weight, n)

    def test_step(self, data):
        if replicas_in_sync() == 1:
            return stock["test_step"](self, data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, y, sample_weight, n = nonempty_batch(x, y, sample_weight)
        y_pred = _forward(self, x, training=False)
        _, _, tracked = _replica_loss(self, x, y, y_pred, sample_weight, n, training=False)
        _compat.loss_tracker(self).update_state(tracked, sample_weight=n)
        return _compute_metrics(self, x, y, y_pred, sample_weight, n)

    def predict_step(self, data):
        if replicas_in_sync() == 1:
            return stock["predict_step"](self, data)
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        x, _, _, n = nonempty_batch(x, None, None)
        return keras.tree.map_structure(lambda t: t[:n], _forward(self, x, training=False))

    undo_steps = patch(trainer, train_step=train_step, test_step=test_step, predict_step=predict_step)
    losses = _compat.loss_module()
    undo_reduce = patch_module(losses, reduce_weighted_values=_reduce_weighted_values(losses.reduce_weighted_values))

    def undo() -> None:
        undo_reduce()
        undo_steps()

    return undo


def _check() -> None:
    check_methods(_compat.tf_trainer_class(), {
        "train_step": ("self", "data"), "test_step": ("self", "data"), "predict_step": ("self", "data")})
    check_methods(_compat.base_trainer_class(), {
        "compute_loss": ("self", "x", "y", "y_pred", "sample_weight"),
        "_compute_loss": ("self",), "_aggregate_additional_loss": ("self", "loss"),
        "compute_metrics": ("self", "x", "y", "y_pred", "sample_weight"), "get_metrics_result": ("self",)})
    losses = _compat.loss_module()
    check_functions(losses, {"reduce_weighted_values": ("values", "sample_weight", "mask", "reduction", "dtype"),
                             "squeeze_or_expand_to_same_rank": ("x1", "x2")})


FIX = Fix(
    name="partial_batch",
    upstream="https://github.com/keras-team/keras/issues/19891",
    problem="uneven and empty per-replica batches are mis-weighted or crash",
    reproduced=("3.15.1", "3.16.0.dev2026102704"),
    test="tests/test_keras_fixes_needed.py::test_stock_keras_is_wrong_without[partial_batch]",
    check=_check,
    apply=_apply,
)
