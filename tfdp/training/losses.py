"""The Trainer's loss, as `model.compile` takes it, reduced to (SUM, COUNT) terms.

`loss` is what compile accepts: one loss for every output, a dict by output name or a
list in output order; `loss_weights` likewise. Each output's loss is reduced as Keras
reduces it (`tfdp.loss_reduction`), but kept as a SUM and the COUNT one device would
divide it by, so that the Trainer can divide by the GLOBAL count after the all-reduce:

- "examples": outputs divided by the number of examples (no mask; a per-step output
  without a mask counts its steps per example, as Keras's mean over all values does),
  plus `model.losses` once per example;
- one term per output whose count depends on the data: under a mask (valid tokens) or
  "mean_with_sample_weight" with weights;
- "sum": outputs with reduction "sum", never divided.

One device's loss is SUM over the terms of SUM / COUNT; N replicas, N workers and K
accumulated micro-batches add their SUMs and COUNTs before dividing, so they equal one
device at the same global batch. Most models have one term; each further term costs
one more backward pass (its gradient is kept apart until its count is known).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import keras

from tfdp import loss_reduction
from tfdp._requirements import import_tensorflow
from tfdp.errors import ConfigError

tf = import_tensorflow()

EXAMPLES, SUM = "examples", "sum"


def _loss_object(loss, field: str):
    where = f"Trainer({field}={loss!r})"
    if isinstance(loss, str):
        try:
            return keras.losses.get(loss)
        except ValueError:
            raise ConfigError(f"{where}: not a Keras loss name, such as \"mse\" or "
                              "\"sparse_categorical_crossentropy\".") from None
    if isinstance(loss, keras.losses.Loss) or callable(loss):
        if loss_reduction_of(loss) not in loss_reduction.REDUCTIONS:
            raise ConfigError(f"{where}: reduction={loss_reduction_of(loss)!r} gives no training loss. Fix: one of "
                              f"{', '.join(loss_reduction.REDUCTIONS)}.")
        return loss
    raise ConfigError(f"{where}: give a Keras loss name (\"mse\"), a keras.losses.Loss or "
                      "fn(y_true, y_pred) -> per-example losses.")


def loss_reduction_of(loss) -> str:
    """A Keras loss object's reduction; a plain function reduces as Keras wraps it."""
    return getattr(loss, "reduction", None) or "sum_over_batch_size"


def output_names(model: keras.Model) -> list[str]:
    names = getattr(model, "output_names", None)
    return list(names) if names else []


class CompiledLoss:
    """Per-output losses and weights, matched to the model's outputs as model.compile matches them.

    Args:
        loss: a loss for every output, {output name: loss}, or [loss per output].
        loss_weights: None, {output name: weight} or [weight per output].
        model: the model (its `output_names` name the outputs).
    """

    def __init__(self, loss, *, loss_weights=None, model: keras.Model):
        self.names = output_names(model)
        count = len(self.names) or 1
        if isinstance(loss, Mapping):
            self._check_keys("loss", loss)
            self.losses = {name: _loss_object(loss[name], f"loss[{name!r}]") for name in loss}
        elif isinstance(loss, Sequence) and not isinstance(loss, str):
            if len(loss) != count:
                raise ConfigError(f"Trainer(loss=[{len(loss)} losses]): the model has {count} output(s) "
                                  f"({', '.join(self.names)}). Fix: one loss per output, or a dict by name.")
            self.losses = {i: _loss_object(item, f"loss[{i}]") for i, item in enumerate(loss)}
        else:
            self.losses = {None: _loss_object(loss, "loss")}  # every output
        if isinstance(loss_weights, Mapping):
            self._check_keys("loss_weights", loss_weights)
        elif isinstance(loss_weights, Sequence) and not isinstance(loss_weights, str):
            if len(loss_weights) != count:
                raise ConfigError(f"Trainer(loss_weights=[{len(loss_weights)} weights]): the model has {count} "
                                  f"output(s) ({', '.join(self.names)}). Fix: one weight per output.")
            loss_weights = dict(enumerate(loss_weights))
        elif loss_weights is not None:
            raise ConfigError(f"Trainer(loss_weights={loss_weights!r}): give {{output name: weight}} or "
                              "[weight per output].")
        self.weights = dict(loss_weights or {})

    def _check_keys(self, field: str, given: Mapping) -> None:
        unknown = [k for k in given if k not in self.names]
        if unknown:
            raise ConfigError(f"Trainer({field}): {', '.join(map(repr, unknown))} "
                              f"{'is not an output' if len(unknown) == 1 else 'are not outputs'} of the model; its "
                              f"outputs are {', '.join(map(repr, self.names)) or 'unnamed'}. Fix: key "
                              f"{field} by output name.")

    def _outputs(self, y, y_pred, sample_weight):
        """(index, name, y_true, y_pred, sample_weight) per output that has a loss."""
        if isinstance(y_pred, Mapping):
            names = [n for n in self.names if n in y_pred] or sorted(y_pred)
            preds = [y_pred[n] for n in names]
        elif isinstance(y_pred, (list, tuple)):
            preds, names = list(y_pred), (self.names if len(self.names) == len(y_pred)
                                           else [str(i) for i in range(len(y_pred))])
        else:
            preds, names = [y_pred], (self.names[:1] or ["output"])

        def pick(structure, i, name, field):
            if isinstance(structure, Mapping):
                if name not in structure:
                    raise ConfigError(f"Trainer: the data's {field} have no entry for output {name!r} "
                                      f"(they have {', '.join(map(repr, structure))}).")
                return structure[name]
            if isinstance(structure, (list, tuple)):
                if len(structure) != len(preds):
                    raise ConfigError(f"Trainer: the data have {len(structure)} {field}, the model "
                                      f"{len(preds)} outputs ({', '.join(names)}).")
                return structure[i]
            if len(preds) > 1 and field == "targets":
                raise ConfigError(f"Trainer: the model has {len(preds)} outputs ({', '.join(names)}) and the data "
                                  "one target. Fix: targets as {output name: target}.")
            return structure

        for i, (name, pred) in enumerate(zip(names, preds)):
            loss = self.losses.get(name, self.losses.get(i, self.losses.get(None)))
            if loss is None:
                continue
            weight = self.weights.get(name, self.weights.get(i, 1.0))
            sw = None if sample_weight is None else pick(sample_weight, i, name, "sample weights")
            yield i, name, loss, weight, pick(y, i, name, "targets"), pred, sw

    def check_targets(self, element_spec, y_pred_spec) -> None:
        """ConfigError (before anything is traced) when the data's targets do not match the outputs."""
        _, y, sample_weight = keras.utils.unpack_x_y_sample_weight(element_spec)
        if y is None:
            raise ConfigError("Trainer: the data have no targets; a loss needs (x, y) batches. Fix: (x, y) or "
                              "(x, y, sample_weight) elements, or compute_loss=fn(model, batch, training).")
        for _ in self._outputs(y, y_pred_spec, sample_weight):
            pass

    def terms(self, y, y_pred, sample_weight, examples: tf.Tensor) -> dict[str, tuple[tf.Tensor, tf.Tensor | None]]:
        """{term: (SUM, COUNT or None)} of this batch (float32), as Keras would reduce it on one device."""
        terms: dict[str, tuple[tf.Tensor, tf.Tensor | None]] = {}
        for i, name, loss, weight, y_t, y_p, sw in self._outputs(y, y_pred, sample_weight):
            values, mask = loss_value(loss, y_t, y_p)
            reduction = loss_reduction_of(loss)
            total, count = loss_reduction.sum_and_count(values, sample_weight=sw, mask=mask, reduction=reduction)
            total, count = tf.cast(total, tf.float32) * weight, None if count is None else tf.cast(count, tf.float32)
            if count is None:
                add(terms, SUM, total, None)
            elif mask is None and not (reduction == "mean_with_sample_weight" and sw is not None):
                # count = examples x values per example: in examples, divided once.
                add(terms, EXAMPLES, tf.math.divide_no_nan(total * examples, count), examples)
            else:
                add(terms, f"output {i}", total, count)
        return terms


