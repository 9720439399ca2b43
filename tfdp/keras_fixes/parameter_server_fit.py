"""parameter_server_fit: model.fit/evaluate/predict under ParameterServerStrategy fail deep in TensorFlow.

Keras 3 has no parameter-server training loop (keras-team/keras#18624: "Parameter server
training is not supported in Keras 3"). Its optimizers now work under the strategy (their
`iterations` is created with aggregation="only_first_replica"), but `model.fit` hands the
dataset to `distribute_datasets_from_function`, and TensorFlow stops with "ValueError: To
use this dataset, you need to pass this dataset to
ClusterCoordinator.create_per_worker_dataset" — a message about TensorFlow's internals,
not the user's fix. The repair raises a `tfdp.ConfigError` instead, before anything runs,
naming tfdp.Trainer, which trains asynchronously through a ClusterCoordinator.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from tfdp import _compat
from tfdp.errors import ConfigError
from tfdp.keras_fixes._base import Fix, Undo, check_methods, patch

_METHODS = ("fit", "evaluate", "predict")


def _refusing(name: str, stock):
    @functools.wraps(stock)
    def method(self, *args, **kwargs):
        if isinstance(self.distribute_strategy, tf.distribute.experimental.ParameterServerStrategy):
            raise ConfigError(
                f"model.{name}() under a parameter_server strategy: Keras 3 has no asynchronous training loop "
                "(keras-team/keras#18624), and TensorFlow would stop with an error about "
                "ClusterCoordinator.create_per_worker_dataset. Fix: train with tfdp.Trainer(model, optimizer=..., "
                "loss=..., strategy=strategy).fit(dataset, steps_per_epoch=N), which schedules the steps on the "
                "workers through a ClusterCoordinator (docs/async.md); or use a synchronous strategy "
                '("multi_worker") for model.fit.')
        return stock(self, *args, **kwargs)

    return method


def _apply() -> Undo:
    owner = _compat.tf_trainer_class()
    return patch(owner, **{name: _refusing(name, getattr(owner, name)) for name in _METHODS})


def _check() -> None:
    check_methods(_compat.tf_trainer_class(), {"fit": ("self", "x", "y"), "evaluate": ("self", "x", "y"),
                                               "predict": ("self", "x")})


FIX = Fix(
    name="parameter_server_fit",
    upstream="https://github.com/keras-team/keras/issues/18624",
    problem="model.fit/evaluate/predict under ParameterServerStrategy stop with a TensorFlow error about "
            "ClusterCoordinator.create_per_worker_dataset instead of saying what to use",
    reproduced=("3.15.1", "3.16.0.dev2026102704"),
    test="tests/test_parameter_server.py::test_model_fit_is_a_config_error_pointing_to_the_trainer",
    check=_check,
    apply=_apply,
)
