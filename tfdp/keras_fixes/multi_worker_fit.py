"""multi_worker_fit: model.fit under MultiWorkerMirroredStrategy crashes.

Before fit, Keras builds the model symbolically from one batch, which it gets by
`strategy.reduce("MEAN", batch)`. Under MultiWorkerMirroredStrategy that turns the
worker's PerReplica batch into a cross-worker collective that fails ("Attempt to convert
a value (PerReplica...)"). Only shapes and dtypes are needed: the repair takes this
worker's first local replica's batch.

Keras then reduces each step's logs with `strategy.reduce("MEAN", value, axis=0)`, which
fails on scalars ("Invalid reduction dimension 0"). The logs are running metric results;
the exact cross-worker values are read from the metrics' SUM-on-read variables at the end
of the epoch. So per step the repair averages this worker's replicas as Keras does for
MirroredStrategy, with no collective.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfdp import _compat
from tfdp.keras_fixes._base import Fix, Undo, check_methods, patch, patch_module


def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    if _compat.distribute_strategy_of(self) is None:
        return
    if iterator is not None:
        for _, _, it in iterator:
            local = self.distribute_strategy.experimental_local_results
            data_batch = keras.tree.map_structure(
                lambda v: local(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v, next(it))
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _apply() -> Undo:
    module = _compat.tf_trainer_module()
    stock_reduce = module.reduce_per_replica
    is_multi_worker = _compat.tf_trainer_function("_collective_all_reduce_multi_worker")
    is_per_replica = _compat.tf_trainer_function("_is_per_replica_instance")

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and is_multi_worker(strategy):
            def local_mean(v):
                if not is_per_replica(v):
                    return v
                return tf.reduce_mean(strategy.experimental_local_results(v), axis=0)

            return keras.tree.map_structure(local_mean, values)
        return stock_reduce(values, strategy, reduction)

    undo_build = patch(_compat.tf_trainer_class(), _maybe_symbolic_build=_maybe_symbolic_build)
    undo_reduce = patch_module(module, reduce_per_replica=reduce_per_replica)
    return lambda: (undo_build(), undo_reduce())


def _check() -> None:
    check_methods(_compat.tf_trainer_class(), {"_maybe_symbolic_build": ("self", "iterator", "data_batch")})
    check_methods(_compat.base_trainer_class(), {"_symbolic_build": ("self", "iterator", "data_batch")})
    for name in ("reduce_per_replica", "_collective_all_reduce_multi_worker", "_is_per_replica_instance"):
        _compat.tf_trainer_function(name)
    _compat.check_attributes("model", ("_distribute_strategy",))


FIX = Fix(
    name="multi_worker_fit",
    upstream="https://github.com/keras-team/keras/issues/20585",
    problem="fit under MultiWorkerMirroredStrategy crashes in the symbolic build, then in the "
            "reduction of each step's logs",
    reproduced=("3.15.1", "3.16.0.dev2026102704"),
    test="tests/test_fit_multi_worker.py::test_stock_keras_fit_crashes_on_two_workers",
    check=_check,
    apply=_apply,
)
