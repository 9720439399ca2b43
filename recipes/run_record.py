"""What a recipe run records in results.json: per-epoch history, timings, examples/s, versions.

Imported before TensorFlow: `PROGRAM_START` is the clock's zero, so "time to first step"
includes importing TensorFlow, starting the strategy and loading the data.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

PROGRAM_START = time.perf_counter()

EXAMPLES_PER_SEC_DEFINITION = ("training examples of this run (a whole pass counts the dataset's examples, a "
                               "partial epoch its batches x global batch) / seconds spent training (validation "
                               "excluded)")


@dataclasses.dataclass
class RunRecord:
    """Filled in by the callback of `clock`; read after training."""

    history: list[dict] = dataclasses.field(default_factory=list)
    first_step_seconds: float | None = None
    train_seconds: float = 0.0
    examples: int = 0

    def examples_per_sec(self) -> float | None:
        return self.examples / self.train_seconds if self.train_seconds else None


def clock(keras, record: RunRecord, *, updates: Callable[[], int], batches_per_update: int,
          batches_per_epoch: int, epoch_examples: int, global_batch_size: int):
    """A Keras callback filling `record`.

    Args:
        updates: the optimizer's update count (its `iterations`).
        batches_per_update: global batches per update (gradient accumulation steps).
        batches_per_epoch: batches of a whole epoch; epoch_examples: its examples.
    """

    class RunClock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start, self.validation = time.perf_counter(), 0.0
            self.updates_at_start = updates()

        def on_train_batch_end(self, batch, logs=None):
            if record.first_step_seconds is None:
                record.first_step_seconds = time.perf_counter() - PROGRAM_START

        def on_test_begin(self, logs=None):
            self.test_start = time.perf_counter()

        def on_test_end(self, logs=None):
            if hasattr(self, "epoch_start"):
                self.validation += time.perf_counter() - self.test_start

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            record.train_seconds += now - self.epoch_start - self.validation
            batches = (updates() - self.updates_at_start) * batches_per_update
            record.examples += epoch_examples if batches == batches_per_epoch else batches * global_batch_size
            record.history.append({"epoch": epoch + 1, "seconds": now - PROGRAM_START,
                                   **{k: float(v) for k, v in (logs or {}).items() if k != "examples_per_sec"}})
            del self.epoch_start

    return RunClock()


def versions() -> dict[str, str | None]:
    """Python's and the installed packages' versions."""
    from tfdp import env_report

    return {name: version for name, version in env_report.versions().items() if version}
