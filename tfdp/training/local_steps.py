"""Local steps: each replica applies its own gradients, and the replicas average every H updates.

Local SGD / periodic model averaging (DiLoCo with an outer optimizer): between averages
nothing is a collective. Each replica's mean gradient over its own examples goes, as a
PerReplica value, through the optimizer in the cross-replica context, where
`tf.distribute` updates every local copy of a variable with its own replica's value: the
copies of a MirroredVariable (several replicas in one process) and the workers' copies
(multi_worker) drift apart on purpose, and so do the optimizer's slots (Adam's moments)
between averages.

Every `local_steps` updates, and at the end of every epoch (so that evaluation,
callbacks and checkpoints see one model), all weights (trainable and not) and the
optimizer's floating-point slots are averaged over all replicas and workers in ONE
packed all-reduce. Averaging the slots too (DiLoCo keeps them local) makes every replica
hold the very same state after an average, so that a checkpoint, which holds one copy,
resumes exactly; it costs one more weights-sized vector per Adam moment, every H steps. With an outer optimizer the
averaged change of the trainable weights since the last average is applied to the
previous average as a gradient ("anchor - average"), as DiLoCo does.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfdp._compat import merge_calls_run_directly
from tfdp.training import all_reduce


class LocalSteps:
    """The state and the replica/cross-replica functions of local steps (created in scope).

    Args:
        model: the model whose weights are averaged.
        optimizer: the (inner) optimizer each replica applies its own gradients with.
        local_steps: updates between averages (> 1).
        outer_optimizer: applied to (previous average - new average), or None: plain averaging.
    """

    def __init__(self, *, model: keras.Model, optimizer, local_steps: int, outer_optimizer=None):
        self.model, self.optimizer, self.local_steps = model, optimizer, local_steps
        self.outer_optimizer = outer_optimizer
        self.since_average = tf.Variable(0, dtype=tf.int64, trainable=False, name="updates_since_average",
                                         aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.anchors = None
        if outer_optimizer is not None:
            self.anchors = [keras.Variable(keras.ops.zeros(v.shape, v.dtype), trainable=False, name=f"anchor_{i}")
                            for i, v in enumerate(model.trainable_variables)]
            outer_optimizer.build(self.anchors)

    def reset_anchors(self) -> None:
        """The outer optimizer's starting point: the weights as they are (call at a boundary)."""
        if self.anchors is not None:
            for anchor, variable in zip(self.anchors, self.model.trainable_variables):
                anchor.assign(variable.value)

    # -- cross-replica context, in a tf.function (the condition is the same on every replica;
    #    MirroredStrategy allows no all-reduce under a condition inside the replica function) --

    def average_when_due(self, strategy: tf.distribute.Strategy) -> None:
        """Averages when `local_steps` updates have been applied since the last average."""
        tf.cond(self.since_average >= self.local_steps, lambda: self._run_average(strategy), tf.no_op)

    def average_if_pending(self, strategy: tf.distribute.Strategy) -> None:
        """Averages if any update was applied since the last average (the end of an epoch)."""
        tf.cond(self.since_average > 0, lambda: self._run_average(strategy), tf.no_op)

    def _run_average(self, strategy):
        strategy.run(self._average)
        return tf.no_op()

    # -- replica context ---------------------------------------------------------------

    def _averaged(self) -> list:
        """The variables averaged: the model's weights, then the optimizer's float slots."""
        slots = [v for v in self.optimizer.variables
                 if v.dtype in ("float16", "bfloat16", "float32", "float64") and v is not self.optimizer.iterations]
        return [*self.model.weights, *slots]

    def _average(self) -> None:
        weights = [tf.convert_to_tensor(v.value) for v in self._averaged()]
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        mean = all_reduce.unpack(all_reduce.sum_packed(all_reduce.pack(weights)) / replicas, weights)
        tf.distribute.get_replica_context().merge_call(self._assign, args=(mean,))

    # -- cross-replica context ----------------------------------------------------------

    def apply_local(self, grads) -> None:
        """Applies each replica's own gradients (PerReplica values) to its own copies."""
        with merge_calls_run_directly():
            self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))

    def count_update(self) -> None:
        """One more update (applied or skipped as non-finite) towards the next average."""
        self.since_average.assign_add(1)

    def _assign(self, strategy, mean) -> None:
        first = [strategy.experimental_local_results(m)[0] for m in mean]  # the same on every replica
        trainable = {id(v): i for i, v in enumerate(self.model.trainable_variables)}
        if self.outer_optimizer is not None:
            averaged = {id(v): m for v, m in zip(self.model.weights, first)}
            deltas = [tf.convert_to_tensor(anchor.value) - tf.cast(averaged[id(v)], anchor.dtype)
                      for anchor, v in zip(self.anchors, self.model.trainable_variables)]
            with merge_calls_run_directly():
                self.outer_optimizer.apply_gradients(zip(deltas, self.anchors))
        for variable, value in zip(self._averaged(), first):
            if self.anchors is not None and id(variable) in trainable:
                value = tf.convert_to_tensor(self.anchors[trainable[id(variable)]].value)
            variable.assign(tf.cast(value, variable.dtype))
        self.since_average.assign(0)
