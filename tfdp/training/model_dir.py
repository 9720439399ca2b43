"""What tfdp.Trainer keeps in model_dir: checkpoints with the training position, and TensorBoard scalars.

    model_dir/checkpoints/   tf.train.CheckpointManager: model, optimizer, loss scale, the
                             position (epoch, step in the epoch, batches read from the data)
                             and the run's state (the job's shape, the metrics' state, so that
                             a resumed epoch logs all its steps)
    model_dir/train/         TensorBoard scalars (the chief's)

Saving is a collective under multi_worker: every worker saves, the chief into model_dir,
the others into a private temporary directory removed by `close()`. Every worker restores
from the chief's directory, which must be shared; the restored position is all-reduced
and a disagreement is a ConfigError, not a hang.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile

import tensorflow as tf

from tfdp import roles
from tfdp.errors import ConfigError

logger = logging.getLogger("tfdp")


class Position:
    """Where training is: the epoch, the step within it, and the batches read from the data.

    `batches_read` counts the batches consumed from the current pass over the data (it
    restarts when the data is iterated anew), so a resumed run reads past exactly those.
    """

    def __init__(self):
        def counter(name):
            return tf.Variable(0, dtype=tf.int64, trainable=False, name=name,
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

        self.epoch, self.step, self.batches_read = counter("epoch"), counter("step_in_epoch"), counter("batches_read")

    def values(self) -> tuple[int, int, int]:
        return int(self.epoch.numpy()), int(self.step.numpy()), int(self.batches_read.numpy())

    def set(self, epoch: int, step: int, batches_read: int) -> None:
        self.epoch.assign(epoch)
        self.step.assign(step)
        self.batches_read.assign(batches_read)


class ModelDir:
    """Checkpoints and summaries of one Trainer under `path`.

    Args:
        path: the user's model_dir.
        state: name -> trackable to save (model, optimizer, loss scale, ...).
        position: the training position, saved with the state.
        chief: whether this process writes the user's files.
        max_checkpoints: checkpoints kept.
    """

    def __init__(self, path: str, *, state: dict, position: Position, chief: bool, max_checkpoints: int):
        self.path, self.chief, self.position = path, chief, position
        # JSON: the job's shape and the metrics' state at the save (tfdp/resume.py,
        # tfdp/metric_states.py); this process's own variable.
        self.run_state = tf.Variable("", dtype=tf.string, trainable=False, name="run_state")
        self.checkpoint = tf.train.Checkpoint(**state, epoch=position.epoch, step_in_epoch=position.step,
                                              batches_read=position.batches_read, run_state=self.run_state)
        self.user_dir = os.path.join(path, "checkpoints")
        self.write_dir = self.user_dir if chief else tempfile.mkdtemp(prefix="tfdp-worker-")
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.write_dir, max_to_keep=max_checkpoints)
        # As Keras's TensorBoard callback: train/ and validation/ runs, epoch_* and batch_* scalars.
        self.summaries = tf.summary.create_file_writer(os.path.join(path, "train")) if chief else None
        self.validation_summaries = tf.summary.create_file_writer(os.path.join(path, "validation")) \
            if chief else None

    def restore(self, strategy: tf.distribute.Strategy) -> str | None:
        """Restores the newest readable checkpoint of the chief's directory; returns its path.

        A checkpoint that cannot be read (truncated, overwritten) is skipped with a warning
        naming it, and the previous one is tried.
        """
        state = tf.train.get_checkpoint_state(self.user_dir)
        candidates = list(reversed(state.all_model_checkpoint_paths)) if state else []
        restored = None
        for path in candidates:
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except Exception as e:  # noqa: BLE001  (truncated files raise IndexError, DataLossError, ...)
                logger.warning("tfdp: checkpoint %s cannot be read (%s); trying the previous one.",
                               path, (str(e).splitlines() or [type(e).__name__])[0][:200])
                continue
            restored = path
            break
        if candidates and restored is None:
            raise ConfigError(f"Trainer(model_dir={self.path!r}): none of its checkpoints can be read "
                              f"({', '.join(candidates)}). Fix: remove {self.user_dir} to start over.")
        self._check_workers_agree(strategy)
        return restored

    def _check_workers_agree(self, strategy: tf.distribute.Strategy) -> None:
        if roles.num_workers(strategy) == 1 or roles.loop_on_chief_only(strategy):  # one process reads
            return
        mine = tf.constant(list(self.position.values()), tf.float64)
        replicas = float(strategy.num_replicas_in_sync)

        def sums():  # all equal exactly when replicas x sum of squares == (sum)^2, per value
            context, value = tf.distribute.get_replica_context(), tf.identity(mine)  # one tensor per replica
            return context.all_reduce("SUM", value), context.all_reduce("SUM", value * value)

        total, squares = (strategy.experimental_local_results(v)[0]
                          for v in tf.function(lambda: strategy.run(sums))())
        if not bool(tf.reduce_all(replicas * squares == total * total)):
            raise ConfigError(
                f"Trainer(model_dir={self.path!r}): the workers restored different positions (this one: epoch, "
                f"step, batches {list(self.position.values())}; the mean: {(total / replicas).numpy().tolist()}): "
                "they do not see the same checkpoints. Fix: put model_dir on a filesystem every worker shares.")

    def save(self, *, written_by: dict, metric_states: str) -> None:
        """Saves the state, the position and the run's state (a collective: every worker calls it).

        Args:
            written_by: the job's shape (`tfdp.resume.job_shape`).
            metric_states: the metrics' state (`tfdp.metric_states.read`), or "".
        """
        self.run_state.assign(json.dumps({"written_by": written_by, "metric_states": metric_states}))
        epoch, step, _ = self.position.values()
        self.manager.save(checkpoint_number=epoch * 1_000_000 + step)

    def run_state_restored(self) -> dict:
        """{"written_by": ..., "metric_states": ...} of the checkpoint restored ({} from older checkpoints)."""
        return json.loads(self.run_state.numpy().decode() or "{}")

    def write_summaries(self, logs: dict, *, epoch: int, extra: dict) -> None:
        """An epoch's scalars: `val_x` as `epoch_x` of the validation run, the rest of the train run."""
        if self.summaries is None:
            return
        validation = {name[len("val_"):]: value for name, value in logs.items() if name.startswith("val_")}
        train = {name: value for name, value in {**logs, **extra}.items() if not name.startswith("val_")}
        for writer, scalars in ((self.summaries, train), (self.validation_summaries, validation)):
            with writer.as_default(step=epoch):
                for name, value in scalars.items():
                    tf.summary.scalar(f"epoch_{name}", value)
            writer.flush()

    def write_step_summaries(self, logs: dict, *, step: int) -> None:
        """The training logs as `batch_*` scalars at optimizer step `step`."""
        if self.summaries is None:
            return
        with self.summaries.as_default(step=step):
            for name, value in logs.items():
                tf.summary.scalar(f"batch_{name}", value)

    def close(self) -> None:
        """Removes a non-chief worker's private checkpoint directory."""
        if not self.chief:
            shutil.rmtree(self.write_dir, ignore_errors=True)
