"""Keras's loss reduction as (SUM, COUNT): what one device divides by, made global.

Keras reduces a loss's values (one per example, or per token for a per-step output) as

- "sum_over_batch_size" / "mean": SUM(values x sample_weight x mask) / COUNT, where COUNT
  is the number of valid entries under a mask (the tokens the model's output mask keeps)
  and otherwise the number of values (examples, or examples x time steps);
- "mean_with_sample_weight": the same SUM / SUM(sample_weight x mask);
- "sum": the SUM, never divided.

On one device COUNT is the global batch's. Under tf.distribute Keras divides each
replica's SUM by that replica's own COUNT and averages the replicas, which differs from
one device as soon as replicas hold different counts (an uneven last batch, or sequences
with different numbers of valid tokens). tfdp divides by the COUNT summed over all
replicas and workers: the repaired `model.fit` (`keras_fixes/partial_batch.py`) and
`tfdp.Trainer` (`training/losses.py`) both build on `sum_and_count` here, which follows
Keras's `reduce_weighted_values` (Keras 3.15.1) term by term. The Keras internals it uses
(rank matching, the Keras mask of a tensor) come through `tfdp/_compat.py`.
"""

from __future__ import annotations

from tfdp import _compat
from tfdp._requirements import import_tensorflow

tf = import_tensorflow()

DIVIDED = ("sum_over_batch_size", "mean", "mean_with_sample_weight")
REDUCTIONS = (*DIVIDED, "sum")


def sum_and_count(values, *, sample_weight=None, mask=None, reduction: str = "sum_over_batch_size",
                  dtype="float32") -> tuple[tf.Tensor, tf.Tensor | None]:
    """(SUM of the weighted, masked values, the COUNT Keras divides it by; None for "sum").

    Args:
        values: a loss's unreduced values (`Loss.call`): [batch] or [batch, steps, ...].
        sample_weight: broadcastable to `values` as Keras broadcasts it, or None.
        mask: the Keras mask of the prediction (and of the values), or None.
        reduction: the Keras loss's reduction, one of `REDUCTIONS`.
        dtype: the dtype the reduction is computed in (the loss's).
    """
    same_rank = tf.autograph.experimental.do_not_convert(_compat.squeeze_or_expand_to_same_rank)
    values = tf.cast(values, dtype)
    weight = None
    if mask is not None:
        weight = tf.cast(mask, dtype)
        if sample_weight is not None:
            weight, sample_weight = same_rank(weight, tf.cast(sample_weight, dtype))
            weight = sample_weight * weight
    elif sample_weight is not None:
        weight = tf.cast(sample_weight, dtype)
    if weight is not None:
        values, weight = same_rank(values, weight)
        values = values * weight
    total = tf.reduce_sum(values)
    if reduction == "sum":
        return total, None
    if reduction == "mean_with_sample_weight" and weight is not None:
        count = tf.reduce_sum(weight)
    elif mask is not None:
        count = tf.reduce_sum(tf.cast(mask, dtype))
    else:
        count = tf.cast(tf.size(values), dtype)
    return total, count


def loss_mask(y_pred, values=None):
    """The mask Keras's Loss.__call__ applies: the prediction's, and the values', and-ed."""
    get = tf.autograph.experimental.do_not_convert(_compat.keras_mask)
    masks = [m for m in (get(y_pred), None if values is None else get(values)) if m is not None]
    if not masks:
        return None
    return masks[0] if len(masks) == 1 else tf.logical_and(*[tf.cast(m, tf.bool) for m in masks])
