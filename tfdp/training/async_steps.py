"""tfdp.Trainer on a parameter-server strategy: asynchronous steps on the workers, staleness bounded.

The chief runs the loop; each step runs on whichever worker a `ClusterCoordinator` gives
it to, reads the weights from the ps tasks, computes the gradient of the mean loss of its
batch (clipped by global norm if asked) and applies it to the ps-held variables at once,
without waiting for the other workers.

Staleness: a counter on a ps task (`version`) orders the updates. A step reads it before
its forward pass and takes a ticket from it (an atomic add on the ps) when its gradient is
ready; its staleness is the number of tickets taken by other steps in between, that is
the updates begun since it read the weights. With `max_staleness=S` a step whose
staleness exceeds S is dropped (counted, logged); every applied update's staleness is
recorded and reported as a histogram at the end of each epoch (the log and TensorBoard).
With one worker every step has staleness 0 and the loop is plain sequential training.

A lost worker costs nothing but time: the coordinator runs its steps again on the others
(a step is a closure; its RemoteValue resolves once some worker has run it), and takes it
back when it returns (tfdp-launch restarts it on its address).
"""

from __future__ import annotations

import collections

import keras
import numpy as np
import tensorflow as tf

from tfdp import _compat
from tfdp._compat import merge_calls_run_directly
from tfdp import gradients
from tfdp.errors import ConfigError, check_whole
from tfdp.training import losses

NO_LIMIT = -1  # max_staleness=None: every update is applied, its staleness still measured


def is_parameter_server(strategy) -> bool:
    """Whether `strategy` is a ParameterServerStrategy (asynchronous training)."""
    return isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)


def check_options(*, max_staleness, mixed_precision, gradient_accumulation_steps, local_steps, all_reduce_dtype,
                  compute_loss, save_every_steps) -> None:
    """What the asynchronous loop does not do, as ConfigErrors naming the option."""
    check_whole("max_staleness", max_staleness, call="Trainer", minimum=0, allow_none=True,
                meaning="the updates another step may have begun since this one read the weights; None: no bound")
    unsupported = {"mixed_precision=\"mixed_float16\"": mixed_precision == "mixed_float16",
                   f"gradient_accumulation_steps={gradient_accumulation_steps}": gradient_accumulation_steps != 1,
                   f"local_steps={local_steps}": local_steps != 1,
                   f"all_reduce_dtype=\"{all_reduce_dtype}\"": all_reduce_dtype != "float32",
                   "compute_loss": compute_loss is not None,
                   f"save_every_steps={save_every_steps}": save_every_steps is not None}
    refused = [name for name, present in unsupported.items() if present]
    if refused:
        raise ConfigError(f"Trainer({', '.join(refused)}) on a parameter_server strategy: each worker applies its "
                          "own gradient at once, so there is no all-reduce to compress, no replicas to average "
                          "and no agreed float16 loss scale nor a step every worker has reached (checkpoints are "
                          "written at the end of each epoch), and tfdp does not implement those asynchronously. "
                          "Fix: leave them out (mixed_bfloat16 works), or use a synchronous strategy.")


def check_not_sharded(model) -> None:
    """Keras 3 layers cannot train variables sharded over the ps tasks (create_strategy(variable_shards=N))."""
    sharded = [v.path for v in model.weights if _compat.is_sharded(v)]
    if sharded:
        raise ConfigError(
            f"Trainer: {', '.join(sharded)} {'is' if len(sharded) == 1 else 'are'} sharded over the ps tasks "
            "(create_strategy(variable_shards=...)), and Keras 3 layers cannot use sharded variables: a Keras "
            "variable wraps one tf.Variable and reads its handle, which a ShardedVariable has not (keras.layers."
            "Embedding fails with \"'ShardedVariable' object has no attribute 'handle'\" on Keras 3.15.1). Fix: "
            "leave variable_shards out (each variable then lives whole on one ps task, round-robin), or split a "
            "large table into several Embedding layers, which the ps tasks then share.")


def check_not_synchronous(max_staleness) -> None:
    if max_staleness is not None:
        raise ConfigError(f"Trainer(max_staleness={max_staleness}): staleness exists only in asynchronous "
                          'training. Fix: use create_strategy("parameter_server"), or leave max_staleness out.')


