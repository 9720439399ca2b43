"""The asynchronous runner of tfdp.Trainer's loop, on a parameter-server strategy (async_steps.py).

The Trainer's outer loop (trainer.py) owns epochs, callbacks, checkpoints, summaries,
preemption and resume, as for synchronous steps. This runner schedules chunks of
`steps_per_execution` steps on the workers through the ClusterCoordinator: every chunk of an
epoch is in flight at once, and the loop takes their results in order, so the progress
bar and `on_train_batch_end` follow the steps as they complete. At the end of each epoch
it waits for every scheduled step and logs the staleness histogram. An epoch is
`steps_per_epoch` steps (the workers read their own copies of the data). Evaluation and
prediction run on the chief (`evaluate`, `predict` below).
"""

from __future__ import annotations

import logging
import sys

import keras
import numpy as np
import tensorflow as tf

from tfdp.errors import ConfigError

logger = logging.getLogger("tfdp")


def check_fit(*, steps_per_epoch: int | None, metrics, data) -> None:
    """What a fit on a parameter_server strategy needs: steps_per_epoch, and metric objects for a dataset_fn."""
    _check_steps_per_epoch(steps_per_epoch)
    _check_metrics_resolvable(metrics, data)


def _check_steps_per_epoch(steps_per_epoch: int | None) -> None:
    if steps_per_epoch is None:
        raise ConfigError("Trainer.fit(steps_per_epoch=None) on a parameter_server strategy: the workers read "
                          "their own copies of the data, so no pass over it marks an epoch. Fix: give "
                          "steps_per_epoch (e.g. examples // global batch) and repeat() the dataset.")


def _check_metrics_resolvable(metrics, data) -> None:
    """Metric names need the data's shapes; a dataset_fn has none on the chief."""
    if not isinstance(data, tf.data.Dataset) and any(isinstance(m, str)
                                                     for m in keras.tree.flatten(metrics.identifiers)):
        raise ConfigError("Trainer(metrics=[names]) with a dataset_fn on a parameter_server strategy: names "
                          "are resolved from the data's shapes. Fix: give keras.metrics objects.")


class AsyncRunner:
    """Schedules the steps of one fit on the workers; every chunk of an epoch in flight.

    Args:
        steps: the asynchronous steps (train functions, coordinator, staleness records).
        data: a tf.data.Dataset of batches or dataset_fn(input_context) -> Dataset.
        summaries: the summary writer of the model_dir (the staleness histogram), or None.
        verbose: the fit's verbosity (the staleness line is printed when > 0).
    """

    in_flight = sys.maxsize
    batches_read = 0  # the workers read their own copies of the data: no position to keep

    def __init__(self, steps, data, *, summaries, verbose: int):
        self.steps, self.summaries, self.verbose = steps, summaries, verbose
        self.iterator = self.steps.per_worker_iterator(data)
        self._functions: dict[int, object] = {}
        self._histogram: dict[int, int] = {}
        self._dropped = 0

    def start_epoch(self, skip_batches: int) -> None:
        """Nothing to skip: each worker reads on from where its copy of the data is."""

    def schedule(self, chunk: int):
        if chunk not in self._functions:
            self._functions[chunk] = self.steps.train_function(chunk)
        return chunk, self.steps.coordinator.schedule(self._functions[chunk], args=(self.iterator,))

    def wait(self, handle) -> tuple[int, bool]:
        chunk, remote = handle
        try:
            record = remote.fetch()
        except (tf.errors.AbortedError, tf.errors.CancelledError, tf.errors.UnavailableError) as error:
            # The worker that ran these steps was lost before the chief copied their result (it
            # lived in the lost worker's context: "Unable to find a context_id ... Perhaps the
            # worker was restarted"; seen with the digits recipe's killed worker), or the
            # coordinator aborted them. TensorFlow reschedules only closures that never ran: what
            # they applied to the ps stands, their staleness record is lost, training goes on.
            logger.warning("tfdp: the result of %d step(s) was lost with a restarted worker (%s); training goes "
                           "on", chunk, type(error).__name__)
            return chunk, False
        self.steps.record(np.asarray(record))
        return chunk, False

    def quiesce(self) -> None:
        """Waits for every scheduled step (before a save)."""
        self.steps.coordinator.join()

    def end_epoch(self, epoch: int) -> None:
        self.steps.coordinator.join()
        self._histogram, self._dropped = self.steps.take_histogram(), int(self.steps.dropped.numpy())
        _log_staleness(self.steps.max_staleness, epoch, self._histogram, self._dropped, verbose=self.verbose)

    def write_summaries(self, epoch: int) -> None:
        _write_histogram(self.summaries, self._histogram, self._dropped, epoch)


def _log_staleness(bound: int, epoch: int, histogram: dict[int, int], dropped: int, *, verbose: int) -> None:
    """One line per epoch: printed as the progress lines are (verbose), else logged at INFO."""
    shown = ", ".join(f"{staleness}: {count}" for staleness, count in histogram.items()) or "none"
    line = (f"tfdp: epoch {epoch + 1}: staleness of the applied updates (updates begun between a step's read of "
            f"the weights and its own) -> count: {shown}; dropped as staler than "
            f"{bound if bound >= 0 else 'no bound'}: {dropped}")
    if verbose:
        print(line, flush=True)
    else:
        logger.info(line)


def _write_histogram(writer, histogram: dict[int, int], dropped: int, epoch: int) -> None:
    if writer is None or not histogram:
        return
    values = np.repeat(np.array(list(histogram), dtype=np.float64), list(histogram.values()))
    with writer.as_default(step=epoch):
        tf.summary.histogram("staleness", values)
        tf.summary.scalar("dropped_stale_steps", dropped)
    writer.flush()


def check_evaluation_data(data) -> None:
    if not isinstance(data, tf.data.Dataset):
        raise ConfigError(f"Trainer.evaluate(data={type(data).__name__}) on a parameter_server strategy: give a "
                          "tf.data.Dataset of batches (the chief evaluates it).")


def evaluate(async_steps, data, *, steps: int | None = None) -> None:
    """Updates the loss tracker and metrics with the ps-held model over `data` (batches), on the chief."""
    done = 0
    for batch in data:
        if steps is not None and done >= steps:
            break
        async_steps.eval_step(batch)
        done += 1
    if not done:
        raise ConfigError("Trainer.evaluate(data): the data yields no batch. Fix: check the dataset.")


def predict(model, data, *, steps: int | None = None):
    """The ps-held model's outputs for every example of `data`, in order, computed on the chief."""
    if not isinstance(data, tf.data.Dataset):
        raise ConfigError(f"Trainer.predict(data={type(data).__name__}): give a tf.data.Dataset of batches.")
    outputs = []
    for i, batch in enumerate(data):
        if steps is not None and i >= steps:
            break
        x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
        outputs.append(tf.nest.map_structure(lambda t: t.numpy(), model(x, training=False)))
    if not outputs:
        raise ConfigError("Trainer.predict(data): the data yields no batch. Fix: check the dataset.")
    return tf.nest.map_structure(lambda *parts: np.concatenate(parts, axis=0), *outputs)
