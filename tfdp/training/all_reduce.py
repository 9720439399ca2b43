"""The gradient all-reduce of tfdp.Trainer: ONE packed collective, optionally compressed.

Called in a replica context. Gradients are packed into one flat vector (one collective
instead of one per variable). In float32 the example count rides along as the vector's
last element. Compressed (float16/bfloat16), the count first goes through its own
float32 all-reduce, so that it stays exact and the gradients are divided by it BEFORE
the cast: the compressed values are means, not sums, and do not overflow float16 at any
realistic batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

ALL_REDUCE_DTYPES = ("float32", "float16", "bfloat16")


def pack(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """One flat float32 vector of all `tensors`."""
    return tf.concat([tf.reshape(tf.cast(t, tf.float32), [-1]) for t in tensors], axis=0)


def unpack(packed: tf.Tensor, like: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """The inverse of `pack` for tensors shaped as `like`."""
    pieces = tf.split(packed, [t.shape.num_elements() for t in like])
    return [tf.reshape(p, t.shape) for p, t in zip(pieces, like)]


def sum_packed(packed: tf.Tensor, dtype: str = "float32") -> tf.Tensor:
    """SUM over all replicas of one flat vector, sent in `dtype`, returned as float32."""
    if dtype != "float32":
        packed = tf.cast(packed, dtype)
    return tf.cast(tf.distribute.get_replica_context().all_reduce("SUM", packed), tf.float32)


def mean_gradients(grads: Sequence[tf.Tensor], examples: tf.Tensor, *,
                   dtype: str = "float32") -> tuple[list[tf.Tensor], tf.Tensor]:
    """(gradients summed over replicas / global examples, global examples).

    Args:
        grads: this replica's gradients of the SUM of its per-example losses (float32).
        examples: this replica's example count (float32 scalar).
        dtype: the dtype the gradients travel in.
    """
    examples = tf.reshape(tf.cast(examples, tf.float32), [1])
    if dtype == "float32":
        reduced = sum_packed(tf.concat([pack(grads), examples], axis=0))
        total = reduced[-1]
        return [g / total for g in unpack(reduced[:-1], grads)], total
    total = sum_packed(examples)[0]  # exact: its own float32 collective
    reduced = sum_packed(pack([g / total for g in grads]), dtype)
    return unpack(reduced, grads), total