class AsyncSteps:
    """The worker-side step functions of one Trainer and the staleness they report.

    Args:
        model, optimizer, strategy: the Trainer's (built in the strategy's scope).
        loss: the Trainer's CompiledLoss (training/losses.py).
        metrics, loss_tracker: Keras metrics (their variables live on the ps tasks).
        global_clipnorm: clip each step's gradient to this global norm, or None.
        max_staleness: drop a step whose staleness exceeds this; None: never drop.
    """

    def __init__(self, *, model, optimizer, strategy, loss, metrics, loss_tracker, global_clipnorm,
                 max_staleness: int | None):
        self.model, self.optimizer, self.strategy, self.loss = model, optimizer, strategy, loss
        self.metrics, self.loss_tracker, self.global_clipnorm = metrics, loss_tracker, global_clipnorm
        self.max_staleness = NO_LIMIT if max_staleness is None else max_staleness
        self.coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
        with strategy.scope():
            self.version = tf.Variable(0, dtype=tf.int64, trainable=False, name="update_version")
            self.dropped = tf.Variable(0, dtype=tf.int64, trainable=False, name="dropped_stale_steps")
        self.histogram: collections.Counter = collections.Counter()
        self._eval_step = None

    # -- worker side -------------------------------------------------------------------

    def loss_and_outputs(self, batch, training: bool):
        """(the batch's loss as one device computes it + model.losses, y, y_pred)."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        y_pred = self.model(x, training=training)
        examples = tf.cast(tf.shape(keras.tree.flatten(y_pred)[0])[0], tf.float32)
        terms = self.loss.terms(y, y_pred, sample_weight, examples)
        loss = losses.total_loss([s for s, _ in terms.values()], [c for _, c in terms.values()])
        if self.model.losses:
            loss += tf.add_n([tf.cast(extra, tf.float32) for extra in self.model.losses])
        return loss, y, y_pred

    def _apply(self, grads):
        with merge_calls_run_directly():  # the cross-replica context: no replica context to merge in
            self.optimizer.apply(grads, self.model.trainable_variables)
        return tf.constant(1, tf.int64)

    def _gradients(self, batch):
        """Replica context, on the worker: (version read first, clipped gradients); updates the metrics."""
        read = self.version.read_value()
        with tf.control_dependencies([read]):  # the weights are read after the version
            with tf.GradientTape() as tape:
                loss, y, y_pred = self.loss_and_outputs(batch, training=True)
            grads = tape.gradient(loss, self.model.trainable_variables)
        if self.global_clipnorm:
            grads = gradients.clip_by_global_norm(grads, self.global_clipnorm)
        self._update_metrics(loss, y, y_pred)
        return read, grads

    def _train_step(self, iterator):
        """Cross-replica context (Keras's optimizer may not run under a condition in a replica context)."""
        read, grads = self.strategy.run(self._gradients, args=(next(iterator),))
        with tf.control_dependencies(grads):
            ticket = self.version.assign_add(1, read_value=True)  # atomic on its ps task
        staleness = ticket - 1 - read
        if self.max_staleness == NO_LIMIT:  # nothing to drop: no condition, no remote count per step
            self._apply(grads)
            return staleness
        fresh = staleness <= self.max_staleness
        applied = tf.cond(fresh, lambda: self._apply(grads), lambda: tf.constant(0, tf.int64))
        self.dropped.assign_add(1 - applied)
        return tf.where(fresh, staleness, -1 - staleness)  # < 0: dropped, with its staleness

    def train_function(self, steps: int):
        """fn(per_worker_iterator) -> staleness of each of `steps` steps (negative: dropped)."""

        @tf.function
        def run(iterator):
            return tf.stack([self._train_step(iterator) for _ in range(steps)])

        return run

    def _update_metrics(self, loss, y, y_pred) -> None:
        self.loss_tracker.update_state(loss, sample_weight=tf.shape(keras.tree.flatten(y_pred)[0])[0])
        self.metrics.update_state(y, y_pred)

    # -- chief side --------------------------------------------------------------------

    def eval_step(self, batch) -> None:
        """Updates the loss tracker and metrics with one batch, on the chief."""
        if self._eval_step is None:
            self._eval_step = tf.function(lambda b: self._update_metrics(*self.loss_and_outputs(b, training=False)))
        self._eval_step(batch)

    def per_worker_iterator(self, data):
        """An iterator of batches on every worker, from a Dataset (serialized to each worker) or a
        dataset_fn(input_context) each worker calls."""
        if isinstance(data, tf.data.Dataset):
            per_worker = self.coordinator.create_per_worker_dataset(data)
        elif callable(data):
            per_worker = self.coordinator.create_per_worker_dataset(
                lambda: self.strategy.distribute_datasets_from_function(data))
        else:
            raise ConfigError(f"Trainer.fit(data={type(data).__name__}) on a parameter_server strategy: give a "
                              "tf.data.Dataset of batches or dataset_fn(input_context) -> Dataset; each worker "
                              "reads its own (repeat it: an epoch is steps_per_epoch steps).")
        return iter(per_worker)

    def record(self, staleness: np.ndarray) -> None:
        self.histogram.update(int(s) for s in staleness if s >= 0)

    def take_histogram(self) -> dict[int, int]:
        """Staleness -> applied updates since the last call."""
        histogram, self.histogram = dict(sorted(self.histogram.items())), collections.Counter()
        return histogram
