"""The state of a run's metrics (its loss tracker included), kept with a checkpoint.

A run resumed mid-epoch restores it, so that the interrupted epoch's logs (and History)
cover every step of that epoch, as an uninterrupted run's do, not only those after the
resume. Keras keeps metric state per replica (variables synchronized on read): `read`
gives the value every worker reads (summed over replicas and workers), and `restore`
spreads it so that the same read gives it back, on any number of replicas and workers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger("tfdp")


def read(variables: Sequence) -> str:
    """The metric variables' values as one JSON text (a collective under multi_worker: every
    worker calls it at the same step)."""
    return json.dumps([np.asarray(v.numpy()).tolist() for v in variables])


def fits(variables: Sequence, saved: str) -> bool:
    """Whether `saved` (what `read` returned) has a value of the right shape for each variable."""
    values = json.loads(saved)
    return len(values) == len(variables) and all(np.shape(value) == tuple(v.shape)
                                                 for value, v in zip(values, variables))


def restore(variables: Sequence, saved: str, *, strategy, where: str, add: bool = False) -> bool:
    """Sets the metric variables to the `read` values `saved`; False (with a warning) when they do not fit.

    Args:
        variables: the metric variables, built (the same list `read` was given).
        saved: what `read` returned, "" for nothing saved.
        strategy: the strategy the variables belong to.
        where: the checkpoint, named in the warning.
        add: add the saved values to the variables' own (metrics built by the first step after
            the resume, which already counted that step) instead of setting them.
    """
    if not saved:
        return False
    if not fits(variables, saved):
        logger.warning("tfdp: the metric state in %s does not fit this run's metrics; the resumed epoch's "
                       "logs cover the steps after the resume only.", where)
        return False
    values = json.loads(saved)
    replicas = strategy.num_replicas_in_sync

    def assign():  # each replica holds its share: the sum over replicas (and workers) is the saved value
        for variable, value in zip(variables, values):
            value = np.asarray(value, dtype=np.float64)
            if variable.aggregation == "sum":
                value = value / replicas
            (variable.assign_add if add else variable.assign)(value.astype(variable.dtype))

    strategy.run(assign)
    return True
