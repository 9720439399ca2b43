"""The synchronous runner of tfdp.Trainer's loop: up to K steps in one tf.function, every step all-reduced.

The Trainer's outer loop (trainer.py) owns epochs, callbacks, checkpoints, summaries,
preemption and resume; a runner only runs steps. This one reads a distributed dataset
through the loop functions of loops.py (accumulation and local steps happen inside a
step), counts the batches it read (the data position a checkpoint keeps), reads the data
again when it ends inside an epoch of `steps_per_epoch` steps, and averages pending local
steps at the end of an epoch.
"""

from __future__ import annotations

import tensorflow as tf

from tfdp.errors import ConfigError


class SyncRunner:
    """Runs steps of one fit as they are asked for (one chunk in flight).

    Args:
        distributed: the DistributedDataset of the fit.
        train_loop: fn(iterator, max_steps) -> (steps run, batches read) (loops.train_loop).
        skip_loop: fn(iterator, batches) -> batches read past (loops.skip_loop).
        average_pending: fn() averaging local steps not yet averaged, or None.
        steps_per_epoch: steps per epoch, or None: an epoch is one pass over the data.
    """

    in_flight = 1

    def __init__(self, *, distributed, train_loop, skip_loop, average_pending, steps_per_epoch: int | None):
        self.distributed, self.steps_per_epoch = distributed, steps_per_epoch
        self._train_loop, self._skip_loop, self._average_pending = train_loop, skip_loop, average_pending
        self.iterator, self.batches_read, self._fresh = None, 0, True

    def start_epoch(self, skip_batches: int) -> None:
        """A new pass over the data (unless an epoch of steps_per_epoch goes on reading it), past
        `skip_batches` batches a resumed checkpoint had read."""
        if self.iterator is None or self.steps_per_epoch is None:
            self.iterator, self.batches_read = iter(self.distributed), 0
        if skip_batches:
            self.batches_read = int(self._skip_loop(self.iterator, tf.constant(skip_batches)))
        self._fresh = self.batches_read == 0

    def schedule(self, chunk: int) -> tuple[int, bool]:
        """Runs up to `chunk` steps now; (steps run, whether the epoch's data ended)."""
        ran, read = (int(v) for v in self._train_loop(self.iterator, tf.constant(chunk)))
        self.batches_read += read
        if ran:
            self._fresh = False
        if ran == chunk:
            return ran, False
        if self._fresh:
            raise ConfigError("Trainer.fit(data): the data yields no batch, so nothing would train. "
                              "Fix: check the dataset (an empty file list, a filter that drops "
                              "everything, or take(0)).")
        if self.steps_per_epoch is None:
            return ran, True
        self.iterator, self.batches_read, self._fresh = iter(self.distributed), 0, True  # read the data again
        return ran, False

    @staticmethod
    def wait(handle: tuple[int, bool]) -> tuple[int, bool]:
        return handle

    def quiesce(self) -> None:
        """Nothing runs in the background."""

    def end_epoch(self, epoch: int) -> None:
        if self._average_pending is not None:  # evaluation, callbacks and checkpoints see one model
            self._average_pending()

    def write_summaries(self, epoch: int) -> None:
        """Nothing beyond the Trainer's own."""