def add(terms: dict, key: str, total: tf.Tensor, count: tf.Tensor | None) -> None:
    """Adds (total, count) to term `key` (a term's count is shared, not added, within one batch)."""
    if key in terms:
        terms[key] = (terms[key][0] + total, terms[key][1])
    else:
        terms[key] = (total, count)


def loss_value(loss, y_true, y_pred):
    """(unreduced values, mask) exactly as a Keras loss computes them before reducing."""
    if isinstance(loss, keras.losses.Loss):
        convert = lambda t: keras.ops.convert_to_tensor(t, dtype=loss.dtype)  # noqa: E731
        values = loss.call(keras.tree.map_structure(convert, y_true), keras.tree.map_structure(convert, y_pred))
    else:
        values = loss(y_true, y_pred)
    return values, loss_reduction.loss_mask(y_pred, values)


def custom_terms(result, where: str = "compute_loss") -> dict[str, tuple[tf.Tensor, tf.Tensor | None]]:
    """A `compute_loss` result: per-example losses (a vector), or (SUM, COUNT) for its own normalisation."""
    if isinstance(result, (tuple, list)):
        if len(result) != 2:
            raise ConfigError(f"Trainer({where}=...): returned {len(result)} values; return per-example losses "
                              "(a vector over the batch) or (SUM, COUNT).")
        total, count = (tf.cast(tf.convert_to_tensor(v), tf.float32) for v in result)
        if total.shape.rank or count.shape.rank:
            raise ConfigError(f"Trainer({where}=...): (SUM, COUNT) must be two scalars, got shapes "
                              f"{total.shape} and {count.shape}.")
        return {where: (total, count)}
    values = tf.cast(result, tf.float32)
    if values.shape.rank == 0:
        raise ConfigError(f"Trainer({where}=...): returned a scalar; return per-example losses (a vector over the "
                          "batch), or (SUM, COUNT) for your own normalisation.")
    if values.shape.rank > 1:
        values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
    examples = tf.cast(tf.shape(values)[0], tf.float32)
    return {EXAMPLES: (tf.reduce_sum(values), examples)}


def total_loss(sums: Sequence[tf.Tensor], counts: Sequence[tf.Tensor | None]) -> tf.Tensor:
    """SUM over terms of SUM / COUNT ("sum" terms undivided)."""
    return tf.add_n([s if c is None else tf.math.divide_no_nan(s, c) for s, c in zip(sums, counts)])


def check(loss, compute_loss: Callable | None, loss_weights) -> None:
    if (loss is None) == (compute_loss is None):
        raise ConfigError("Trainer: give loss=fn(y_true, y_pred) for (x, y) data, or "
                          "compute_loss=fn(model, batch, training) for anything else; exactly one.")
    if compute_loss is not None and loss_weights is not None:
        raise ConfigError("Trainer(loss_weights=...) weighs the outputs of `loss`; with compute_loss weigh them "
                          "yourself. Fix: drop loss_weights.")
