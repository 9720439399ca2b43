"""BatchNormalization under several replicas: one call to synchronise, one warning."""

from __future__ import annotations

import logging

from tfdp import _compat, roles
from tfdp._requirements import import_tensorflow

import_tensorflow()
import keras  # noqa: E402

logger = logging.getLogger("tfdp")
_warned: set[int] = set()


def _batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [layer for layer in _compat.flatten_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization)]


def synchronize_batch_norm(model: keras.Model) -> int:
    """Makes every BatchNormalization layer of `model` compute statistics over the GLOBAL batch.

    Unsynchronised, each replica normalises with its own slice's statistics and keeps its
    own moving averages, which drift apart and differ from one device's; saving keeps
    replica 0's. Synchronised layers all-reduce the statistics, so N replicas match one
    device at the same global batch. Call it before the first fit/call.

    Returns:
        How many layers were changed.
    """
    changed = [layer for layer in _batch_norm_layers(model) if not layer.synchronized]
    for layer in changed:
        layer.synchronized = True
    return len(changed)


def warn_if_unsynchronized(model: keras.Model, *, num_replicas: int) -> None:
    """Logs once per model (on the chief) when unsynchronised BN layers train on replicas."""
    if num_replicas < 2 or id(model) in _warned:
        return
    names = [layer.name for layer in _batch_norm_layers(model) if not layer.synchronized]
    if names and roles.is_chief(model.distribute_strategy):
        _warned.add(id(model))
        logger.warning(
            "tfdp: BatchNormalization layer(s) %s train on %d replicas unsynchronised: each "
            "replica normalises with its own slice and their moving statistics drift apart. "
            "Call tfdp.synchronize_batch_norm(model) before fit (or build them with "
            "synchronized=True).", ", ".join(names), num_replicas)
