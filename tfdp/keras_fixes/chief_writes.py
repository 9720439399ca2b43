"""chief_writes: every worker writes checkpoints and logs into the user's directory.

Keras's ModelCheckpoint and TensorBoard write from every worker into the directory the
user named: with a shared directory the workers overwrite each other or die on a file
lock, and every worker prints a progress bar. The repair: on non-chief workers these
callbacks write into a private temporary directory, removed when training ends, and
ProgbarLogger is silent. (BackupAndRestore: see backup_and_restore.)
"""

from __future__ import annotations

import os

import keras

from tfdp.keras_fixes._base import Fix, Undo, check_methods, patch
from tfdp.keras_fixes._worker_files import on_chief, private_dir, remove_private_dir


def _apply() -> Undo:
    checkpoint, tensorboard, progbar = (keras.callbacks.ModelCheckpoint, keras.callbacks.TensorBoard,
                                        keras.callbacks.ProgbarLogger)
    stock_path = checkpoint._get_file_path
    stock_checkpoint_end = checkpoint.on_train_end
    stock_set_model, stock_tensorboard_end = tensorboard.set_model, tensorboard.on_train_end
    stock_set_params = progbar.set_params

    def checkpoint_file_path(self, epoch, batch, logs):
        path = stock_path(self, epoch, batch, logs)
        return path if on_chief(self) else os.path.join(private_dir(self), os.path.basename(path))

    def checkpoint_train_end(self, logs=None):
        stock_checkpoint_end(self, logs)
        remove_private_dir(self)

    def tensorboard_set_model(self, model):
        if not on_chief(self, model):
            self.log_dir = private_dir(self)
        stock_set_model(self, model)

    def tensorboard_train_end(self, logs=None):
        stock_tensorboard_end(self, logs)
        remove_private_dir(self)

    def progbar_set_params(self, params):
        stock_set_params(self, params)
        if not on_chief(self):
            self.verbose = 0

    undos = [
        patch(checkpoint, _get_file_path=checkpoint_file_path, on_train_end=checkpoint_train_end),
        patch(tensorboard, set_model=tensorboard_set_model, on_train_end=tensorboard_train_end),
        patch(progbar, set_params=progbar_set_params),
    ]
    return lambda: [undo() for undo in undos]


def _check() -> None:
    check_methods(keras.callbacks.ModelCheckpoint, {"_get_file_path": ("self", "epoch", "batch", "logs"),
                                                    "on_train_end": ("self", "logs")})
    check_methods(keras.callbacks.TensorBoard, {"set_model": ("self", "model"), "on_train_end": ("self", "logs")})
    check_methods(keras.callbacks.ProgbarLogger, {"set_params": ("self", "params")})


FIX = Fix(
    name="chief_writes",
    upstream="https://github.com/tensorflow/tensorflow/issues/38635",
    problem="every worker writes checkpoints and TensorBoard logs into the user's directory and "
            "prints a progress bar",
    reproduced=("3.15.1", "3.16.0.dev2026102704"),
    test="tests/test_fit_multi_worker.py::test_stock_callbacks_write_from_every_worker",
    check=_check,
    apply=_apply,
)
