"""backup_and_restore: BackupAndRestore on several workers, killed mid-save, resumed mid-epoch.

Keras's BackupAndRestore (1) writes from every worker into the shared backup directory
and deletes it from every worker at the end, (2) writes the weights and the training
metadata in place, so a kill mid-save leaves a torn backup, and (3) resumes a mid-epoch
backup (save_freq=N) by replaying the whole epoch: 44 optimizer steps where an
uninterrupted run takes 40.

The repair keeps Keras's files and options (`latest.weights.h5`, `training_metadata.json`,
their `.bkp` copies, `delete_checkpoint`); the previous backup is kept as `.bkp` whatever
`double_checkpoint` says, so that a damaged latest one has something to fall back to:
- only the chief writes and deletes the user's directory (the others write a private
  one, and restore from the user's);
- each file is written to a temporary name and renamed into place, and the metadata,
  renamed last, records the CRC-32 of the weights it belongs to: a kill between the two
  renames leaves a pair that does not match, and loading then rolls forward (the new
  metadata is complete) or falls back to the `.bkp` pair;
- the backup holds the metrics' state (loss included), restored on resume: the interrupted
  epoch's logs and History cover all its steps, as an uninterrupted run's;
- a resumed epoch skips (reads past, without training) the steps the backup holds, and
  the chief says where it resumed (`resumed from <file> at epoch E step S`); callbacks
  (the progress bar too) see only the steps trained, numbered as in an uninterrupted run;
- SIGTERM during fit saves a backup at a step all workers agree on and exits with
  `tfdp.preemption.PREEMPTED_EXIT_CODE` (what Keras's docstring calls
  `save_before_preemption`, which Keras 3 does not implement; see tfdp/preemption.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import weakref
import zlib

import keras

from tfdp import _compat, metric_states, preemption, resume
from tfdp.errors import ConfigError
from tfdp.keras_fixes._base import Fix, Undo, check_methods, patch
from tfdp.keras_fixes._worker_files import on_chief, private_dir, remove_private_dir

logger = logging.getLogger("tfdp")

_WEIGHTS = "latest.weights.h5"
_METADATA = "training_metadata.json"
_PREVIOUS = ".bkp"
_TMP = ".tmp"
_RESTORED = "restored.weights.h5"  # a non-chief's copy of the chief's previous backup, to load

# callback -> {"steps_done": steps of the current epoch trained, "skip": steps to read past}
_progress: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()
# model -> the steps of its current epoch a resumed backup holds: read past, not trained, and
# not shown to callbacks (keras.callbacks.CallbackList drops their batch calls)
_skipped_steps: "weakref.WeakKeyDictionary[object, int]" = weakref.WeakKeyDictionary()
# callback -> the SIGTERM watch of the fit it is in
_watches: "weakref.WeakKeyDictionary[object, preemption.PreemptionWatch]" = weakref.WeakKeyDictionary()


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


def _replace_copy(source: str, target: str) -> None:
    shutil.copyfile(source, target + _TMP)
    os.replace(target + _TMP, target)


def _matching_metadata(directory: str, suffix: str) -> dict | None:
    """The metadata of the (weights, metadata) pair with this suffix, if the pair matches."""
    weights = os.path.join(directory, _WEIGHTS + suffix)
    if not os.path.exists(weights):
        return None
    crc = _crc32(weights)
    if not any(os.path.exists(os.path.join(directory, _METADATA + suffix + tmp)) for tmp in ("", _TMP)):
        return {"epoch": 0}  # Weights alone: Keras restores them and starts at epoch 0.
    # The metadata in place, or one whose rename a kill interrupted (roll forward).
    for metadata in (os.path.join(directory, _METADATA + suffix), os.path.join(directory, _METADATA + suffix + _TMP)):
        try:
            with open(metadata) as f:
                state = json.load(f)
        except (OSError, ValueError):
            continue
        if state.get("weights_crc32", crc) == crc:  # Keras's own backups carry no CRC.
            return state
    return None


def _save(self) -> None:
    target = self.backup_dir if on_chief(self) else private_dir(self)
    os.makedirs(target, exist_ok=True)
    weights, metadata = os.path.join(target, _WEIGHTS), os.path.join(target, _METADATA)
    if os.path.exists(metadata) and _matching_metadata(target, "") is not None:
        # Always: a damaged latest has a previous to fall back to.
        _replace_copy(weights, weights + _PREVIOUS)
        _replace_copy(metadata, metadata + _PREVIOUS)
    self.model.save_weights(weights + _TMP + ".weights.h5", overwrite=True)
    epoch, batch = _compat.backup_position(self)
    state = {"epoch": epoch, "batch": batch,
             "steps_done": _progress.get(self, {}).get("steps_done", 0),
             "metric_states": metric_states.read(self.model.metrics_variables),
             "written_by": resume.job_shape(self.model.distribute_strategy),
             "weights_crc32": _crc32(weights + _TMP + ".weights.h5")}
    with open(metadata + _TMP, "w") as f:
        json.dump(state, f)
    os.replace(weights + _TMP + ".weights.h5", weights)
    os.replace(metadata + _TMP, metadata)  # The commit: the new pair matches from here on.


def _load(self) -> None:
    if not self.model.built:
        raise ConfigError("BackupAndRestore: the model must be built before fit() (call it on a batch "
                          "or give keras.Input) so that a backup can be loaded into it.")
    directory = self.backup_dir
    for suffix in ("", _PREVIOUS):
        state = _matching_metadata(directory, suffix)
        if state is None:
            if not suffix and os.path.exists(os.path.join(directory, _WEIGHTS)):
                logger.warning("tfdp: the backup %s is damaged (it does not match %s); restoring the previous "
                               "one.", os.path.join(directory, _WEIGHTS), _METADATA)
            continue
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        weights = os.path.join(directory, _WEIGHTS)
        if suffix and on_chief(self):  # The previous pair becomes the latest again, as in Keras.
            _replace_copy(weights + suffix, weights)
            _replace_copy(os.path.join(directory, _METADATA + suffix), os.path.join(directory, _METADATA))
        elif suffix:  # Keras loads only files named *.weights.h5; the user's directory is the chief's.
            # Not named as a backup: this worker's next save must not take it for a previous one.
            weights = os.path.join(private_dir(self), _RESTORED)
            shutil.copyfile(os.path.join(directory, _WEIGHTS + suffix), weights)
        self.model.load_weights(weights)
        _compat.set_initial_epoch(self.model, state["epoch"])
        steps = state.get("steps_done", 0)
        _progress[self] = {"steps_done": steps, "skip": steps, "metric_states": state.get("metric_states", ""),
                           "where": weights}
        _compat.set_backup_position(self, epoch=state["epoch"], batch=max(steps - 1, 0))
        if on_chief(self):  # Keras resumes silently; the Trainer says the same line
            resume.announce(os.path.join(directory, _WEIGHTS + suffix), epoch=state["epoch"], step=steps,
                            written_by=state.get("written_by"), now=resume.job_shape(self.model.distribute_strategy))
        return
    if any(os.path.exists(os.path.join(directory, name + suffix))
           for name in (_WEIGHTS, _METADATA) for suffix in ("", _PREVIOUS)):
        raise ConfigError(
            f"BackupAndRestore(backup_dir={directory!r}): the backup there is damaged (its weights do not "
            "match its training_metadata.json) and there is no valid previous one. Fix: remove the "
            "directory to train from the start, and pass double_checkpoint=True to keep a previous backup.")


def _epoch_begin(self, epoch, logs=None):
    progress = _progress.setdefault(self, {"steps_done": 0, "skip": 0})
    skip, progress["skip"] = progress["skip"], 0
    _skipped_steps[self.model] = skip
    if not skip:
        progress["steps_done"] = 0
        return
    model, train_function = self.model, self.model.train_function
    # The steps before the resume count in this epoch's logs (fit reset the metrics just before).
    # Metrics that fit builds in its first step (no strategy scope) get them after that step.
    saved, where = progress.pop("metric_states", ""), progress.pop("where", self.backup_dir)
    strategy = model.distribute_strategy
    pending = bool(saved) and not metric_states.fits(model.metrics_variables, saved)
    if not pending:
        metric_states.restore(model.metrics_variables, saved, strategy=strategy, where=where)
    left = [skip]

    def skipping_train_function(iterator):
        if left[0] <= 0:
            model.train_function = train_function
            logs = train_function(iterator)
            if pending and metric_states.restore(model.metrics_variables, saved, strategy=strategy, where=where,
                                                 add=True):
                logs = model.get_metrics_result()
            return logs
        for _ in range(min(model.steps_per_execution, left[0])):
            next(iterator)  # Read past a batch the backup already trained on.
        left[0] -= model.steps_per_execution
        # Callbacks do not see this step; the last one gives fit the epoch's logs so far (the
        # restored metrics), which an epoch the backup held whole ends with.
        return model.get_metrics_result() if left[0] <= 0 and not pending else {}

    model.train_function = skipping_train_function


def _stop_watching(callback) -> None:
    watch = _watches.pop(callback, None)
    if watch is not None:
        watch.__exit__(None, None, None)


def _save_and_exit(callback, batch: int) -> None:
    """Saves the backup at this step (every worker stops at the same one) and exits."""
    _compat.set_backup_position(callback, batch=batch)
    _save(callback)
    _stop_watching(callback)
    remove_private_dir(callback)
    preemption.exit_after_save(epoch=_compat.backup_position(callback)[0], step=batch + 1, where=callback.backup_dir,
                               chief=on_chief(callback))


def _trained(callback_list, step: int) -> bool:
    """Whether step `step` of the epoch is trained (not read past on resume)."""
    model = callback_list.model
    return model is None or step >= _skipped_steps.get(model, 0)


def _apply() -> Undo:
    callback_list = keras.callbacks.CallbackList
    stock_list_begin, stock_list_end = callback_list.on_train_batch_begin, callback_list.on_train_batch_end

    def list_batch_begin(self, batch, logs=None):
        if _trained(self, batch):
            stock_list_begin(self, batch, logs)

    def list_batch_end(self, batch, logs=None):
        if _trained(self, batch):
            stock_list_end(self, batch, logs)

    undo_list = patch(callback_list, on_train_batch_begin=list_batch_begin, on_train_batch_end=list_batch_end)
    callback = keras.callbacks.BackupAndRestore
    stock_batch_end, stock_epoch_end = callback.on_train_batch_end, callback.on_epoch_end
    stock_train_end = callback.on_train_end

    def on_train_begin(self, logs=None):
        self._load_model()
        _stop_watching(self)
        _watches[self] = preemption.PreemptionWatch(self.model.distribute_strategy).__enter__()

    def on_train_batch_end(self, batch, logs=None):
        _progress.setdefault(self, {"steps_done": 0, "skip": 0})["steps_done"] = batch + 1
        stock_batch_end(self, batch, logs)
        watch = _watches.get(self)
        if watch is not None and watch.should_stop():
            _save_and_exit(self, batch)

    def on_epoch_end(self, epoch, logs=None):
        _progress.setdefault(self, {"steps_done": 0, "skip": 0})["steps_done"] = 0
        stock_epoch_end(self, epoch, logs)

    def on_train_end(self, logs=None):
        _stop_watching(self)
        if on_chief(self):
            stock_train_end(self, logs)
        remove_private_dir(self)

    undo_callback = patch(callback, _save_model=_save, _load_model=_load, on_train_begin=on_train_begin,
                          on_epoch_begin=_epoch_begin, on_train_batch_end=on_train_batch_end,
                          on_epoch_end=on_epoch_end, on_train_end=on_train_end)

    def undo() -> None:
        undo_callback()
        undo_list()

    return undo


def _check() -> None:
    check_methods(keras.callbacks.BackupAndRestore, {
        "__init__": ("self", "backup_dir", "save_freq", "double_checkpoint", "delete_checkpoint"),
        "_save_model": ("self",), "_load_model": ("self",), "on_train_begin": ("self", "logs"),
        "on_train_batch_end": ("self", "batch", "logs"), "on_epoch_end": ("self", "epoch", "logs"),
        "on_train_end": ("self", "logs")})
    check_methods(keras.callbacks.CallbackList, {"on_train_batch_begin": ("self", "batch", "logs"),
                                                 "on_train_batch_end": ("self", "batch", "logs")})
    _compat.check_attributes("backup_callback", ("_current_epoch", "_last_batch_seen"))
    _compat.check_attributes("model", ("_initial_epoch",))


FIX = Fix(
    name="backup_and_restore",
    upstream="https://github.com/tensorflow/tensorflow/pull/43592",
    problem="BackupAndRestore writes and deletes from every worker, tears on a kill mid-save, and "
            "replays a whole epoch after a mid-epoch backup",
    reproduced=("3.15.1", "3.16.0.dev2026102704"),
    test="tests/test_keras_fixes_needed.py::test_stock_keras_is_wrong_without[backup_and_restore]",
    check=_check,
    apply=_apply,
)
