"""Cross-replica plumbing shared by the Keras repairs and tfdp.Trainer."""

from __future__ import annotations

from tfdp._requirements import import_tensorflow

tf = import_tensorflow()
import keras  # noqa: E402


def batch_size(x) -> tf.Tensor:
    return tf.shape(next(t for t in keras.tree.flatten(x) if t is not None))[0]


def _pad_one_row(t: tf.Tensor) -> tf.Tensor:
    return tf.pad(t, [[0, 1]] + [[0, 0]] * (t.shape.rank - 1), constant_values=tf.zeros([], t.dtype))


def nonempty_batch(x, y, sample_weight):
    """(x, y, sample_weight, n): one example added when the local batch is empty.

    A replica's share of the last partial batch can be empty, and TF 2.21's oneDNN CPU
    kernels break on empty batches (Conv2D returns the input's shape; the MaxPool gradient
    aborts the process). `n` is the real number of examples. The added example must
    weigh nothing: given sample weights are padded with 0, and callers multiply what
    they sum by `n > 0` (their losses, counts and metric updates). sample_weight=None
    stays None: made explicit, a weight per example breaks losses with values per time
    step under a mask (Keras multiplies it with the [batch, steps] mask).
    """
    n = batch_size(x)
    leaves = [t for t in keras.tree.flatten((x, y, sample_weight)) if t is not None]
    dense = [isinstance(t, tf.Tensor) and t.shape.rank for t in leaves]
    if not all(dense):  # Ragged or sparse inputs: left as they are.
        return x, y, sample_weight, n
    padded = tf.cond(n > 0, lambda: leaves, lambda: [_pad_one_row(t) for t in leaves])
    padded = iter(padded)
    x, y, sample_weight = keras.tree.map_structure(
        lambda t: None if t is None else next(padded), (x, y, sample_weight), none_is_leaf=True)
    return x, y, sample_weight, n


def real(n) -> tf.Tensor:
    """1.0 when a local batch of `n` examples is real, 0.0 when it is the padding of an empty one."""
    return tf.cast(n > 0, tf.float32)


def only_if_real(value, n):
    """`value` (a tensor or IndexedSlices), or zeros when the local batch is the padding of an empty one.

    A select, not a product: the padded example can make a masked mean 0/0 (an all-padding
    sequence), and NaN x 0 is NaN.
    """
    if value is None:
        return None
    if isinstance(value, tf.IndexedSlices):
        return tf.IndexedSlices(only_if_real(value.values, n), value.indices, value.dense_shape)
    return tf.where(n > 0, value, tf.zeros_like(value))
