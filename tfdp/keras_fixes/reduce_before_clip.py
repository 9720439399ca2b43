"""reduce_before_clip: clipping, loss-scale finite checks and accumulation see local gradients.

Keras's TensorFlow optimizer clips (clipnorm, global_clipnorm, clipvalue) each replica's
LOCAL gradient and all-reduces afterwards, inside the variable update: the update is not
the one-device update. With gradient_accumulation_steps it crashes under tf.function
("merge_call called while defining a new graph", keras-team/keras#20582: a cond whose
branches merge_call). Its LossScaleOptimizer decides "gradients are finite" from replica
0's local gradient ("since `grads` is all-reduced", says its comment; they are not), so a
NaN on replica 1 alone is applied everywhere.

The repair, for `apply_gradients` called in a replica context of several replicas (fit's
train_step, or a custom loop's `strategy.run`): all-reduce (SUM) the gradients once, then
apply once in the cross-replica context, where Keras does not reduce again. Gradient
accumulation keeps Keras's semantics exactly: each replica accumulates its own
gradients, and an update step applies the SUM over replicas of the mean of the
accumulated micro-batches. Gradients handed over in the cross-replica context (as
tfdp.Trainer does, already reduced) are applied as they are: nothing reduces twice.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfdp import _compat
from tfdp._compat import merge_calls_run_directly
from tfdp.keras_fixes._base import Fix, Undo, check_methods, in_replica_context_of_several, patch


def _sum_over_replicas(grads):
    """SUM of each non-None gradient over all replicas (None stays None)."""
    present = [g for g in grads if g is not None]
    reduced = iter(tf.distribute.get_replica_context().all_reduce("SUM", present) if present else [])
    return [None if g is None else next(reduced) for g in grads]


def _first(strategy, values):
    """The first local replica's value of each (the reduced values are the same on all)."""
    return [None if v is None else strategy.experimental_local_results(v)[0] for v in values]


def _apply_ema(optimizer) -> None:
    """Keras's EMA step, as BaseOptimizer._backend_apply_gradients ends it."""
    variables = _compat.optimizer_trainable_variables(optimizer)
    optimizer._update_model_variables_moving_average(variables)
    if optimizer.ema_overwrite_frequency:
        keras.ops.cond((optimizer.iterations + 1) % optimizer.ema_overwrite_frequency == 0,
                       lambda: optimizer._overwrite_model_variables_with_average_value(variables),
                       lambda: None)


def _apply_accumulating(optimizer, grads, variables) -> None:
    """Keras's accumulation (BaseOptimizer._backend_apply_gradients), reduced once per update."""
    steps = optimizer.gradient_accumulation_steps
    accumulators = [_compat.accumulated_gradients(optimizer)[optimizer._get_variable_index(v)] for v in variables]
    # This replica's mean over the micro-batches, as if this were the update step; the SUM
    # over replicas of it is the update Keras applies.
    means = _sum_over_replicas([None if g is None else (g + a) / steps for g, a in zip(grads, accumulators)])

    def in_cross_replica(strategy, local_grads, means):
        def update():
            reduced = optimizer._clip_gradients(_first(strategy, means))
            optimizer._apply_weight_decay(variables)
            optimizer._backend_update_step(reduced, variables, optimizer.learning_rate)
            optimizer._backend_reset_gradient_accumulators()

        def accumulate():  # each replica into its own copy of the accumulators
            optimizer._backend_increment_gradient_accumulators(local_grads, accumulators)

        with merge_calls_run_directly():
            is_update_step = (_compat.optimizer_iterations(optimizer) + 1) % steps == 0
            keras.ops.cond(is_update_step, update, accumulate)
            if optimizer.use_ema:
                _apply_ema(optimizer)

    tf.distribute.get_replica_context().merge_call(in_cross_replica, args=(grads, means))


def _apply() -> Undo:
    tf_optimizer = _compat.tf_optimizer_class()
    base = _compat.base_optimizer_class()
    stock_apply = base._backend_apply_gradients
    lso = keras.optimizers.LossScaleOptimizer
    stock_lso_apply = lso._tf_apply

    def backend_apply_gradients(self, grads, trainable_variables):
        if not in_replica_context_of_several():
            return stock_apply(self, grads, trainable_variables)
        if self.gradient_accumulation_steps:
            return _apply_accumulating(self, grads, trainable_variables)
        reduced = _sum_over_replicas(grads)

        def in_cross_replica(strategy, reduced):
            with merge_calls_run_directly():
                stock_apply(self, _first(strategy, reduced), trainable_variables)

        tf.distribute.get_replica_context().merge_call(in_cross_replica, args=(reduced,))

    def loss_scale_tf_apply(self, grads, trainable_variables=None):
        if not in_replica_context_of_several():
            return stock_lso_apply(self, grads, trainable_variables)
        reduced = _sum_over_replicas(grads)

        def in_cross_replica(strategy, reduced):
            reduced = _first(strategy, reduced)
            with merge_calls_run_directly():
                keras.ops.cond(self.check_finite(reduced),
                               lambda: self._stateful_handle_finite_grads(reduced, trainable_variables),
                               self._stateful_handle_non_finite_grads)

        tf.distribute.get_replica_context().merge_call(in_cross_replica, args=(reduced,))

    undo_optimizer = patch(tf_optimizer, _backend_apply_gradients=backend_apply_gradients)
    undo_lso = patch(lso, _tf_apply=loss_scale_tf_apply)
    return lambda: (undo_optimizer(), undo_lso())


def _check() -> None:
    check_methods(_compat.base_optimizer_class(), {
        "_backend_apply_gradients": ("self", "grads", "trainable_variables"),
        "_clip_gradients": ("self", "grads"),
        "_apply_weight_decay": ("self", "variables"),
        "_backend_update_step": ("self", "grads", "trainable_variables", "learning_rate"),
        "_backend_reset_gradient_accumulators": ("self",),
        "_backend_increment_gradient_accumulators": ("self", "grads", "acc_grads"),
        "_get_variable_index": ("self", "variable"),
        "_update_model_variables_moving_average": ("self", "trainable_variables"),
        "_overwrite_model_variables_with_average_value": ("self", "trainable_variables"),
    })
    check_methods(keras.optimizers.LossScaleOptimizer, {
        "_tf_apply": ("self", "grads", "trainable_variables"),
        "check_finite": ("self", "grads"),
        "_stateful_handle_finite_grads": ("self", "grads", "trainable_variables"),
        "_stateful_handle_non_finite_grads": ("self",),
    })
    _compat.check_attributes("optimizer", ("_iterations", "_accumulated_gradients", "_trainable_variables"))
    _compat.distribute_interim()


FIX = Fix(
    name="reduce_before_clip",
    upstream="https://github.com/tensorflow/tensorflow/issues/33929",
    problem="gradients are clipped per replica before the all-reduce, the loss-scale optimizer's "
            "finite check reads replica 0's local gradients, and gradient_accumulation_steps "
            "crashes under tf.function (keras-team/keras#20582)",
    reproduced=("3.15.1", "3.16.0.dev2026102704"),
    test="tests/test_keras_fixes_needed.py::test_stock_keras_is_wrong_without[reduce_before_clip]",
    check=_check,
    apply=_apply,
)
