"""The replica step of tfdp.Trainer, in the order that makes N replicas equal one device.

forward -> per-example loss -> sum (+ model.losses once per example) -> loss scale
-> gradients -> accumulate K micro-batches (locally) -> ONE packed all-reduce of
[gradients, example count] (skipped on one replica) -> divide by scale x global examples
-> float16 only: finite check (the same on every replica: it reads reduced values) -> clip
by global norm -> apply.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras

from tfdp._cross_replica import merge_calls_run_directly, nonempty_batch
from tfdp._requirements import import_tensorflow
from tfdp.training.precision import DynamicLossScale

tf = import_tensorflow()

COMPRESSIONS = ("none", "float16", "bfloat16")


def per_example_loss_fn(loss) -> Callable | None:
    """fn(y_true, y_pred) -> per-example losses, from a Keras loss name, object or function."""
    if loss is None:
        return None
    if isinstance(loss, keras.losses.Loss):
        return loss.call  # Keras's unreduced values
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
        return loss.call if isinstance(loss, keras.losses.Loss) else loss
    return loss


def _per_example(values: tf.Tensor) -> tf.Tensor:
    """Reduces anything beyond the batch axis by its mean: one loss per example."""
    values = tf.cast(values, tf.float32)
    return tf.reduce_mean(values, axis=list(range(1, values.shape.rank))) if values.shape.rank > 1 else values


class Steps:
    """Builds the replica functions of one Trainer.

    Args:
        model, optimizer, strategy: as given to the Trainer (optimizer built in scope).
        loss: fn(y_true, y_pred) -> per-example loss, or None with `compute_loss`.
        compute_loss: fn(model, batch, training) -> per-example loss, or None.
        metrics: Keras metrics updated per replica (their SUM-on-read state is exact).
        loss_tracker: a keras.metrics.Mean of the per-example loss (+ model.losses).
        loss_scale: the float16 loss scale, or None.
        clip_global_norm: clip the reduced gradient to this global norm, or None.
        compression: dtype of the all-reduce ("none", "float16", "bfloat16").
    """

    def __init__(self, *, model: keras.Model, optimizer, strategy, loss: Callable | None,
                 compute_loss: Callable | None,
                 metrics: Sequence[keras.metrics.Metric], loss_tracker: keras.metrics.Mean,
                 loss_scale: DynamicLossScale | None, clip_global_norm: float | None, compression: str):
        self.model, self.optimizer, self.strategy, self.loss = model, optimizer, strategy, loss
        self.compute_loss = compute_loss
        self.metrics, self.loss_tracker, self.loss_scale = metrics, loss_tracker, loss_scale
        self.clip_global_norm, self.compression = clip_global_norm, compression

    # -- replica context ---------------------------------------------------------------

    def _forward(self, batch, training: bool):
        if self.compute_loss is not None:
            per_example = _per_example(self.compute_loss(self.model, batch, training))
            return self._total(per_example, tf.shape(per_example)[0])
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        x, y, sample_weight, n = nonempty_batch(x, y, sample_weight)
        y_pred = self.model(x, training=training)
        per_example = _per_example(self.loss(y, y_pred)) * tf.cast(sample_weight, tf.float32)
        for metric in self.metrics:
            metric.update_state(y, y_pred, sample_weight=sample_weight)
        return self._total(per_example, n)

    def _total(self, per_example: tf.Tensor, n) -> tuple[tf.Tensor, tf.Tensor]:
        """(sum of losses + model.losses per example, examples) of this replica."""
        extra = tf.add_n([tf.cast(l, tf.float32) for l in self.model.losses]) if self.model.losses else 0.0
        n = tf.cast(n, tf.float32)
        # model.losses count once per example, so that the all-reduced sum / examples adds
        # them exactly once; an empty share (n = 0) contributes nothing.
        total = tf.reduce_sum(per_example) + extra * n
        self.loss_tracker.update_state(tf.math.divide_no_nan(total, n), sample_weight=n)
        return total, n

    def micro_step(self, batch, accumulated=None):
        """Forward and backward on this replica's batch; adds to `accumulated` gradients."""
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            total, n = self._forward(batch, training=True)
            scaled = total * self.loss_scale.scale if self.loss_scale else total
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                 for g, v in zip(tape.gradient(scaled, variables), variables)]
        if accumulated is not None:
            grads = [a + g for a, g in zip(accumulated[0], grads)]
            n = accumulated[1] + n
        return grads, n

    def apply_step(self, accumulated) -> None:
        """One packed all-reduce, then the update, decided identically on every replica."""
        grads, n = accumulated
        if self.strategy.num_replicas_in_sync > 1:
            grads, n = self._all_reduce(grads, n)
        inverse = tf.math.divide_no_nan(1.0, n * (self.loss_scale.scale if self.loss_scale else 1.0))
        grads = [g * inverse for g in grads]
        # Only a float16 loss scale skips non-finite steps (as Keras's LossScaleOptimizer);
        # it reads the reduced gradients, so every replica decides alike.
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads]) if self.loss_scale else None
        tf.distribute.get_replica_context().merge_call(self._apply_once, args=(grads, finite))

    def _all_reduce(self, grads, n):
        """SUM of [gradients, example count] over all replicas, as ONE packed collective."""
        shapes = [g.shape for g in grads]
        packed = tf.concat([tf.reshape(g, [-1]) for g in grads] + [tf.reshape(n, [1])], axis=0)
        if self.compression != "none":
            packed = tf.cast(packed, self.compression)
        packed = tf.cast(tf.distribute.get_replica_context().all_reduce("SUM", packed), tf.float32)
        *pieces, examples = tf.split(packed, [s.num_elements() for s in shapes] + [1])
        return [tf.reshape(p, s) for p, s in zip(pieces, shapes)], examples[0]

    def eval_step(self, batch) -> None:
        self._forward(batch, training=False)

    # -- cross-replica context ----------------------------------------------------------

    def _apply_once(self, strategy, grads, finite) -> None:
        # The reduced values are the same on every replica: take the first, decide once.
        first = lambda v: strategy.experimental_local_results(v)[0]  # noqa: E731
        grads = [first(g) for g in grads]

        def apply():
            clipped = tf.clip_by_global_norm(grads, self.clip_global_norm)[0] if self.clip_global_norm else grads
            with merge_calls_run_directly():
                self.optimizer.apply_gradients(zip(clipped, self.model.trainable_variables))

        if self.loss_scale is None:
            apply()
            return
        finite = first(finite)
        tf.cond(finite, apply, lambda: None)
        self.loss_scale.update(finite)
