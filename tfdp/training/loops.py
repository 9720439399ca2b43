"""The loop functions of tfdp.Trainer: up to N steps inside one tf.function, counted by the loop.

Each loop reads its batches with `get_next_as_optional` and stops when the data ends,
returning how many steps it ran and how many batches it read: the Trainer's step count
and data position come from there, never from the optimizer (whose `iterations` counts
the updates applied). A final group of fewer than `gradient_accumulation_steps` batches is applied
as the smaller batch it is, so every example counts once per epoch.
"""

from __future__ import annotations

import tensorflow as tf

from tfdp.training.replica_step import ReplicaStep


def train_loop(step: ReplicaStep, strategy: tf.distribute.Strategy, gradient_accumulation_steps: int):
    """fn(iterator, max_steps) -> (steps run, batches read), as one tf.function."""

    @tf.function
    def loop(iterator, max_steps):
        steps, batches = tf.constant(0), tf.constant(0)
        for _ in tf.range(max_steps):
            optional = iterator.get_next_as_optional()
            if not optional.has_value():
                break
            accumulated = strategy.run(step.micro_step, args=(optional.get_value(),))
            batches += 1
            for _ in range(gradient_accumulation_steps - 1):  # unrolled: K is small and fixed
                optional = iterator.get_next_as_optional()
                has_value = optional.has_value()
                accumulated = tf.cond(
                    has_value,
                    lambda o=optional, a=accumulated: strategy.run(step.micro_step, args=(o.get_value(), a)),
                    lambda a=accumulated: a)
                batches += tf.cast(has_value, tf.int32)
            strategy.run(step.apply_step, args=(accumulated,))
            if step.local is not None:
                step.local.average_when_due(strategy)
            steps += 1
        return steps, batches

    return loop


def eval_loop(step: ReplicaStep, strategy: tf.distribute.Strategy):
    """fn(iterator, max_steps) -> batches read, as one tf.function."""

    @tf.function
    def loop(iterator, max_steps):
        batches = tf.constant(0)
        for _ in tf.range(max_steps):
            optional = iterator.get_next_as_optional()
            if not optional.has_value():
                break
            strategy.run(step.eval_step, args=(optional.get_value(),))
            batches += 1
        return batches

    return loop


def skip_loop():
    """fn(iterator, batches) -> batches read past (without training), as one tf.function."""

    @tf.function
    def loop(iterator, max_batches):
        batches = tf.constant(0)
        for _ in tf.range(max_batches):
            if not iterator.get_next_as_optional().has_value():
                break
            batches += 1
        return batches

    return loop


def predict_step(step: ReplicaStep, strategy: tf.distribute.Strategy):
    """fn(batch) -> outputs of the global batch in order, gathered from every replica."""

    @tf.function
    def predict(batch):
        outputs = strategy.run(step.predict_step, args=(batch,))
        return tf.nest.map_structure(lambda v: strategy.gather(v, axis=0), outputs)

    return predict


def average_pending(local, strategy: tf.distribute.Strategy):
    """fn() that averages the replicas' weights if an update was applied since the last average."""
    return tf.function(lambda: local.average_if_pending(strategy))
