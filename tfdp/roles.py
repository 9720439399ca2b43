"""Who this process is in the job: the chief or not, how many workers train.

A leaf module: everything in tfdp may import it, it imports nothing of tfdp but
`tfdp.cluster` (no TensorFlow), and TensorFlow only inside the functions, when a
strategy is asked about.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tfdp.cluster import TFConfig

if TYPE_CHECKING:
    import tensorflow as tf


def _tf_config_of(strategy: "tf.distribute.Strategy | None") -> TFConfig | None:
    """The cluster `strategy` runs in as a TFConfig (outside any strategy: TF_CONFIG), or None."""
    if strategy is None:
        return TFConfig.from_env()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None and _is_parameter_server(strategy):  # it keeps no public resolver: TF_CONFIG is its
        return TFConfig.from_env()
    if resolver is None or not resolver.task_type or not resolver.cluster_spec().as_dict():
        return None
    return TFConfig(cluster=resolver.cluster_spec().as_dict(), task_type=resolver.task_type,
                    task_index=resolver.task_id)


def _is_parameter_server(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)


def _strategy_in_scope(strategy):
    if strategy is not None:
        return strategy
    import tensorflow as tf

    return tf.distribute.get_strategy() if tf.distribute.has_strategy() else None


def is_chief(strategy: "tf.distribute.Strategy | None" = None) -> bool:
    """Whether this process writes the user's files (checkpoints, logs, exports).

    The chief is the "chief" task, else worker 0 (`TFConfig.is_chief`); a single process
    is the chief.

    Args:
        strategy: the strategy to ask; None asks the strategy in scope, and outside
            any scope reads TF_CONFIG.
    """
    tf_config = _tf_config_of(_strategy_in_scope(strategy))
    return tf_config is None or tf_config.is_chief


def num_workers(strategy: "tf.distribute.Strategy | None" = None) -> int:
    """How many worker processes train together (the chief counts as one).

    Args:
        strategy: the strategy to ask; None asks the strategy in scope, and outside
            any scope reads TF_CONFIG (no TF_CONFIG: 1).
    """
    tf_config = _tf_config_of(_strategy_in_scope(strategy))
    if tf_config is None or tf_config.task_type == "evaluator":  # an evaluator works alone
        return 1
    return max(tf_config.num_workers, 1)


def loop_on_chief_only(strategy: "tf.distribute.Strategy | None" = None) -> bool:
    """Whether the chief alone runs the training loop: a parameter-server job (its workers serve).

    Args:
        strategy: the strategy to ask; None asks the strategy in scope, and outside
            any scope reads TF_CONFIG.
    """
    tf_config = _tf_config_of(_strategy_in_scope(strategy))
    return tf_config is not None and bool(tf_config.cluster.get("ps"))
