"""What each replica computes in one step of tfdp.Trainer, in the order that makes N replicas equal one device.

forward -> per-example loss -> SUM over this replica's examples (+ model.losses once per
example) -> x (loss scale / (local examples x replicas)) under float16, so the backward
pass sees Keras's magnitudes -> gradients -> back to the gradient of the SUM (float32)
-> accumulate micro-batches locally -> ONE packed all-reduce -> / global examples
-> finite check (float16, or a compressed all-reduce) on the reduced values, the same on
every replica -> clip by global norm -> apply once (the optimizer's `iterations` counts
applied updates only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

from tfdp._cross_replica import merge_calls_run_directly, nonempty_batch
from tfdp.training import all_reduce
from tfdp.training.local_steps import LocalSteps
from tfdp.training.precision import DynamicLossScale


def per_example_loss_fn(loss) -> Callable | None:
    """fn(y_true, y_pred) -> per-example losses, from a Keras loss name, object or function."""
    if loss is None:
        return None
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        return loss.call  # Keras's unreduced values
    return loss


def _one_loss_per_example(values: tf.Tensor) -> tf.Tensor:
    """Reduces anything beyond the batch axis by its mean: one float32 loss per example."""
    values = tf.cast(values, tf.float32)
    return tf.reduce_mean(values, axis=list(range(1, values.shape.rank))) if values.shape.rank > 1 else values


class ReplicaStep:
    """The replica-context functions of one Trainer, and the update it applies once.

    Args:
        model, optimizer, strategy: as given to the Trainer (optimizer built in scope).
        loss: fn(y_true, y_pred) -> per-example loss, or None with `compute_loss`.
        compute_loss: fn(model, batch, training) -> per-example loss, or None.
        metrics: Keras metrics updated per replica (their SUM-on-read state is exact).
        loss_tracker: a keras.metrics.Mean of the per-example loss (+ model.losses).
        loss_scale: the float16 loss scale, or None.
        clip_global_norm: clip the reduced gradient to this global norm, or None.
        all_reduce_dtype: "float32", "float16" or "bfloat16".
        skipped_steps: a counter of steps skipped for non-finite gradients.
        local: local steps (each replica applies its own gradients, averages every H
            updates), or None: every step all-reduces the gradients.
    """

    def __init__(self, *, model: keras.Model, optimizer, strategy, loss: Callable | None,
                 compute_loss: Callable | None, metrics: Sequence[keras.metrics.Metric],
                 loss_tracker: keras.metrics.Mean, loss_scale: DynamicLossScale | None,
                 clip_global_norm: float | None, all_reduce_dtype: str, skipped_steps: tf.Variable,
                 local: LocalSteps | None = None):
        self.model, self.optimizer, self.strategy, self.loss = model, optimizer, strategy, loss
        self.compute_loss, self.metrics, self.loss_tracker = compute_loss, metrics, loss_tracker
        self.loss_scale, self.clip_global_norm = loss_scale, clip_global_norm
        self.all_reduce_dtype, self.skipped_steps, self.local = all_reduce_dtype, skipped_steps, local
        # Only a float16 loss scale or a compressed all-reduce can make a step non-finite
        # that float32 would not; Keras applies a non-finite float32 step, and so do we.
        self.checks_finite = loss_scale is not None or all_reduce_dtype != "float32"

    # -- replica context ---------------------------------------------------------------

    def _loss_sum(self, batch, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """(SUM of this replica's per-example losses + model.losses per example, examples)."""
        if self.compute_loss is not None:
            per_example = _one_loss_per_example(self.compute_loss(self.model, batch, training))
            n = tf.shape(per_example)[0]
        else:
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
            x, y, sample_weight, n = nonempty_batch(x, y, sample_weight)
            y_pred = self.model(x, training=training)
            per_example = _one_loss_per_example(self.loss(y, y_pred)) * tf.cast(sample_weight, tf.float32)
            for metric in self.metrics:
                metric.update_state(y, y_pred, sample_weight=sample_weight)
        extra = tf.add_n([tf.cast(l, tf.float32) for l in self.model.losses]) if self.model.losses else 0.0
        n = tf.cast(n, tf.float32)
        # model.losses count once per example, so that the all-reduced sum / examples adds
        # them exactly once; an empty share (n = 0) contributes nothing.
        total = tf.reduce_sum(per_example) + extra * n
        self.loss_tracker.update_state(tf.math.divide_no_nan(total, n), sample_weight=n)
        return total, n

    def micro_step(self, batch, accumulated=None):
        """Forward and backward on this replica's batch; adds to `accumulated` (gradients, examples)."""
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            total, n = self._loss_sum(batch, training=True)
            multiplier = self._loss_multiplier(n)
            scaled = total if multiplier is None else total * multiplier
        grads = tape.gradient(scaled, variables)
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g) for g, v in zip(grads, variables)]
        if multiplier is not None:
            grads = [tf.cast(g, tf.float32) / multiplier for g in grads]
        if accumulated is not None:
            grads = [a + g for a, g in zip(accumulated[0], grads)]
            n = accumulated[1] + n
        return grads, n

    def _loss_multiplier(self, n: tf.Tensor) -> tf.Tensor | None:
        """What the loss SUM is multiplied by before the backward pass (None: nothing).

        float16: the loss scale / (local examples x replicas), so that the backward pass
        sees what Keras's LossScaleOptimizer sees (the local mean / replicas x scale) and
        overflows as rarely. The optimizer's own `loss_scale_factor` is honoured too.
        The gradients are divided by the same multiplier right after.
        """
        multiplier = None
        if self.loss_scale is not None:
            replicas = float(self.strategy.num_replicas_in_sync)
            multiplier = self.loss_scale.scale / tf.maximum(n * replicas, 1.0)
        factor = self.optimizer.loss_scale_factor
        if factor is not None:
            multiplier = factor if multiplier is None else multiplier * factor
        return None if multiplier is None else tf.cast(multiplier, tf.float32)

    def apply_step(self, accumulated) -> None:
        """The all-reduce, then the update, decided identically on every replica."""
        if self.local is not None:
            self._apply_step_locally(accumulated)
            return
        grads, n = accumulated
        if self.strategy.num_replicas_in_sync > 1:
            grads, n = all_reduce.mean_gradients(grads, n, dtype=self.all_reduce_dtype)
        else:
            grads = [g / n for g in grads]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads]) if self.checks_finite else None
        tf.distribute.get_replica_context().merge_call(self._apply_once, args=(grads, finite))

    def _apply_step_locally(self, accumulated) -> None:
        """Local steps: this replica's own mean gradient, clipped, applied to its own copies."""
        grads, n = accumulated
        grads = [g / tf.maximum(n, 1.0) for g in grads]
        if self.clip_global_norm:
            grads = tf.clip_by_global_norm(grads, self.clip_global_norm)[0]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads]) if self.checks_finite else None
        factor = self.optimizer.loss_scale_factor
        if factor is not None:  # the optimizer divides by it again
            grads = [g * factor for g in grads]
        tf.distribute.get_replica_context().merge_call(self._apply_local, args=(grads, finite))

    def eval_step(self, batch) -> None:
        self._loss_sum(batch, training=False)

    def predict_step(self, batch):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
        x, _, _, n = nonempty_batch(x, None, None)
        return keras.tree.map_structure(lambda t: t[:n], self.model(x, training=False))

    # -- cross-replica context ----------------------------------------------------------

    def _apply_local(self, strategy, grads, finite) -> None:
        if len(strategy.experimental_local_results(grads[0])) == 1:  # one replica here: plain tensors
            grads = [strategy.experimental_local_results(g)[0] for g in grads]
        if finite is None:
            self.local.apply_local(grads)
        else:  # a float16 loss scale of this replica's own (one replica per process)
            finite = strategy.experimental_local_results(finite)[0]

            def skip():
                self.skipped_steps.assign_add(1)

            tf.cond(finite, lambda: self.local.apply_local(grads), skip)
            self.loss_scale.update(finite)
        self.local.count_update()

    def _apply_once(self, strategy, grads, finite) -> None:
        # The reduced values are the same on every replica: take the first, decide once.
        first = lambda v: strategy.experimental_local_results(v)[0]  # noqa: E731
        grads = [first(g) for g in grads]

        def apply():
            clipped = tf.clip_by_global_norm(grads, self.clip_global_norm)[0] if self.clip_global_norm else grads
            factor = self.optimizer.loss_scale_factor
            if factor is not None:  # the optimizer divides by it again
                clipped = [g * factor for g in clipped]
            with merge_calls_run_directly():
                self.optimizer.apply_gradients(zip(clipped, self.model.trainable_variables))

        if finite is None:
            apply()
            return
        def skip():
            self.skipped_steps.assign_add(1)

        finite = first(finite)
        tf.cond(finite, apply, skip)
        if self.loss_scale is not None:
            self.loss_scale.update(finite)
