"""tfdp.Trainer: fit/evaluate/predict around the replica step, with Keras callbacks and model_dir."""

from __future__ import annotations

import collections
import logging
import numbers
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np

from tfdp import _compat, metric_states, preemption, resume
from tfdp import data as tfdp_data
from tfdp._requirements import import_tensorflow
from tfdp.errors import ConfigError, check_choice, check_whole
from tfdp.roles import is_chief
from tfdp.training import async_runner, async_steps, class_weights, loops, losses, options, precision
from tfdp.training.all_reduce import ALL_REDUCE_DTYPES
from tfdp.training.local_steps import LocalSteps
from tfdp.training.model_dir import ModelDir, Position
from tfdp.training.metrics import TrainerMetrics, data_specs
from tfdp.training.replica_step import ReplicaStep
from tfdp.training.sync_runner import SyncRunner

tf = import_tensorflow()
logger = logging.getLogger("tfdp")


class Trainer:
    """A custom training loop, equal to one device under every tfdp strategy.

    Each replica computes the SUM of its per-example losses (model.losses counted once
    per example), K micro-batches are accumulated locally, gradients and example counts
    go through ONE packed all-reduce, and the update divides by the global number of
    examples: N replicas equal one device at the same global batch, and K accumulation
    steps equal one K-times larger batch. Clipping and the finite check read the
    all-reduced gradient, so every replica takes the same decision. The optimizer's
    `iterations` counts applied updates only.

    Args:
        model: a Keras model built in `strategy.scope()`.
        optimizer: a Keras optimizer (created in scope or not; built here). Not a
            LossScaleOptimizer (use mixed_precision) and without
            a gradient_accumulation_steps of its own (give it to the Trainer); its
            `loss_scale_factor` is honoured.
        loss: what model.compile takes: a Keras loss (name or object) or fn(y_true, y_pred)
            -> per-example loss, for every output; {output name: loss}; or [loss per
            output]. Reduced exactly as Keras reduces it on one device (a mask on the
            output counts valid tokens only, "mean_with_sample_weight" divides by the
            weights), but by the GLOBAL count (training/losses.py). None when
            `compute_loss` is given.
        loss_weights: {output name: weight} or [weight per output], as model.compile.
        strategy: the tfdp strategy the model was built under.
        metrics: what model.compile takes (a list, or {output name: metrics}); names
            resolved and logged as compile does ("accuracy" by the label and output
            shapes; "a_mae" for output a); aggregated across replicas and workers.
        mixed_precision: None, "mixed_float16" (dynamic loss scaling, as Keras's
            LossScaleOptimizer) or "mixed_bfloat16". Set it up front with
            `tfdp.training.set_mixed_precision`.
        gradient_accumulation_steps: micro-batches per optimizer step.
        global_clipnorm: clip the all-reduced gradient to this global norm.
        steps_per_execution: steps run inside one tf.function call (fewer Python round trips).
            These three are Keras's names (compile and the optimizers); tfdp's first
            names grad_accum_steps, clip_global_norm and steps_per_loop still work, with a
            DeprecationWarning.
        model_dir: checkpoints (resumed by the first `fit`) and TensorBoard logs; the
            chief's are the user's, other workers write to a private temporary directory.
        all_reduce_dtype: "float32", "float16" or "bfloat16": the dtype gradients are
            all-reduced in (divided by the global example count first).
        max_checkpoints: checkpoints kept in model_dir.
        save_every_steps: also checkpoint every this many steps (with the data position,
            so a run killed mid-epoch resumes step-exact); None: at the end of each epoch only.
        compute_loss: for models that are not plain (x, y) supervised:
            fn(model, batch, training) -> per-example losses (a vector over the local
            batch; values beyond the batch axis are averaged), or (SUM, COUNT): two
            scalars, this replica's summed loss and what it counts (valid tokens, say);
            the Trainer divides the SUM over all replicas and micro-batches by the COUNT
            over all of them. It replaces `loss`; `metrics` are then not updated.
        local_steps: 1 (default): every step all-reduces the gradients. H > 1: each
            replica applies its own gradients (its own mean, clipped, its own float16
            loss scale), and all weights are averaged over every replica and worker in
            one all-reduce every H updates and at the end of every epoch, with the
            optimizer's float slots (tfdp/training/local_steps.py).
        outer_optimizer: with local_steps > 1, a Keras optimizer applied to (previous
            average - new average) of the trainable weights, as DiLoCo (e.g.
            SGD(0.7, momentum=0.9, nesterov=True)); None: plain averaging.
        max_staleness: on a parameter_server strategy (asynchronous: each worker
            applies its gradient to the ps-held variables at once), drop a step when more
            than this many other updates began between its read of the weights and its
            own; None applies every update. Staleness is measured either way and logged
            as a histogram each epoch (tfdp/training/async_steps.py).
        summary_every_steps: also write the training loss and metrics to TensorBoard
            (`batch_*` scalars at the optimizer step) at the end of the first loop at or
            after every multiple of this many steps; None: once per epoch only.
    """

    def __init__(self, model: keras.Model, *, optimizer, loss=None, strategy: tf.distribute.Strategy,
                 metrics: Sequence = (), loss_weights=None, mixed_precision: str | None = None,
                 gradient_accumulation_steps: int = 1, global_clipnorm: float | None = None,
                 steps_per_execution: int = 1,
                 model_dir: str | None = None, all_reduce_dtype: str = "float32", max_checkpoints: int = 3,
                 save_every_steps: int | None = None, compute_loss: Callable | None = None,
                 local_steps: int = 1, outer_optimizer=None,
                 summary_every_steps: int | None = None, max_staleness: int | None = None, **old_names):
        renamed = options.renamed_options(old_names, call="Trainer", signature_of=Trainer.__init__)
        global_clipnorm = renamed.get("global_clipnorm", global_clipnorm)
        precision.check_model_matches(model, mixed_precision)
        self.model, self.strategy = model, strategy
        checked = options.check_numbers(
            gradient_accumulation_steps=renamed.get("gradient_accumulation_steps", gradient_accumulation_steps),
            steps_per_execution=renamed.get("steps_per_execution", steps_per_execution),
            max_checkpoints=max_checkpoints, save_every_steps=save_every_steps,
            summary_every_steps=summary_every_steps, local_steps=local_steps, model_dir=model_dir,
            global_clipnorm=global_clipnorm)
        self.gradient_accumulation_steps, self.steps_per_execution = (checked.gradient_accumulation_steps,
                                                                      checked.steps_per_execution)
        self.save_every_steps, self.summary_every_steps = checked.save_every_steps, checked.summary_every_steps
        self.local_steps = checked.local_steps
        self._last_summary_step = 0
        self.all_reduce_dtype = check_choice("Trainer(all_reduce_dtype)", all_reduce_dtype, ALL_REDUCE_DTYPES)
        options.check_local_steps(self.local_steps, outer_optimizer=outer_optimizer, strategy=strategy,
                           mixed_precision=mixed_precision, all_reduce_dtype=self.all_reduce_dtype,
                           save_every_steps=self.save_every_steps)
        losses.check(loss, compute_loss, loss_weights)
        self.compiled_loss = compiled_loss = (None if loss is None else
                                              losses.CompiledLoss(loss, loss_weights=loss_weights, model=model))
        asynchronous = async_steps.is_parameter_server(strategy)
        if asynchronous:
            async_steps.check_options(max_staleness=max_staleness, mixed_precision=mixed_precision,
                                      gradient_accumulation_steps=self.gradient_accumulation_steps,
                                      local_steps=self.local_steps,
                                      all_reduce_dtype=self.all_reduce_dtype, compute_loss=compute_loss,
                                      save_every_steps=self.save_every_steps)
            async_steps.check_not_sharded(model)
        else:
            async_steps.check_not_synchronous(max_staleness)
        self.metrics = TrainerMetrics(metrics, model=model, strategy=strategy)
        self._checked_spec = None  # the element_spec of the last data checked against the outputs
        with strategy.scope():
            self.optimizer = keras.optimizers.get(optimizer)
            options.check_optimizer(self.optimizer)
            _compat.bind_optimizer(self.optimizer, strategy)  # it may have been made outside the scope
            self.optimizer.build(model.trainable_variables)
            self.loss_tracker = keras.metrics.Mean(name="loss")
            self.loss_scale = precision.DynamicLossScale() if mixed_precision == "mixed_float16" else None
            self.skipped_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_steps",
                                             aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.position = Position()
            self.local = None
            if self.local_steps > 1:
                outer = None
                if outer_optimizer is not None:
                    outer = keras.optimizers.get(outer_optimizer)
                    options.check_optimizer(outer)
                    _compat.bind_optimizer(outer, strategy)
                self.local = LocalSteps(model=model, optimizer=self.optimizer, local_steps=self.local_steps,
                                        outer_optimizer=outer)
        self.step = ReplicaStep(model=model, optimizer=self.optimizer, strategy=strategy,
                                loss=compiled_loss, compute_loss=compute_loss,
                                metrics=None if compute_loss is not None else self.metrics,
                                loss_tracker=self.loss_tracker, loss_scale=self.loss_scale,
                                global_clipnorm=global_clipnorm, all_reduce_dtype=self.all_reduce_dtype,
                                skipped_steps=self.skipped_steps, local=self.local)
        self.async_steps = async_steps.AsyncSteps(
            model=model, optimizer=self.optimizer, strategy=strategy, loss=compiled_loss,
            metrics=self.metrics, loss_tracker=self.loss_tracker, global_clipnorm=global_clipnorm,
            max_staleness=max_staleness) if asynchronous else None
        self._chief = is_chief(strategy)
        self.model_dir = None
        if model_dir:
            state = {"model": model, "optimizer": self.optimizer}
            if self.loss_scale:
                state.update(loss_scale=self.loss_scale.scale, loss_scale_good_steps=self.loss_scale.good_steps)
            if self.local is not None and self.local.outer_optimizer is not None:
                state.update(outer_optimizer=self.local.outer_optimizer, anchors=self.local.anchors)
            self.model_dir = ModelDir(model_dir, state=state, position=self.position, chief=self._chief,
                                      max_checkpoints=max_checkpoints)
        self._resume_pending = self.model_dir is not None
        self._restored_metric_states = ""  # (metric_states.read) of the checkpoint resumed from
        self._preemption: preemption.PreemptionWatch | None = None
        self._train_loop = loops.train_loop(self.step, strategy, self.gradient_accumulation_steps)
        self._eval_loop = loops.eval_loop(self.step, strategy)
        self._skip_loop = loops.skip_loop()
        self._predict = loops.predict_step(self.step, strategy)
        self._average_pending = loops.average_pending(self.local, strategy) if self.local else None

    # -- input ------------------------------------------------------------------------------

    def _distribute(self, data, what: str):
        if isinstance(data, tf.distribute.DistributedDataset):
            return data
        if isinstance(data, tf.data.Dataset):
            try:
                return tfdp_data.distribute_global_batches(self.strategy, data)
            except ConfigError as e:
                raise ConfigError(f"Trainer.{what}(data): {e}") from None
        raise ConfigError(f"Trainer.{what}(data={type(data).__name__}): give a tf.data.Dataset of GLOBAL batches "
                          "or a DistributedDataset from tfdp.data.distribute.")

    def _resolve_metrics(self, data) -> None:
        """Metric names become metrics as model.compile makes them, from the data's shapes; the
        targets are checked against the outputs (once per kind of data: validation comes back)."""
        if (self.metrics.built and self.compiled_loss is None) or \
                (self._checked_spec is not None and self._checked_spec == data.element_spec):
            return  # nothing to resolve or check (compute_loss data need not be (x, y)), or done
        specs, y_true, y_pred = data_specs(self.model, data.element_spec)
        self.metrics.build(y_true, y_pred)
        if self.compiled_loss is not None:
            self.compiled_loss.check_targets(specs, y_pred)
        self._checked_spec = data.element_spec

    # -- logs -------------------------------------------------------------------------------

    def _logs(self) -> dict[str, float]:
        return {"loss": float(self.loss_tracker.result()), **self.metrics.result()}

    def _reset(self) -> None:
        self.loss_tracker.reset_state()
        self.metrics.reset_state()

    def _callbacks(self, callbacks, *, verbose: int, epochs: int, steps: int | None):
        if getattr(self.model, "optimizer", None) is None:  # LearningRateScheduler and friends read it
            self.model.optimizer = self.optimizer
        return keras.callbacks.CallbackList(list(callbacks), add_history=True, add_progbar=verbose != 0,
                                            model=self.model, verbose=verbose, epochs=epochs, steps=steps)

    # -- fit ----------------------------------------------------------------------------------

    def _resume(self) -> tuple[int, int, int] | None:
        """(epoch, step, batches read) of the checkpoint the first fit resumes from, or None."""
        if not self._resume_pending:
            return None
        self._resume_pending = False
        restored = self.model_dir.restore(self.strategy)
        if restored is None:
            return None
        epoch, step, batches = self.position.values()
        state, now = self.model_dir.run_state_restored(), resume.job_shape(self.strategy)
        written_by = state.get("written_by")
        if written_by and written_by["replicas"] != now["replicas"] and self.local is not None and self.loss_scale:
            raise ConfigError(
                f"Trainer(model_dir={self.model_dir.path!r}, local_steps={self.local_steps}, "
                f'mixed_precision="mixed_float16"): its checkpoint was written by {written_by["replicas"]} '
                f"replicas, each with a float16 loss scale of its own, and cannot resume on {now['replicas']}. "
                f"Fix: resume on {written_by['replicas']} replicas ({written_by['workers']} workers), or start "
                "from a new model_dir.")
        self._restored_metric_states = state.get("metric_states", "")
        if self._chief:
            resume.announce(restored, epoch=epoch, step=step, written_by=written_by, now=now)
        return epoch, step, batches

    def fit(self, data, *, epochs: int = 1, initial_epoch: int = 0, steps_per_epoch: int | None = None,
            validation_data=None, validation_freq=1, callbacks: Sequence = (),
            verbose="auto", class_weight: dict | None = None) -> keras.callbacks.History:
        """Trains from `initial_epoch` up to (not including) epoch `epochs`, as model.fit.

        Args:
            data: a tf.data.Dataset of GLOBAL batches, or a DistributedDataset.
            epochs: the epoch to stop at, counted from `initial_epoch`: fit(epochs=1) called
                twice trains two epochs.
            initial_epoch: the epoch to start at. The first fit of a Trainer whose model_dir
                holds a checkpoint starts where it stopped instead (and says so).
            steps_per_epoch: optimizer steps per epoch; the data is read again whenever it
                ends. None: an epoch is one pass over the data.
            validation_data: evaluated after the epochs `validation_freq` selects, logged as val_*.
            validation_freq: every N-th epoch (an int), or the epochs (1-based) to validate after.
            callbacks: keras.callbacks.Callback objects (EarlyStopping, LearningRateScheduler,
                ModelCheckpoint, your own...); model.stop_training ends training.
            verbose: "auto", 0, 1 (progress bar) or 2 (one line per epoch); on the chief only.
            class_weight: {class index: weight}, as model.fit: each example's loss is
                weighted by its class (a model with one output; `data` a tf.data.Dataset).

        Returns:
            The keras.callbacks.History of this fit.
        """
        check_whole("epochs", epochs, call="fit", minimum=0)
        check_whole("initial_epoch", initial_epoch, call="fit", minimum=0)
        check_whole("steps_per_epoch", steps_per_epoch, call="fit", allow_none=True)
        if isinstance(validation_freq, numbers.Integral):
            check_whole("validation_freq", validation_freq, call="fit")
        verbose = options.verbosity(verbose)
        class_weight = class_weights.check(class_weight)
        if class_weight is not None:
            if not isinstance(data, tf.data.Dataset):
                raise ConfigError(f"Trainer.fit(class_weight=..., data={type(data).__name__}): class weights are "
                                  "added to a tf.data.Dataset of batches. Fix: pass the Dataset, not a "
                                  "distributed one (or put the weights in the data yourself).")
            data = class_weights.apply(data, class_weight)
        runner = self._runner(data, steps_per_epoch=steps_per_epoch, verbose=verbose)
        start_step, skip_batches = 0, 0
        resumed = self._resume()
        if resumed is not None:
            initial_epoch, start_step, skip_batches = resumed
        callback_list = self._callbacks(callbacks, verbose=verbose, epochs=epochs, steps=steps_per_epoch)
        self.model.stop_training = False
        if self.local is not None:  # fit starts at an averaging boundary: the anchor is the model
            self.local.reset_anchors()
        if self.model_dir is None:  # nowhere to save: SIGTERM keeps its usual meaning
            return self._fit_epochs(runner, initial_epoch, epochs, start_step, skip_batches, steps_per_epoch,
                                    validation_data, validation_freq, callback_list)
        with preemption.PreemptionWatch(self.strategy) as self._preemption:
            try:
                return self._fit_epochs(runner, initial_epoch, epochs, start_step, skip_batches, steps_per_epoch,
                                        validation_data, validation_freq, callback_list)
            finally:
                self._preemption = None

    def _runner(self, data, *, steps_per_epoch: int | None, verbose: int):
        """What runs the steps: asynchronous on a parameter-server strategy, else synchronous."""
        if self.async_steps is not None:
            async_runner.check_fit(steps_per_epoch=steps_per_epoch, metrics=self.metrics, data=data)
            if isinstance(data, tf.data.Dataset):
                self._resolve_metrics(data)
            else:  # a dataset_fn: no shapes on the chief
                self.metrics.build()
            return async_runner.AsyncRunner(self.async_steps, data, verbose=verbose,
                                            summaries=self.model_dir.summaries if self.model_dir else None)
        distributed = self._distribute(data, "fit")
        self._resolve_metrics(distributed)
        return SyncRunner(distributed=distributed, train_loop=self._train_loop, skip_loop=self._skip_loop,
                          average_pending=self._average_pending, steps_per_epoch=steps_per_epoch)

    def _fit_epochs(self, runner, initial_epoch, epochs, start_step, skip_batches, steps_per_epoch,
                    validation_data, validation_freq, callback_list) -> keras.callbacks.History:
        """The one epoch loop (synchronous and asynchronous runners alike)."""
        callback_list.on_train_begin()
        logs = {}
        for epoch in range(initial_epoch, epochs):
            self._reset()
            if start_step and self.async_steps is None:  # resumed mid-epoch: its logs cover the steps before too
                metric_states.restore(self._metric_variables(), self._restored_metric_states,
                                      strategy=self.strategy, where=self.model_dir.user_dir)
            callback_list.on_epoch_begin(epoch)
            runner.start_epoch(skip_batches)
            skip_batches, started = 0, time.perf_counter()
            counted_before = float(self.loss_tracker.count.numpy())  # (restored: the steps before the resume)
            self._train_epoch(runner, start_step, epoch, steps_per_epoch, callback_list)
            start_step = 0
            runner.end_epoch(epoch)
            seconds = time.perf_counter() - started
            logs = self._logs()
            examples = float(self.loss_tracker.count.numpy()) - counted_before
            logs["examples_per_sec"] = examples / seconds if seconds else 0.0
            if validation_data is not None and _validate_after(epoch, validation_freq):
                callback_list.on_test_begin()  # as model.fit: callbacks see the validation run
                validation = self.evaluate(validation_data, verbose=0)
                callback_list.on_test_end(validation)
                logs.update({f"val_{k}": v for k, v in validation.items()})
            callback_list.on_epoch_end(epoch, logs)
            self.position.set(epoch + 1, 0, runner.batches_read if steps_per_epoch else 0)
            self._save()
            self._write_summaries(logs, epoch + 1)
            runner.write_summaries(epoch + 1)
            if self.model.stop_training:
                break
        callback_list.on_train_end(logs)
        self._warn_about_skipped_steps()
        return self.model.history

    def _chunk(self, step: int, steps_per_epoch: int | None) -> int:
        """Steps of the next chunk: steps_per_execution, ending at the epoch's end, a step save and an averaging."""
        chunk = self.steps_per_execution
        if steps_per_epoch is not None:
            chunk = min(chunk, steps_per_epoch - step)
        if self.save_every_steps:
            chunk = min(chunk, self.save_every_steps - step % self.save_every_steps)
        if self.local_steps > 1:  # every averaging boundary ends a chunk
            chunk = min(chunk, self.local_steps - step % self.local_steps)
        return chunk

    def _train_epoch(self, runner, step: int, epoch: int, steps_per_epoch: int | None, callback_list) -> int:
        """Runs one epoch's steps from `step`, `runner.in_flight` chunks at a time; returns the steps of the epoch."""
        pending, scheduled = collections.deque(), step
        while True:
            while len(pending) < runner.in_flight and (steps_per_epoch is None or scheduled < steps_per_epoch):
                chunk = self._chunk(scheduled, steps_per_epoch)
                callback_list.on_train_batch_begin(scheduled)
                pending.append((chunk, runner.schedule(chunk)))
                scheduled += chunk
            if not pending:
                return step
            chunk, handle = pending.popleft()
            ran, data_ended = runner.wait(handle)
            step += ran
            if ran < chunk:  # (synchronous: nothing else in flight) the data ended inside the chunk
                scheduled = step
            if ran:
                batch_logs = self._logs()
                callback_list.on_train_batch_end(step - 1, batch_logs)
                self._write_step_summaries(batch_logs)
                if self.save_every_steps and step % self.save_every_steps == 0:
                    self.position.set(epoch, step, runner.batches_read)
                    self._save()
            if data_ended:
                return step
            at_boundary = step % self.local_steps == 0  # (local steps) where every replica holds the average
            if self._preemption is not None and at_boundary and self._preemption.should_stop():
                runner.quiesce()
                self.position.set(epoch, step, runner.batches_read)
                self._save()
                preemption.exit_after_save(epoch=epoch, step=step, where=self.model_dir.path, chief=self._chief)
            if self.model.stop_training:
                return step

    def _metric_variables(self) -> list:
        return [*self.loss_tracker.variables, *self.metrics.variables]

    def _save(self) -> None:
        if self.model_dir is not None:
            # (asynchronous: the metrics' state is not kept)
            self.model_dir.save(written_by=resume.job_shape(self.strategy),
                                metric_states="" if self.async_steps else metric_states.read(self._metric_variables()))

    def _write_summaries(self, logs: dict, epoch: int) -> None:
        if self.model_dir is None:
            return
        learning_rate = self.optimizer.learning_rate
        learning_rate = learning_rate() if callable(learning_rate) else learning_rate
        extra = {"learning_rate": float(keras.ops.convert_to_numpy(learning_rate))}
        if self.loss_scale:
            extra["loss_scale"] = float(self.loss_scale.scale.numpy())
        self.model_dir.write_summaries(logs, epoch=epoch, extra=extra)

    def _write_step_summaries(self, logs: dict) -> None:
        if self.model_dir is None or not self.summary_every_steps:
            return
        step = int(self.optimizer.iterations.numpy())
        if step // self.summary_every_steps > self._last_summary_step // self.summary_every_steps:
            self._last_summary_step = step
            self.model_dir.write_step_summaries(logs, step=step)

    def _warn_about_skipped_steps(self) -> None:
        skipped = int(self.skipped_steps.numpy())
        if skipped and self.loss_scale is None and self._chief:
            logger.warning("tfdp: %d step(s) were skipped because the %s all-reduce overflowed; use "
                           'all_reduce_dtype="bfloat16" or "float32".', skipped, self.all_reduce_dtype)

    # -- evaluate / predict ------------------------------------------------------------------

    def evaluate(self, data, *, steps: int | None = None, verbose="auto", callbacks: Sequence = ()) -> dict:
        """Loss (+ model.losses) and metrics over `data`, aggregated across replicas and workers."""
        check_whole("steps", steps, call="evaluate", allow_none=True)
        if self.async_steps is not None:
            async_runner.check_evaluation_data(data)
            self._resolve_metrics(data)
            self._reset()
            async_runner.evaluate(self.async_steps, data, steps=steps)
            return self._logs()
        distributed = self._distribute(data, "evaluate")
        self._resolve_metrics(distributed)
        verbose = options.verbosity(verbose)
        callback_list = keras.callbacks.CallbackList(list(callbacks), add_progbar=verbose != 0, model=self.model,
                                                     verbose=verbose, epochs=1, steps=steps)
        self._reset()
        callback_list.on_test_begin()
        iterator, done = iter(distributed), 0
        while steps is None or done < steps:
            chunk = self.steps_per_execution if steps is None else min(self.steps_per_execution, steps - done)
            callback_list.on_test_batch_begin(done)
            read = int(self._eval_loop(iterator, tf.constant(chunk)))
            done += read
            if read:
                callback_list.on_test_batch_end(done - 1, self._logs())
            if read < chunk:
                break
        if not done:
            raise ConfigError("Trainer.evaluate(data): the data yields no batch. Fix: check the dataset.")
        logs = self._logs()
        callback_list.on_test_end(logs)
        return logs

    def predict(self, data, *, steps: int | None = None, verbose="auto"):
        """The model's outputs for every example of `data` (global batches), in order, as model.predict."""
        check_whole("steps", steps, call="predict", allow_none=True)
        if self.async_steps is not None:
            return async_runner.predict(self.model, data, steps=steps)
        if not isinstance(data, tf.data.Dataset):
            raise ConfigError(f"Trainer.predict(data={type(data).__name__}): give a tf.data.Dataset of GLOBAL "
                              "batches (its order is the order of the outputs).")
        verbose = options.verbosity(verbose)
        progbar = keras.utils.Progbar(steps, verbose=verbose if self._chief else 0)
        outputs = []
        for i, batch in enumerate(self.strategy.experimental_distribute_dataset(data)):
            if steps is not None and i >= steps:
                break
            outputs.append(tf.nest.map_structure(lambda t: t.numpy(), self._predict(batch)))
            progbar.update(i + 1)
        if not outputs:
            raise ConfigError("Trainer.predict(data): the data yields no batch. Fix: check the dataset.")
        return tf.nest.map_structure(lambda *parts: np.concatenate(parts, axis=0), *outputs)

    def close(self) -> None:
        """Removes a non-chief worker's private checkpoint directory."""
        if self.model_dir is not None:
            self.model_dir.close()


def _validate_after(epoch: int, validation_freq) -> bool:
    if isinstance(validation_freq, numbers.Integral):
        return (epoch + 1) % validation_freq == 0
    return epoch + 1 in validation_freq
