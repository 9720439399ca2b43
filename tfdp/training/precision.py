"""Mixed precision: the policy up front, and dynamic loss scaling for float16."""

from __future__ import annotations

import keras

from tfdp import _compat
from tfdp._requirements import import_tensorflow
from tfdp.errors import ConfigError, check_choice

tf = import_tensorflow()

POLICIES = ("mixed_float16", "mixed_bfloat16")


def set_mixed_precision(policy: str) -> None:
    """Sets Keras's global dtype policy. Call it BEFORE building the model.

    Keras fixes a layer's compute dtype when the layer is created, so the policy must be
    in force first; `Trainer(mixed_precision=...)` checks that the model's layers match.
    """
    keras.mixed_precision.set_dtype_policy(check_choice("set_mixed_precision(policy)", policy, POLICIES))


def check_model_matches(model: keras.Model, policy: str | None) -> None:
    """Raises ConfigError when the model was not built under the requested policy."""
    if policy is None:
        return
    check_choice("Trainer(mixed_precision)", policy, POLICIES)
    compute = policy.split("_")[1]
    layers = [layer for layer in _compat.flatten_layers(model) if layer.weights]
    if not any(layer.dtype_policy.compute_dtype == compute for layer in layers):
        raise ConfigError(
            f'Trainer(mixed_precision="{policy}"): the model\'s layers compute in '
            f"{layers[0].dtype_policy.compute_dtype if layers else 'float32'}, so they were built before "
            f'the policy was set. Fix: call tfdp.training.set_mixed_precision("{policy}") before '
            "building the model.")


class DynamicLossScale:
    """The float16 loss scale: halved on a non-finite step, doubled after `growth_steps` good ones."""

    def __init__(self, *, initial: float = 2.0 ** 15, growth_steps: int = 2000):
        self.scale = tf.Variable(initial, trainable=False, dtype=tf.float32, name="loss_scale",
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.good_steps = tf.Variable(0, trainable=False, dtype=tf.int64, name="loss_scale_good_steps",
                                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.growth_steps = growth_steps

    def update(self, finite: tf.Tensor) -> None:
        """Called once per step, in the cross-replica context, with the agreed finite flag."""
        def grow_or_count():
            grow = self.good_steps + 1 >= self.growth_steps
            self.scale.assign(tf.where(grow, self.scale * 2.0, self.scale))
            self.good_steps.assign(tf.where(grow, tf.zeros_like(self.good_steps), self.good_steps + 1))

        def shrink():
            self.scale.assign(tf.maximum(self.scale / 2.0, 1.0))
            self.good_steps.assign(0)

        tf.cond(finite, grow_or_count, shrink)
