"""`fit(class_weight={class: weight})` as model.fit takes it: a sample weight per example from its label."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import keras

from tfdp._requirements import import_tensorflow
from tfdp.errors import ConfigError

tf = import_tensorflow()


def check(class_weight) -> dict[int, float] | None:
    if class_weight is None:
        return None
    if not isinstance(class_weight, Mapping) or not class_weight or not all(
            isinstance(k, numbers.Integral) and k >= 0 and isinstance(v, numbers.Real) and v >= 0
            for k, v in class_weight.items()):
        raise ConfigError(f"fit(class_weight={class_weight!r}): give {{class index: weight}} with whole class "
                          "indices >= 0 and weights >= 0, as model.fit takes it.")
    return {int(k): float(v) for k, v in class_weight.items()}


def apply(dataset: tf.data.Dataset, class_weight: dict[int, float]) -> tf.data.Dataset:
    """Each batch's sample weights x the weight of each example's class (1 for a class not listed).

    As Keras does: labels of shape [batch, classes] are one-hot (argmax), [batch, 1] squeezed.
    """
    size = max(class_weight) + 1
    table = tf.constant([class_weight.get(i, 1.0) for i in range(size)], tf.float32)

    def weigh(*batch):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch if len(batch) > 1 else batch[0])
        if y is None or tf.nest.is_nested(y):
            raise ConfigError("fit(class_weight=...): needs one target per example (a model with one output); "
                              "Keras takes it for single-output models only. Fix: sample weights in the data.")
        labels = y
        if labels.shape.rank and labels.shape.rank > 1:
            labels = tf.argmax(labels, axis=-1) if labels.shape[-1] != 1 else tf.squeeze(labels, axis=-1)
        labels = tf.cast(tf.round(tf.cast(labels, tf.float32)), tf.int32)
        weights = tf.where(labels < size, tf.gather(table, tf.clip_by_value(labels, 0, size - 1)), 1.0)
        if sample_weight is not None:
            weights = tf.cast(sample_weight, tf.float32) * weights
        return x, y, weights

    return dataset.map(weigh)
