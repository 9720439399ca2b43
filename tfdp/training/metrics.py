"""The Trainer's metrics, as `model.compile(metrics=...)` takes them: per output, named as Keras names them.

A list applies to the single output (or, for several outputs, one entry per output); a
dict maps output names to metrics. Names ("accuracy", "mae") resolve from the shapes of
the data and of the model's outputs, as compile resolves them; each replica updates its
own state, which Keras sums across replicas and workers on read. Keras's CompileMetrics
does the matching and naming, so the logs carry compile's names ("a_mae" for output a).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras

from tfdp import _compat
from tfdp._requirements import import_tensorflow
from tfdp.errors import ConfigError
from tfdp.training.losses import output_names

tf = import_tensorflow()


def data_specs(model: keras.Model, element_spec):
    """(the data's (x, y, sample_weight) specs per replica, the targets and the model's outputs as KerasTensors)."""
    specs = tf.nest.map_structure(_compat.first_replica_spec, element_spec)
    x_spec, y_spec, _ = keras.utils.unpack_x_y_sample_weight(specs)
    as_tensor = lambda s: keras.KerasTensor(s.shape, dtype=s.dtype.name)  # noqa: E731
    y_pred = model.compute_output_spec(tf.nest.map_structure(as_tensor, x_spec))
    return specs, tf.nest.map_structure(as_tensor, y_spec), y_pred


class TrainerMetrics:
    """Metrics of one Trainer; built from the first data it sees (or from the model's outputs alone).

    Args:
        metrics: what model.compile's `metrics` takes.
        model: the model, built.
        strategy: the Trainer's strategy (metric state lives in its scope).
    """

    def __init__(self, metrics, *, model: keras.Model, strategy):
        if not isinstance(metrics, (Sequence, Mapping)) or isinstance(metrics, str):
            raise ConfigError(f"Trainer(metrics={metrics!r}): give a list (or {{output name: metrics}}), as "
                              "model.compile takes it, e.g. metrics=[\"accuracy\"].")
        self.identifiers = metrics if isinstance(metrics, Mapping) else list(metrics)
        for item in (self.identifiers.values() if isinstance(metrics, Mapping) else self.identifiers):
            if isinstance(item, type):
                raise ConfigError(f"Trainer(metrics=[{item.__name__}]): a metric class, not an instance. "
                                  f"Fix: {item.__name__}().")
        self.model, self.strategy = model, strategy
        self.compiled = None

    @property
    def built(self) -> bool:
        return self.compiled is not None or not self.identifiers

    def build(self, y_true=None, y_pred=None) -> None:
        """Resolves names from the targets' and the outputs' specs (`data_specs`); without them,
        targets shaped as the outputs."""
        if self.built:
            return
        if y_pred is None:
            y_pred = y_true = self.model.compute_output_spec(self.model.inputs)
        with self.strategy.scope():
            compiled = _compat.compile_metrics_class()(self.identifiers, None,
                                                       output_names=output_names(self.model) or None)
            try:
                compiled.build(y_true, y_pred)
            except ValueError as e:
                raise ConfigError(f"Trainer(metrics={self.identifiers!r}): {e}") from None
        self.compiled = compiled

    def update_state(self, y, y_pred, sample_weight=None) -> None:
        if self.compiled is not None:
            self.compiled.update_state(y, y_pred, sample_weight=sample_weight)

    def result(self) -> dict[str, float]:
        if self.compiled is None:
            return {}
        return {name: float(value) for name, value in self.compiled.result().items()}

    def reset_state(self) -> None:
        if self.compiled is not None:
            self.compiled.reset_state()

    @property
    def variables(self) -> list:
        return [] if self.compiled is None else list(self.compiled.variables)
