"""Cross-replica plumbing shared by the Keras repairs and tfdp.Trainer."""

from __future__ import annotations

import contextlib

from tfdp import _compat
from tfdp._requirements import import_tensorflow

tf = import_tensorflow()
import keras  # noqa: E402

@contextlib.contextmanager
def merge_calls_run_directly():
    """Lets Keras's `maybe_merge_call(fn, strategy, ...)` run in the cross-replica context.

    Stock TF fetches the replica context there, which is None in the cross-replica context.
    """
    interim = _compat.distribute_interim()
    stock = interim.maybe_merge_call

    def maybe_merge_call(fn, strategy, *args, **kwargs):
        if tf.distribute.in_cross_replica_context():
            return fn(strategy, *args, **kwargs)
        return stock(fn, strategy, *args, **kwargs)

    interim.maybe_merge_call = maybe_merge_call
    try:
        yield
    finally:
        interim.maybe_merge_call = stock


def batch_size(x) -> tf.Tensor:
    return tf.shape(next(t for t in keras.tree.flatten(x) if t is not None))[0]


def _pad_one_row(t: tf.Tensor) -> tf.Tensor:
    return tf.pad(t, [[0, 1]] + [[0, 0]] * (t.shape.rank - 1), constant_values=tf.zeros([], t.dtype))


def nonempty_batch(x, y, sample_weight):
    """(x, y, sample_weight, n): one weight-0 example added when the local batch is empty.

    A replica's share of the last partial batch can be empty, and TF 2.21's oneDNN CPU
    kernels break on empty batches (Conv2D returns the input's shape; the MaxPool gradient
    aborts the process). `n` is the real number of examples; sample_weight is made
    explicit (ones) so the padding weighs nothing.
    """
    n = batch_size(x)
    if sample_weight is None:
        sample_weight = tf.ones([n], keras.backend.floatx())
    leaves = [t for t in keras.tree.flatten((x, y, sample_weight)) if t is not None]
    dense = [isinstance(t, tf.Tensor) and t.shape.rank for t in leaves]
    if not all(dense):  # Ragged or sparse inputs: left as they are.
        return x, y, sample_weight, n
    padded = tf.cond(n > 0, lambda: leaves, lambda: [_pad_one_row(t) for t in leaves])
    padded = iter(padded)
    x, y, sample_weight = keras.tree.map_structure(
        lambda t: None if t is None else next(padded), (x, y, sample_weight), none_is_leaf=True)
    return x, y, sample_weight, n
