"""atomic_assign_add: concurrent parameter-server workers lose increments of Keras variables.

Keras 3's `Variable.assign_add(value)` is `self.assign(self + value)`: a read, then a
write. Under ParameterServerStrategy the workers update the ps-held variables at the same
time, so two increments read the same value and one is lost. The optimizer's weights and
slots are not hit (Keras's TensorFlow optimizer updates them with tf.Variable ops), but its
`iterations` is: with 2 workers, 20 steps left `iterations` at 15 (measured), so learning-rate
schedules and Adam's bias correction see fewer steps than were applied; so are the metrics'
counters (`total`, `count`). The repair makes `assign_add`/`assign_sub` of the TensorFlow
backend's variable the tf.Variable's own atomic op (AssignAddVariableOp), which gives the
same value as read-then-write when nothing runs concurrently; inside a StatelessScope Keras's
own path is kept.

Upstream: keras-team/keras#18668 ("Optimizer Race in Variable Update under PS strategy",
open); parameter-server training in Keras 3 is keras-team/keras#18624.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfdp import _compat
from tfdp.keras_fixes._base import Fix, Undo, check_methods, patch


def _atomic(op: str, stock):
    def method(self, value):
        storage = _compat.variable_storage(self)
        if _compat.in_stateless_scope() or not isinstance(storage, tf.Variable):
            return stock(self, value)
        value = tf.cast(tf.convert_to_tensor(value), storage.dtype)
        if value.shape.rank == 0 and storage.shape.rank:
            value = tf.broadcast_to(value, storage.shape)  # as `self + value` broadcasts
        if value.shape != storage.shape:
            return stock(self, value)  # Keras's own shape error
        return getattr(storage, op)(value)

    method.__name__ = op
    return method


def _apply() -> Undo:
    owner = keras.Variable  # the TensorFlow backend's variable (its home module moved in Keras 3.16)
    return patch(owner, assign_add=_atomic("assign_add", owner.assign_add),
                 assign_sub=_atomic("assign_sub", owner.assign_sub))


def _check() -> None:
    check_methods(keras.Variable, {"assign_add": ("self", "value"), "assign_sub": ("self", "value"),
                                                "_direct_assign": ("self", "value")})
    _compat.in_stateless_scope()


FIX = Fix(
    name="atomic_assign_add",
    upstream="https://github.com/keras-team/keras/issues/18668",
    problem="Variable.assign_add reads then writes, so parameter-server workers updating at once lose "
            "increments of the optimizer's iterations and of the metrics",
    reproduced=("3.15.1", "3.16.0.dev2026102704"),
    test="tests/test_parameter_server.py::test_stock_keras_loses_increments_of_concurrent_workers",
    check=_check,
    apply=_apply,
)
