"""Who this process is in the job: the chief or not, how many workers train.

A leaf module: everything in tfdp may import it, it imports nothing of tfdp but
`tfdp.cluster` (no TensorFlow), and TensorFlow only inside the functions, when a
strategy is asked about.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tfdp.cluster import TRAINING_TASK_TYPES, TFConfig

if TYPE_CHECKING:
    import tensorflow as tf


def _cluster_of(strategy: "tf.distribute.Strategy") -> tuple[dict, str | None, int | None]:
    """(cluster spec as a dict, task type, task id) of a strategy; ({}, None, None) for one process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return {}, None, None
    return resolver.cluster_spec().as_dict(), resolver.task_type, resolver.task_id


def _strategy_in_scope(strategy):
    if strategy is not None:
        return strategy
    import tensorflow as tf

    return tf.distribute.get_strategy() if tf.distribute.has_strategy() else None


def is_chief(strategy: "tf.distribute.Strategy | None" = None) -> bool:
    """Whether this process writes the user's files (checkpoints, logs, exports).

    Args:
        strategy: the strategy to ask; None asks the strategy in scope, and outside
            any scope reads TF_CONFIG (no TF_CONFIG: a single process is the chief).
    """
    strategy = _strategy_in_scope(strategy)
    if strategy is None:
        tf_config = TFConfig.from_env()
        return tf_config is None or tf_config.is_chief
    spec, task_type, task_id = _cluster_of(strategy)
    if not task_type:
        return True
    if "chief" in spec:
        return task_type == "chief"
    return task_type == "worker" and task_id == 0


def num_workers(strategy: "tf.distribute.Strategy | None" = None) -> int:
    """How many worker processes train together (the chief counts as one).

    Args:
        strategy: the strategy to ask; None asks the strategy in scope, and outside
            any scope reads TF_CONFIG (no TF_CONFIG: 1).
    """
    strategy = _strategy_in_scope(strategy)
    if strategy is None:
        tf_config = TFConfig.from_env()
        return 1 if tf_config is None else tf_config.num_workers
    spec, _, _ = _cluster_of(strategy)
    return sum(len(spec.get(job, ())) for job in TRAINING_TASK_TYPES) or 1
