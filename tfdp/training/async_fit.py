"""The chief's loop of tfdp.Trainer on a parameter-server strategy (tfdp/training/async_steps.py).

An epoch is `steps_per_epoch` steps, scheduled on the workers in closures of
`steps_per_loop` steps; their results are taken in order, so the progress bar and the
callbacks' `on_train_batch_end` follow the steps as they complete. At the end of each
epoch the chief waits for every scheduled step, evaluates on its own (the ps-held model,
every example once), logs the staleness histogram and saves the checkpoint. SIGTERM
saves at the end of the closure being taken and exits with PREEMPTED_EXIT_CODE.
Evaluation and prediction run on the chief.
"""

from __future__ import annotations

import logging
import time

import keras
import numpy as np
import tensorflow as tf

from tfdp import preemption
from tfdp.errors import ConfigError

logger = logging.getLogger("tfdp")


def fit(trainer, data, *, epochs: int, initial_epoch: int, steps_per_epoch: int | None, validation_data,
        validation_freq, callbacks, verbose: int, validate_after) -> keras.callbacks.History:
    """Trainer.fit on a parameter-server strategy (the arguments as Trainer.fit's)."""
    if steps_per_epoch is None:
        raise ConfigError("Trainer.fit(steps_per_epoch=None) on a parameter_server strategy: the workers read "
                          "their own copies of the data, so no pass over it marks an epoch. Fix: give "
                          "steps_per_epoch (e.g. examples // global batch) and repeat() the dataset.")
    steps = trainer.async_steps
    if isinstance(data, tf.data.Dataset):
        trainer._resolve_metrics(data)
    elif any(isinstance(m, str) for m in keras.tree.flatten(trainer.metrics.identifiers)):
        raise ConfigError("Trainer(metrics=[names]) with a dataset_fn on a parameter_server strategy: names are "
                          "resolved from the data's shapes. Fix: give keras.metrics objects.")
    else:
        trainer.metrics.build()
    iterator = steps.per_worker_iterator(data)
    start_step = 0
    resumed = trainer._resume()
    if resumed is not None:
        initial_epoch, start_step, _ = resumed
    callback_list = trainer._callbacks(callbacks, verbose=verbose, epochs=epochs, steps=steps_per_epoch)
    trainer.model.stop_training = False
    functions: dict[int, object] = {}
    watch = preemption.PreemptionWatch(trainer.strategy) if trainer.model_dir is not None else None
    if watch is not None:
        watch.__enter__()
    try:
        callback_list.on_train_begin()
        logs: dict = {}
        for epoch in range(initial_epoch, epochs):
            trainer._reset()
            callback_list.on_epoch_begin(epoch)
            started, step, scheduled = time.perf_counter(), start_step, []
            start_step = 0
            while step < steps_per_epoch:
                chunk = min(trainer.steps_per_loop, steps_per_epoch - step)
                if chunk not in functions:
                    functions[chunk] = steps.train_function(chunk)
                scheduled.append((step + chunk, steps.coordinator.schedule(functions[chunk], args=(iterator,))))
                step += chunk
            for end, remote in scheduled:
                steps.record(np.asarray(remote.fetch()))
                callback_list.on_train_batch_end(end - 1, trainer._logs())
                if watch is not None and watch.should_stop():
                    _save_and_exit(trainer, epoch, end)
            steps.coordinator.join()
            seconds = time.perf_counter() - started
            logs = trainer._logs()
            logs["examples_per_sec"] = float(trainer.loss_tracker.count.numpy()) / seconds if seconds else 0.0
            histogram, dropped = steps.take_histogram(), int(steps.dropped.numpy())
            _log_staleness(trainer, epoch, histogram, dropped, verbose=verbose)
            if validation_data is not None and validate_after(epoch, validation_freq):
                callback_list.on_test_begin()
                validation = evaluate(trainer, validation_data)
                callback_list.on_test_end(validation)
                logs.update({f"val_{k}": v for k, v in validation.items()})
            callback_list.on_epoch_end(epoch, logs)
            trainer.position.set(epoch + 1, 0, 0)
            trainer._save()
            trainer._write_summaries(logs, epoch + 1)
            _write_histogram(trainer, histogram, dropped, epoch + 1)
            if trainer.model.stop_training:
                break
        callback_list.on_train_end(logs)
        return trainer.model.history
    finally:
        if watch is not None:
            watch.__exit__(None, None, None)


def _save_and_exit(trainer, epoch: int, step: int) -> None:
    trainer.async_steps.coordinator.join()
    trainer.position.set(epoch, step, 0)
    trainer._save()
    message = (f"preempted (SIGTERM): saved epoch {epoch} step {step} to {trainer.model_dir.path}; exiting "
               f"with {preemption.PREEMPTED_EXIT_CODE}, the next run resumes there")
    print(f"tfdp: {message}", flush=True)
    raise preemption.Preempted(message)


def _log_staleness(trainer, epoch: int, histogram: dict[int, int], dropped: int, *, verbose: int) -> None:
    """One line per epoch: printed as the progress lines are (verbose), else logged at INFO."""
    shown = ", ".join(f"{staleness}: {count}" for staleness, count in histogram.items()) or "none"
    bound = trainer.async_steps.max_staleness
    line = (f"tfdp: epoch {epoch + 1}: staleness of the applied updates (updates begun between a step's read of "
            f"the weights and its own) -> count: {shown}; dropped as staler than "
            f"{bound if bound >= 0 else 'no bound'}: {dropped}")
    if verbose:
        print(line, flush=True)
    else:
        logger.info(line)


def _write_histogram(trainer, histogram: dict[int, int], dropped: int, epoch: int) -> None:
    writer = trainer.model_dir.summaries if trainer.model_dir is not None else None
    if writer is None or not histogram:
        return
    values = np.repeat(np.array(list(histogram), dtype=np.float64), list(histogram.values()))
    with writer.as_default(step=epoch):
        tf.summary.histogram("staleness", values)
        tf.summary.scalar("dropped_stale_steps", dropped)
    writer.flush()


def evaluate(trainer, data, *, steps: int | None = None) -> dict:
    """Loss and metrics of the ps-held model over `data` (batches), computed on the chief, every example once."""
    if not isinstance(data, tf.data.Dataset):
        raise ConfigError(f"Trainer.evaluate(data={type(data).__name__}) on a parameter_server strategy: give a "
                          "tf.data.Dataset of batches (the chief evaluates it).")
    trainer._resolve_metrics(data)
    trainer._reset()
    done = 0
    for batch in data:
        if steps is not None and done >= steps:
            break
        trainer.async_steps.eval_step(batch)
        done += 1
    if not done:
        raise ConfigError("Trainer.evaluate(data): the data yields no batch. Fix: check the dataset.")
    return trainer._logs()


def predict(trainer, data, *, steps: int | None = None):
    """The ps-held model's outputs for every example of `data`, in order, computed on the chief."""
    if not isinstance(data, tf.data.Dataset):
        raise ConfigError(f"Trainer.predict(data={type(data).__name__}): give a tf.data.Dataset of batches.")
    outputs = []
    for i, batch in enumerate(data):
        if steps is not None and i >= steps:
            break
        x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
        outputs.append(tf.nest.map_structure(lambda t: t.numpy(), trainer.model(x, training=False)))
    if not outputs:
        raise ConfigError("Trainer.predict(data): the data yields no batch. Fix: check the dataset.")
    return tf.nest.map_structure(lambda *parts: np.concatenate(parts, axis=0), *outputs)
