"""Gradients that may be sparse: IndexedSlices (from Embedding, tf.gather) kept as they are.

Keras applies an IndexedSlices gradient with its own sparse arithmetic: an adaptive
optimizer squares each slice before the slices of one row are added (Adam's second
moment, RMSprop, Adagrad), so densifying first changes the update wherever a row
occurs twice in a batch. tfdp therefore never densifies: accumulation concatenates the
slices of the micro-batches, the all-reduce gathers every replica's slices (what one
device's larger batch would have held), scaling and casting act on the values, and the
optimizer sees what it sees on one device. It also keeps the bytes down: rows, not tables.
(Clipping by global norm densifies, after the all-reduce, because Keras's clipping does.)
"""

from __future__ import annotations

import tensorflow as tf

from tfdp import _compat


def is_sparse(g) -> bool:
    return isinstance(g, tf.IndexedSlices)


def scale(g, factor):
    """g x factor (a scalar), sparse or dense."""
    if is_sparse(g):
        return tf.IndexedSlices(g.values * tf.cast(factor, g.values.dtype), g.indices, g.dense_shape)
    return g * tf.cast(factor, g.dtype)


def cast(g, dtype):
    if is_sparse(g):
        return tf.IndexedSlices(tf.cast(g.values, dtype), g.indices, g.dense_shape)
    return tf.cast(g, dtype)


def add(a, b):
    """a + b; two IndexedSlices are concatenated (the slices of both batches)."""
    if is_sparse(a) and is_sparse(b):
        return tf.IndexedSlices(tf.concat([a.values, b.values], 0), tf.concat([a.indices, b.indices], 0),
                                a.dense_shape)
    return tf.convert_to_tensor(a) + tf.convert_to_tensor(b)


def as_gradient(g, variable):
    """A gradient from tape.gradient: None becomes zeros; IndexedSlices stay sparse."""
    if g is None:
        return tf.zeros_like(variable)
    if is_sparse(g):
        return g
    g = tf.convert_to_tensor(g)
    g.set_shape(variable.shape)  # a dense gradient has the variable's shape, known statically
    return g


def all_finite(grads) -> tf.Tensor:
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(g.values if is_sparse(g) else g)) for g in grads])


def clip_by_global_norm(grads, clip_norm):
    """Clipped as an optimizer's `global_clipnorm` clips on one device: Keras's own function.

    Its norm of an IndexedSlices is that of its slices, and its product with the scale
    densifies it (`IndexedSlices * tensor` is a dense multiply), so an adaptive optimizer
    then squares the summed rows: tfdp must do the same, not keep the slices.
    """
    return tf.autograph.experimental.do_not_convert(_compat.clip_by_global_norm)(grads, clip_norm)
