"""The gradient all-reduce of tfdp.Trainer: ONE packed collective for the dense gradients.

Called in a replica context, with each loss term's gradients (of the term's SUM), its
SUM and its COUNT (training/losses.py). Dense gradients are packed into one flat vector
(one collective instead of one per variable). In float32 the terms' sums and counts and
the example count ride along as the vector's last elements, and each term's gradient is
divided by its GLOBAL count afterwards. Compressed (float16/bfloat16), the scalars first
go through their own float32 all-reduce, so that they stay exact and the gradients are
divided BEFORE the cast: the compressed values are means, not sums, and do not overflow
float16 at any realistic batch. Sparse gradients (IndexedSlices) are gathered, not
summed: every replica's slices, as one device's batch would hold them (tfdp/gradients.py);
compressed in float16, in float32 for bfloat16 (TensorFlow aggregates no bfloat16 slices).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from tfdp import gradients

ALL_REDUCE_DTYPES = ("float32", "float16", "bfloat16")


def pack(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """One flat float32 vector of all `tensors`."""
    if not tensors:
        return tf.zeros([0], tf.float32)
    return tf.concat([tf.reshape(tf.cast(t, tf.float32), [-1]) for t in tensors], axis=0)


def unpack(packed: tf.Tensor, like: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """The inverse of `pack` for tensors shaped as `like`."""
    if not like:
        return []
    pieces = tf.split(packed, [t.shape.num_elements() for t in like])
    return [tf.reshape(p, t.shape) for p, t in zip(pieces, like)]


def sum_packed(packed: tf.Tensor, dtype: str = "float32") -> tf.Tensor:
    """SUM over all replicas of one flat vector, sent in `dtype`, returned as float32."""
    if dtype != "float32":
        packed = tf.cast(packed, dtype)
    return tf.cast(tf.distribute.get_replica_context().all_reduce("SUM", packed), tf.float32)


def _sum_sparse(slices: list, dtype: str) -> list:
    if not slices:
        return []
    # Gathered rows are not added up, so they cannot overflow; TensorFlow's IndexedSlices
    # aggregation takes no bfloat16 (TF 2.21), so bfloat16 rows travel in float32.
    dtype = "float32" if dtype == "bfloat16" else dtype
    sent = [gradients.cast(g, dtype) for g in slices] if dtype != "float32" else slices
    gathered = tf.distribute.get_replica_context().all_reduce("SUM", sent)
    return [gradients.cast(g, tf.float32) for g in gathered]


def _sum_gradients(grads: list, dtype: str, scalars: tf.Tensor | None = None):
    """(grads summed over replicas, scalars summed) — dense ones packed with the scalars."""
    dense = [g for g in grads if not gradients.is_sparse(g)]
    sparse = [g for g in grads if gradients.is_sparse(g)]
    tail = [] if scalars is None else [scalars]
    reduced = sum_packed(tf.concat([pack(dense), *tail], axis=0), dtype)
    if scalars is not None:
        reduced, scalars = reduced[:-scalars.shape[0]], reduced[-scalars.shape[0]:]
    dense, sparse = iter(unpack(reduced, dense)), iter(_sum_sparse(sparse, dtype))
    return [next(sparse) if gradients.is_sparse(g) else next(dense) for g in grads], scalars


def _combine(grads_by_term: Sequence[Sequence], factors: Sequence) -> list:
    """SUM over terms of gradient x factor (None: x 1), per variable."""
    combined = None
    for grads, factor in zip(grads_by_term, factors):
        scaled = [g if factor is None else gradients.scale(g, factor) for g in grads]
        combined = scaled if combined is None else [gradients.add(a, b) for a, b in zip(combined, scaled)]
    return combined


def mean_gradients(grads_by_term: Sequence[Sequence], scalars: tf.Tensor, counts_at: Sequence[int | None], *,
                   replicas: int, dtype: str = "float32") -> tuple[list, tf.Tensor]:
    """(the step's gradient per variable, the scalars summed over replicas).

    Args:
        grads_by_term: per loss term, this replica's gradients of the term's SUM (float32).
        scalars: this replica's scalars (the terms' sums and counts, examples): a float32 vector.
        counts_at: per term, the index of its COUNT in `scalars`; None for a term never divided.
        replicas: replicas in sync (1: nothing is reduced).
        dtype: the dtype the gradients travel in.
    """
    def factors(reduced):
        return [None if i is None else tf.math.divide_no_nan(1.0, reduced[i]) for i in counts_at]

    if replicas == 1:
        return _combine(grads_by_term, factors(scalars)), scalars
    if dtype == "float32" and len(grads_by_term) == 1:
        grads, scalars = _sum_gradients(list(grads_by_term[0]), dtype, scalars)
        return _combine([grads], factors(scalars)), scalars
    scalars = sum_packed(scalars)  # exact: its own float32 collective
    grads, _ = _sum_gradients(_combine(grads_by_term, factors(scalars)), dtype)
    return grads, scalars
