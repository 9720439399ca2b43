"""What each replica computes in one step of tfdp.Trainer, in the order that makes N replicas equal one device.

forward -> the loss as (SUM, COUNT) terms, as Keras reduces it on one device
(training/losses.py: examples, valid tokens under a mask, weights) + model.losses once
per example -> x (loss scale / (local count x replicas)) under float16, so the backward
pass sees Keras's magnitudes -> gradients of each term's SUM (IndexedSlices kept sparse)
-> accumulate micro-batches locally (sums, counts and gradients add up) -> ONE packed
all-reduce -> / each term's GLOBAL count -> finite check (float16, or a compressed
all-reduce) on the reduced values, the same on every replica -> clip by global norm ->
apply once (the optimizer's `iterations` counts applied updates only).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from tfdp._compat import merge_calls_run_directly
from tfdp._cross_replica import nonempty_batch, only_if_real, real
from tfdp import gradients
from tfdp.training import all_reduce, losses
from tfdp.training.local_steps import LocalSteps
from tfdp.training.precision import DynamicLossScale


class ReplicaStep:
    """The replica-context functions of one Trainer, and the update it applies once.

    Args:
        model, optimizer, strategy: as given to the Trainer (optimizer built in scope).
        loss: the Trainer's CompiledLoss, or None with `compute_loss`.
        compute_loss: fn(model, batch, training) -> per-example losses or (SUM, COUNT), or None.
        metrics: a Keras metric over (y, y_pred, sample_weight) updated per replica (its
            SUM-on-read state is exact), or None.
        loss_tracker: a keras.metrics.Mean of each step's loss (as one device computes it).
        loss_scale: the float16 loss scale, or None.
        global_clipnorm: clip the reduced gradient to this global norm, or None.
        all_reduce_dtype: "float32", "float16" or "bfloat16".
        skipped_steps: a counter of steps skipped for non-finite gradients.
        local: local steps (each replica applies its own gradients, averages every H
            updates), or None: every step all-reduces the gradients.
    """

    def __init__(self, *, model: keras.Model, optimizer, strategy, loss: losses.CompiledLoss | None,
                 compute_loss: Callable | None, metrics, loss_tracker: keras.metrics.Mean,
                 loss_scale: DynamicLossScale | None, global_clipnorm: float | None, all_reduce_dtype: str,
                 skipped_steps: tf.Variable, local: LocalSteps | None = None):
        self.model, self.optimizer, self.strategy, self.loss = model, optimizer, strategy, loss
        self.compute_loss, self.metrics, self.loss_tracker = compute_loss, metrics, loss_tracker
        self.loss_scale, self.global_clipnorm = loss_scale, global_clipnorm
        self.all_reduce_dtype, self.skipped_steps, self.local = all_reduce_dtype, skipped_steps, local
        # Only a float16 loss scale or a compressed all-reduce can make a step non-finite
        # that float32 would not; Keras applies a non-finite float32 step, and so do we.
        self.checks_finite = loss_scale is not None or all_reduce_dtype != "float32"

    # -- replica context ---------------------------------------------------------------

    def _terms(self, batch, training: bool) -> tuple[dict, tf.Tensor, tf.Tensor]:
        """({term: (SUM, COUNT or None)} of this replica's batch + model.losses per example, examples,
        1.0 or 0.0 for the padding of an empty share)."""
        if self.compute_loss is not None:
            terms = losses.custom_terms(self.compute_loss(self.model, batch, training))
            first = keras.tree.flatten(batch)[0]
            n = tf.cast(tf.shape(first)[0], tf.float32)
            flag = tf.constant(1.0)
        else:
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
            x, y, sample_weight, n = nonempty_batch(x, y, sample_weight)
            y_pred = self.model(x, training=training)
            flag, n = real(n), tf.cast(n, tf.float32)
            terms = self.loss.terms(y, y_pred, sample_weight, n)
            if self.metrics is not None:  # the padding of an empty share updates nothing
                tf.cond(n > 0, lambda: self._update_metrics(y, y_pred, sample_weight), tf.no_op)
        if self.model.losses:
            extra = tf.add_n([tf.cast(v, tf.float32) for v in self.model.losses])
            losses.add(terms, losses.EXAMPLES, extra * n, n)
        terms = {k: (only_if_real(s, flag), None if c is None else only_if_real(c, flag))
                 for k, (s, c) in sorted(terms.items())}
        return terms, n, flag

    def _update_metrics(self, y, y_pred, sample_weight):
        self.metrics.update_state(y, y_pred, sample_weight=sample_weight)
        return tf.no_op()

    @staticmethod
    def _scalars(terms: dict, n) -> tf.Tensor:
        """[SUM per term, COUNT per term (0 for "sum"), examples]: what the all-reduce carries."""
        sums = [s for s, _ in terms.values()]
        counts = [tf.zeros([]) if c is None else c for _, c in terms.values()]
        return tf.stack([*sums, *counts, n])

    @staticmethod
    def _counts_at(keys) -> list[int | None]:
        """Per term (sorted keys), where its COUNT is in the scalars; None: a "sum" term, never divided."""
        keys = list(keys)
        return [None if key == losses.SUM else len(keys) + k for k, key in enumerate(keys)]

    def micro_step(self, batch, accumulated=None):
        """Forward and backward on this replica's batch; adds to `accumulated` ({term: gradients}, scalars)."""
        variables = self.model.trainable_variables
        with tf.GradientTape(persistent=True) as tape:
            terms, n, flag = self._terms(batch, training=True)
            scaled = {k: (s, self._loss_multiplier(n if c is None else c)) for k, (s, c) in terms.items()}
            scaled = {k: (s if m is None else s * m, m) for k, (s, m) in scaled.items()}
        grads_by_term = {}
        for key, (value, multiplier) in scaled.items():
            grads = [only_if_real(gradients.as_gradient(g, v), flag)
                     for g, v in zip(tape.gradient(value, variables), variables)]
            if multiplier is not None:
                grads = [gradients.scale(gradients.cast(g, tf.float32), 1.0 / multiplier) for g in grads]
            grads_by_term[key] = grads
        del tape
        scalars = self._scalars(terms, n)
        if accumulated is not None:
            grads_by_term = {k: [gradients.add(a, g) for a, g in zip(accumulated[0][k], new)]
                             for k, new in grads_by_term.items()}
            scalars = accumulated[1] + scalars
        return grads_by_term, scalars

    def _loss_multiplier(self, count: tf.Tensor) -> tf.Tensor | None:
        """What a term's SUM is multiplied by before the backward pass (None: nothing).

        float16: the loss scale / (local count x replicas), so that the backward pass
        sees what Keras's LossScaleOptimizer sees (the local mean / replicas x scale) and
        overflows as rarely. The optimizer's own `loss_scale_factor` is honoured too.
        The gradients are divided by the same multiplier right after.
        """
        multiplier = None
        if self.loss_scale is not None:
            replicas = float(self.strategy.num_replicas_in_sync)
            multiplier = self.loss_scale.scale / tf.maximum(count * replicas, 1.0)
        factor = self.optimizer.loss_scale_factor
        if factor is not None:
            multiplier = factor if multiplier is None else multiplier * factor
        return None if multiplier is None else tf.cast(multiplier, tf.float32)

    def _track(self, keys, scalars: tf.Tensor, examples: tf.Tensor) -> None:
        """The step's loss as one device computes it, weighted by this replica's examples."""
        at = self._counts_at(keys)
        total = tf.add_n([scalars[k] if i is None else tf.math.divide_no_nan(scalars[k], scalars[i])
                          for k, i in enumerate(at)])
        self.loss_tracker.update_state(total, sample_weight=examples)

    def apply_step(self, accumulated) -> None:
        """The all-reduce, then the update, decided identically on every replica."""
        grads_by_term, scalars = accumulated
        if self.local is not None:
            self._apply_step_locally(grads_by_term, scalars)
            return
        grads, reduced = all_reduce.mean_gradients(
            list(grads_by_term.values()), scalars, self._counts_at(grads_by_term),
            replicas=self.strategy.num_replicas_in_sync, dtype=self.all_reduce_dtype)
        self._track(grads_by_term, reduced, scalars[-1])
        finite = gradients.all_finite(grads) if self.checks_finite else None
        tf.distribute.get_replica_context().merge_call(self._apply_once, args=(grads, finite))

    def _apply_step_locally(self, grads_by_term, scalars) -> None:
        """Local steps: this replica's own mean gradient, clipped, applied to its own copies."""
        self._track(grads_by_term, scalars, scalars[-1])
        grads, _ = all_reduce.mean_gradients(list(grads_by_term.values()), scalars, self._counts_at(grads_by_term),
                                             replicas=1)
        if self.global_clipnorm:
            grads = gradients.clip_by_global_norm(grads, self.global_clipnorm)
        finite = gradients.all_finite(grads) if self.checks_finite else None
        factor = self.optimizer.loss_scale_factor
        if factor is not None:  # the optimizer divides by it again
            grads = [gradients.scale(g, factor) for g in grads]
        tf.distribute.get_replica_context().merge_call(self._apply_local, args=(grads, finite))

    def eval_step(self, batch) -> None:
        terms, n, _ = self._terms(batch, training=False)
        scalars = self._scalars(terms, n)
        reduced = all_reduce.sum_packed(scalars) if self.strategy.num_replicas_in_sync > 1 else scalars
        self._track(terms, reduced, n)

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
            clipped = gradients.clip_by_global_norm(grads, self.global_clipnorm) if self.global_clipnorm else grads
            factor = self.optimizer.loss_scale_factor
            if factor is not None:  # the optimizer divides by it again
                clipped = [gradients.scale(g, factor) for g in clipped]
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
