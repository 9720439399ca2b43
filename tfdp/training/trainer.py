"""tfdp.Trainer: fit/evaluate loops around the replica step, with checkpoints and summaries."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence

import keras

from tfdp._requirements import import_tensorflow
from tfdp.errors import ConfigError, check_choice
from tfdp.roles import is_chief
from tfdp.training import precision
from tfdp.training.step import COMPRESSIONS, Steps, per_example_loss_fn

tf = import_tensorflow()


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"Trainer({name}={value!r}): must be a whole number >= 1.")
    return value


def _metric(identifier) -> keras.metrics.Metric:
    """A Keras metric from a name, function or object; named as the user wrote it."""
    metric = keras.metrics.get(identifier)
    if not isinstance(metric, keras.metrics.Metric):
        metric = keras.metrics.MeanMetricWrapper(metric, name=getattr(metric, "__name__", str(identifier)))
    if isinstance(identifier, str):
        metric.name = identifier
    return metric


class Trainer:
    """A custom training loop, correct under every tfdp strategy.

    Each replica computes the SUM of its per-example losses (model.losses counted once
    per example), K micro-batches are accumulated locally, gradients and example counts
    go through ONE packed all-reduce, and the update divides by the global number of
    examples: N replicas equal one device at the same global batch, and K accumulation
    steps equal one K-times larger batch. Clipping and the float16 finite check read the
    all-reduced gradient, so every replica takes the same decision.

    Args:
        model: a Keras model built in `strategy.scope()`.
        optimizer: a Keras optimizer (created in scope or not; built here).
        loss: a Keras loss (name or object: its unreduced values are used) or
            fn(y_true, y_pred) -> per-example loss. None when `compute_loss` is given.
        strategy: the tfdp strategy the model was built under.
        metrics: Keras metrics (names or objects), aggregated across replicas and workers.
        mixed_precision: None, "mixed_float16" (with dynamic loss scaling) or
            "mixed_bfloat16". Set it up front with `tfdp.training.set_mixed_precision`.
        grad_accum_steps: micro-batches per optimizer step.
        clip_global_norm: clip the all-reduced gradient to this global norm.
        steps_per_loop: steps run inside one tf.function call (fewer Python round trips).
        model_dir: checkpoints (resumed automatically) and TensorBoard logs; the chief's are
            the user's, other workers write to a private temporary directory.
        all_reduce_dtype: "none" (float32), "float16" or "bfloat16" all-reduce compression.
        max_checkpoints: checkpoints kept in model_dir.
        compute_loss: for models that are not plain (x, y) supervised:
            fn(model, batch, training) -> per-example losses (a vector over the local
            batch). It replaces `loss`; `metrics` are then not updated.
    """

    def __init__(self, model: keras.Model, *, optimizer, loss=None, strategy: tf.distribute.Strategy,
                 metrics: Sequence = (), mixed_precision: str | None = None, grad_accum_steps: int = 1,
                 clip_global_norm: float | None = None, steps_per_loop: int = 1,
                 model_dir: str | None = None, all_reduce_dtype: str = "none", max_checkpoints: int = 3,
                 compute_loss: Callable | None = None):
        precision.check_model_matches(model, mixed_precision)
        self.model, self.strategy = model, strategy
        self.grad_accum_steps = _positive_int("grad_accum_steps", grad_accum_steps)
        self.steps_per_loop = _positive_int("steps_per_loop", steps_per_loop)
        if clip_global_norm is not None and not clip_global_norm > 0:
            raise ConfigError(f"Trainer(clip_global_norm={clip_global_norm!r}): must be > 0, or None.")
        check_choice("Trainer(all_reduce_dtype)", all_reduce_dtype, COMPRESSIONS)
        if (loss is None) == (compute_loss is None):
            raise ConfigError("Trainer: give loss=fn(y_true, y_pred) for (x, y) data, or "
                              "compute_loss=fn(model, batch, training) for anything else; exactly one.")
        with strategy.scope():
            self.optimizer = keras.optimizers.get(optimizer)
            # Keras binds an optimizer to the strategy in scope when it is CREATED; one made
            # outside the scope fails on its first update. Bind it to this strategy.
            self.optimizer._distribution_strategy = strategy
            self.optimizer.build(model.trainable_variables)
            self.metrics = [_metric(m) for m in metrics]
            self.loss_tracker = keras.metrics.Mean(name="loss")
            self.loss_scale = precision.DynamicLossScale() if mixed_precision == "mixed_float16" else None
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch",
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.steps = Steps(model=model, optimizer=self.optimizer, strategy=strategy,
                           loss=per_example_loss_fn(loss), compute_loss=compute_loss, metrics=self.metrics,
                           loss_tracker=self.loss_tracker, loss_scale=self.loss_scale,
                           clip_global_norm=clip_global_norm, compression=all_reduce_dtype)
        self.model_dir = model_dir
        self._chief = is_chief(strategy)
        self._checkpoints = self._summaries = None
        if model_dir:
            self._setup_model_dir(model_dir, max_checkpoints)
        self._train_loop = tf.function(self._train_loop_fn)
        self._eval_loop = tf.function(self._eval_loop_fn)

    # -- model_dir ----------------------------------------------------------------------

    def _setup_model_dir(self, model_dir: str, max_checkpoints: int) -> None:
        state = {"model": self.model, "optimizer": self.optimizer, "epoch": self.epoch}
        if self.loss_scale:
            state.update(loss_scale=self.loss_scale.scale, loss_scale_good_steps=self.loss_scale.good_steps)
        checkpoint = tf.train.Checkpoint(**state)
        self._user_checkpoint_dir = os.path.join(model_dir, "checkpoints")
        # Saving is a collective under multi_worker: every worker saves, non-chiefs privately.
        self._write_dir = self._user_checkpoint_dir if self._chief else tempfile.mkdtemp(prefix="tfdp-worker-")
        self._checkpoints = tf.train.CheckpointManager(checkpoint, self._write_dir, max_to_keep=max_checkpoints)
        latest = tf.train.latest_checkpoint(self._user_checkpoint_dir)
        if latest:
            checkpoint.restore(latest).assert_existing_objects_matched()
        if self._chief:
            self._summaries = tf.summary.create_file_writer(os.path.join(model_dir, "train"))

    def _write_summaries(self, logs: dict, epoch: int) -> None:
        if self._summaries is None:
            return
        with self._summaries.as_default(step=epoch):
            for name, value in logs.items():
                tf.summary.scalar(name, value)
            learning_rate = self.optimizer.learning_rate
            tf.summary.scalar("learning_rate", learning_rate() if callable(learning_rate) else learning_rate)
            if self.loss_scale:
                tf.summary.scalar("loss_scale", self.loss_scale.scale)
        self._summaries.flush()

    # -- loops ----------------------------------------------------------------------------

    def _train_loop_fn(self, iterator, num_steps):
        for _ in tf.range(num_steps):
            accumulated = self.strategy.run(self.steps.micro_step, args=(next(iterator),))
            for _ in range(self.grad_accum_steps - 1):
                accumulated = self.strategy.run(self.steps.micro_step, args=(next(iterator), accumulated))
            self.strategy.run(self.steps.apply_step, args=(accumulated,))

    def _eval_loop_fn(self, iterator, num_steps):
        for _ in tf.range(num_steps):
            self.strategy.run(self.steps.eval_step, args=(next(iterator),))

    def _distribute(self, data):
        if isinstance(data, tf.distribute.DistributedDataset):
            return data
        if isinstance(data, tf.data.Dataset):
            return self.strategy.experimental_distribute_dataset(data)
        raise ConfigError(f"Trainer: data is a {type(data).__name__}; give a tf.data.Dataset of global "
                          "batches or a DistributedDataset from tfdp.data.distribute.")

    def _logs(self) -> dict:
        logs = {"loss": float(self.loss_tracker.result())}
        for metric in self.metrics:
            result = metric.result()
            logs.update({k: float(v) for k, v in result.items()} if isinstance(result, dict)
                        else {metric.name: float(result)})
        return logs

    def _reset(self) -> None:
        for metric in [self.loss_tracker, *self.metrics]:
            metric.reset_state()

    def _progbar(self, target: int | None, verbose: int) -> keras.utils.Progbar | None:
        # Every worker updates it (reading a metric is a collective under multi_worker, so
        # all must read alike); only the chief's prints.
        if not verbose:
            return None
        return keras.utils.Progbar(target, verbose=1 if self._chief else 0, stateful_metrics=["loss"])

    def _run(self, loop: Callable, iterator, steps: int | None, progbar, chunk_size: int) -> int:
        """Runs `loop` in chunks until `steps` or the end of the data; returns the steps run."""
        done, start_iterations = 0, int(self.optimizer.iterations.numpy())
        while steps is None or done < steps:
            chunk = chunk_size if steps is None else min(chunk_size, steps - done)
            try:
                loop(iterator, tf.constant(chunk))
            except (tf.errors.OutOfRangeError, StopIteration):
                # The data ended inside the chunk; the optimizer counted the steps taken.
                if loop is self._train_loop:
                    done = int(self.optimizer.iterations.numpy()) - start_iterations
                break
            done += chunk
            if progbar is not None:
                progbar.update(done, [("loss", float(self.loss_tracker.result()))])
        if progbar is not None:
            progbar.update(done, [("loss", float(self.loss_tracker.result()))], finalize=True)
        return done

    def fit(self, data, *, epochs: int = 1, steps_per_epoch: int | None = None, validation_data=None,
            verbose: int = 1) -> dict[str, list[float]]:
        """Trains for `epochs` (resuming after the last checkpoint in model_dir).

        Args:
            data: a tf.data.Dataset of GLOBAL batches, or a DistributedDataset.
            epochs: the epoch to stop at (a resumed run trains only the ones left).
            steps_per_epoch: optimizer steps per epoch; None: until the data ends.
            validation_data: evaluated after every epoch, logged as val_*.
            verbose: 1 shows a progress bar (on the chief only), 0 nothing.

        Returns:
            The history: name -> one value per epoch trained.
        """
        distributed = self._distribute(data)
        history: dict[str, list[float]] = {}
        iterator = iter(distributed) if steps_per_epoch else None
        for epoch in range(int(self.epoch.numpy()), epochs):
            self._reset()
            iterator = iterator if steps_per_epoch else iter(distributed)
            progbar = self._progbar(steps_per_epoch, verbose)
            if progbar is not None and self._chief:
                print(f"Epoch {epoch + 1}/{epochs}")
            start = time.perf_counter()
            steps = self._run(self._train_loop, iterator, steps_per_epoch, progbar, self.steps_per_loop)
            seconds = time.perf_counter() - start
            logs = self._logs()
            examples = float(self.loss_tracker.count.numpy())  # summed over replicas and workers
            logs["examples_per_sec"] = examples / seconds if seconds else 0.0
            if steps_per_epoch and steps < steps_per_epoch:
                iterator = iter(distributed)  # The data ran out: start it again next epoch.
            if validation_data is not None:
                logs.update({f"val_{k}": v for k, v in self.evaluate(validation_data, verbose=0).items()})
            for name, value in logs.items():
                history.setdefault(name, []).append(value)
            self.epoch.assign(epoch + 1)
            if self._checkpoints:
                self._checkpoints.save(checkpoint_number=epoch + 1)
            self._write_summaries(logs, epoch + 1)
        return history

    def evaluate(self, data, *, steps: int | None = None, verbose: int = 1) -> dict[str, float]:
        """Loss (+ model.losses) and metrics over `data`, aggregated across replicas and workers."""
        self._reset()
        progbar = self._progbar(steps, verbose)
        self._run(self._eval_loop, iter(self._distribute(data)), steps, progbar, self.steps_per_loop)
        return self._logs()

    def close(self) -> None:
        """Removes a non-chief worker's private checkpoint directory."""
        if self._checkpoints and not self._chief:
            shutil.rmtree(self._write_dir, ignore_errors=True)
