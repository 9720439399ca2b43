"""partial_batch: uneven and empty per-replica batches.

Keras averages the loss over each replica's *local* batch and divides by the number of
replicas. With an uneven last batch (45 examples on 2 replicas: 23 + 22) that weights
examples unequally, and a replica whose share is empty (tf.data can hand [30, 0]) runs
its model on zero examples, where TensorFlow's oneDNN CPU kernels fail (Conv2D returns
the input's shape; the MaxPool gradient aborts the process). The repair pads an empty
share with one example of weight 0 and weights each replica's data loss by its share of
the GLOBAL batch. Nothing changes on one replica.

Upstream: keras-team/keras#19891 (the output of fit/evaluate changes with the number of
replicas; its fix, keras#20609, scaled regularisers but kept the local-batch average); the
empty share's crash is keras-team/keras#19246's AddN "[1,...] != [0,...]".
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfdp import _compat, batch_norm
from tfdp._cross_replica import nonempty_batch
from tfdp.keras_fixes._base import Fix, Undo, check_methods, patch, replicas_in_sync


def _forward(model, x, training: bool):
    return model(x, training=training) if _compat.call_has_training_arg(model) else model(x)


def _replica_loss(model, x, y, y_pred, sample_weight, n, training: bool):
    """(loss to differentiate, unscaled local loss for the loss tracker)."""
    replicas = replicas_in_sync()
    n_float = tf.cast(n, tf.float32)
    n_global = tf.distribute.get_replica_context().all_reduce("SUM", n_float)
    share = tf.math.divide_no_nan(n_float * replicas, n_global)
    compiled = _compat.compile_loss(model)
    if type(model).compute_loss is not _compat.base_trainer_class().compute_loss or compiled is None:
        # A custom compute_loss: keep its value, reweighted by this replica's share.
        loss = _compat.compute_loss_private(model, x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                            training=training)
        return loss * tf.cast(share, loss.dtype), loss * replicas
    # Both parts come divided by the number of replicas (Keras's own scaling).
    data_loss = compiled(y, y_pred, sample_weight)
    extra = [_compat.aggregate_additional_loss(model, loss) for loss in model.losses]
    extra = tf.add_n(extra) if extra else tf.zeros((), data_loss.dtype)
    loss = data_loss * tf.cast(share, data_loss.dtype) + extra
    return loss, (data_loss + extra) * replicas


def _apply() -> Undo:
    trainer = _compat.tf_trainer_class()
    stock = {name: trainer.__dict__[name] for name in ("train_step", "test_step", "predict_step")}

    def train_step(self, data):
        if replicas_in_sync() == 1:
            return stock["train_step"](self, data)
        batch_norm.warn_if_unsynchronized(self, num_replicas=replicas_in_sync())
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, y, sample_weight, n = nonempty_batch(x, y, sample_weight)
        with tf.GradientTape() as tape:
            y_pred = _forward(self, x, training=True)
            loss, tracked = _replica_loss(self, x, y, y_pred, sample_weight, n, training=True)
            _compat.loss_tracker(self).update_state(tracked, sample_weight=n)
            if self.optimizer is not None:
                loss = self.optimizer.scale_loss(loss)
        if self.trainable_weights:
            gradients = tape.gradient(loss, self.trainable_weights)
            self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def test_step(self, data):
        if replicas_in_sync() == 1:
            return stock["test_step"](self, data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, y, sample_weight, n = nonempty_batch(x, y, sample_weight)
        y_pred = _forward(self, x, training=False)
        _, tracked = _replica_loss(self, x, y, y_pred, sample_weight, n, training=False)
        _compat.loss_tracker(self).update_state(tracked, sample_weight=n)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def predict_step(self, data):
        if replicas_in_sync() == 1:
            return stock["predict_step"](self, data)
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        x, _, _, n = nonempty_batch(x, None, None)
        return keras.tree.map_structure(lambda t: t[:n], _forward(self, x, training=False))

    return patch(trainer, train_step=train_step, test_step=test_step, predict_step=predict_step)


def _check() -> None:
    check_methods(_compat.tf_trainer_class(), {
        "train_step": ("self", "data"), "test_step": ("self", "data"), "predict_step": ("self", "data")})
    check_methods(_compat.base_trainer_class(), {
        "compute_loss": ("self", "x", "y", "y_pred", "sample_weight"),
        "_compute_loss": ("self",), "_aggregate_additional_loss": ("self", "loss"),
        "compute_metrics": ("self", "x", "y", "y_pred", "sample_weight")})


FIX = Fix(
    name="partial_batch",
    upstream="https://github.com/keras-team/keras/issues/19891",
    problem="uneven and empty per-replica batches are mis-weighted or crash",
    reproduced=("3.15.1", "3.16.0.dev2026102704"),
    test="tests/test_keras_fixes_needed.py::test_stock_keras_is_wrong_without[partial_batch]",
    check=_check,
    apply=_apply,
)
