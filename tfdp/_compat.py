"""Every private Keras and TensorFlow name tfdp touches, resolved when used.

A Keras or TensorFlow upgrade that renames or removes one of these breaks here, in one
place, with `MissingInternal` naming what is gone; `tfdp.keras_fixes` turns that into a
`ConfigError` naming the repair that needs it. Classes are found by the module that
defines them in the MRO of a public class, not by their (changing) names: Keras 3.16
renamed `TensorFlowTrainer` to `Trainer` and the base `Trainer` to `BaseTrainer`.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

from tfdp.errors import ConfigError

_TF_TRAINER_MODULE = "keras.src.backend.tensorflow.trainer"
_BASE_TRAINER_MODULE = "keras.src.trainers.trainer"
_TF_OPTIMIZER_MODULE = "keras.src.backend.tensorflow.optimizer"
_BASE_OPTIMIZER_MODULE = "keras.src.optimizers.base_optimizer"


class MissingInternal(ConfigError):
    """A private Keras/TensorFlow name tfdp relies on is gone or has changed shape."""


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingInternal(f"module {module} cannot be imported ({e})") from None


def _attribute(owner: Any, name: str, where: str) -> Any:
    try:
        return getattr(owner, name)
    except AttributeError:
        raise MissingInternal(f"{where}.{name} does not exist") from None


def _class_in_mro(public: type, module: str) -> type:
    for cls in public.__mro__:
        if cls.__module__ == module:
            return cls
    raise MissingInternal(f"no base class of {public.__module__}.{public.__name__} is defined in {module}")


# -- Keras classes ---------------------------------------------------------------------


def tf_trainer_class() -> type:
    """The TensorFlow backend's trainer (`TensorFlowTrainer` <= 3.15, `Trainer` in 3.16)."""
    import keras

    return _class_in_mro(keras.Model, _TF_TRAINER_MODULE)


def base_trainer_class() -> type:
    """The backend-independent trainer (`Trainer` <= 3.15, `BaseTrainer` in 3.16)."""
    import keras

    return _class_in_mro(keras.Model, _BASE_TRAINER_MODULE)


def tf_optimizer_class() -> type:
    """The TensorFlow backend's optimizer base (`TFOptimizer`)."""
    import keras

    return _class_in_mro(keras.optimizers.SGD, _TF_OPTIMIZER_MODULE)


def base_optimizer_class() -> type:
    """The backend-independent optimizer base (`BaseOptimizer`)."""
    import keras

    return _class_in_mro(keras.optimizers.SGD, _BASE_OPTIMIZER_MODULE)


def in_stateless_scope() -> bool:
    """Whether Keras records variable updates instead of applying them (a StatelessScope)."""
    module = _import("keras.src.backend.common.stateless_scope")
    return _attribute(module, "in_stateless_scope", module.__name__)()


def variable_storage(variable):
    """The tf.Variable (or distributed variable) that holds a Keras variable's value."""
    return _attribute(variable, "_value", "Variable")


def is_sharded(variable) -> bool:
    """Whether a Keras variable's storage is a tf.distribute ShardedVariable (split over ps tasks)."""
    from tensorflow.python.distribute import sharded_variable  # noqa: the class has no public name

    storage = getattr(variable, "_value", variable)
    return isinstance(storage, sharded_variable.ShardedVariable)


def tf_trainer_module():
    """keras.src.backend.tensorflow.trainer: home of `reduce_per_replica` and its helpers."""
    return _import(_TF_TRAINER_MODULE)


def tf_trainer_function(name: str):
    """A module-level function of the TensorFlow trainer module, e.g. `reduce_per_replica`."""
    return _attribute(tf_trainer_module(), name, _TF_TRAINER_MODULE)


# -- Keras model internals ---------------------------------------------------------------


def call_has_training_arg(model) -> bool:
    return _attribute(model, "_call_has_training_arg", "Model")


def compile_loss(model):
    """The compiled loss object (None when compile got no loss)."""
    return _attribute(model, "_compile_loss", "Model")


def compute_loss_private(model, **kwargs):
    """`model._compute_loss`: compute_loss with Keras's own replica scaling."""
    return _attribute(model, "_compute_loss", "Model")(**kwargs)


def aggregate_additional_loss(model, loss):
    return _attribute(model, "_aggregate_additional_loss", "Model")(loss)


def loss_tracker(model):
    return _attribute(model, "_loss_tracker", "Model")


def flatten_layers(model, *, include_self: bool = False):
    return _attribute(model, "_flatten_layers", "Model")(include_self=include_self)


# -- Keras losses ----------------------------------------------------------------------------

_LOSS_MODULE = "keras.src.losses.loss"


def loss_module():
    """keras.src.losses.loss: `reduce_weighted_values`, which every Keras Loss.__call__ reduces with."""
    module = _import(_LOSS_MODULE)
    for name in ("reduce_weighted_values", "standardize_reduction", "squeeze_or_expand_to_same_rank"):
        _attribute(module, name, _LOSS_MODULE)
    return module


def squeeze_or_expand_to_same_rank(x1, x2):
    """Keras's rank matching of a loss's values and its sample weights."""
    return _attribute(_import(_LOSS_MODULE), "squeeze_or_expand_to_same_rank", _LOSS_MODULE)(x1, x2)


def keras_mask(tensor):
    """The Keras mask a layer attached to `tensor` (None when it has none)."""
    masking = _import("keras.src.backend.common.masking")
    return _attribute(masking, "get_keras_mask", masking.__name__)(tensor)


# -- TensorFlow internals ------------------------------------------------------------------


def distribute_interim():
    """tf.__internal__.distribute.interim: holds `maybe_merge_call`, which Keras calls."""
    import tensorflow as tf

    internal = _attribute(tf, "__internal__", "tensorflow")
    return _attribute(_attribute(internal, "distribute", "tf.__internal__"), "interim",
                      "tf.__internal__.distribute")


@contextlib.contextmanager
def merge_calls_run_directly():
    """Lets Keras's `maybe_merge_call(fn, strategy, ...)` run in the cross-replica context.

    Stock TF fetches the replica context there, which is None in the cross-replica context.
    Patched for the block only (`tf.__internal__.distribute.interim.maybe_merge_call`, which
    Keras's optimizers call), restored on exit.
    """
    import tensorflow as tf

    interim = distribute_interim()
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


def bump_mirrored_collective_keys(by: int) -> None:
    """Moves MirroredStrategy's collective key base on (TF's own tests do the same)."""
    import tensorflow as tf

    base = _attribute(tf.distribute.MirroredStrategy, "_collective_key_base", "MirroredStrategy")
    tf.distribute.MirroredStrategy._collective_key_base = base + by


def global_seed() -> int | None:
    """The global seed set by tf.random.set_seed, or None."""
    context = _import("tensorflow.python.eager.context")
    return _attribute(context, "global_seed", "tensorflow.python.eager.context")()


def auto_shard_dataset(dataset, num_workers: int, index: int):
    """tf.data's own auto-shard rewrite, applied to one dataset."""
    module = _import("tensorflow.python.data.experimental.ops.distribute")
    return _attribute(module, "_AutoShardDataset", module.__name__)(dataset, num_workers, index)


def dataset_graph_def(dataset):
    """The GraphDef of a tf.data pipeline (to find its file readers)."""
    graph_pb2 = _import("tensorflow.core.framework.graph_pb2")
    graph = graph_pb2.GraphDef()
    graph.ParseFromString(_attribute(dataset, "_as_serialized_graph", "Dataset")().numpy())
    return graph


def first_replica_spec(spec):
    """The TypeSpec of the first replica's value of a PerReplicaSpec (a plain spec as it is)."""
    values = getattr(spec, "_value_specs", None)
    return values[0] if values else spec


def clip_by_global_norm(grads, clip_norm):
    """Keras's own global-norm clipping (what `global_clipnorm` does): it densifies IndexedSlices."""
    return _attribute(_import(_BASE_OPTIMIZER_MODULE), "clip_by_global_norm", _BASE_OPTIMIZER_MODULE)(
        grads, clip_norm)


def compile_metrics_class() -> type:
    """Keras's CompileMetrics: metrics per output, named and resolved as model.compile does."""
    compile_utils = _import("keras.src.trainers.compile_utils")
    return _attribute(compile_utils, "CompileMetrics", compile_utils.__name__)


# -- private attributes: read and written only here, checked at install on probe objects ------

# The private attributes tfdp reads or writes, by the kind of object that holds them. They
# are set in constructors and `build`, so a class check cannot see them: `check_attributes`
# looks at a small probe object of each kind (no name counters, no files touched).
PRIVATE_ATTRIBUTES = {
    "model": ("_distribute_strategy", "_initial_epoch"),
    "optimizer": ("_iterations", "_accumulated_gradients", "_trainable_variables", "_distribution_strategy"),
    "backup_callback": ("_current_epoch", "_last_batch_seen"),
    "optional": ("_element_spec",),
}


def _probe(kind: str):
    import keras
    import tensorflow as tf

    if kind == "model":  # the trainer classes alone: no layer, so no name is taken
        return type("TrainerProbe", (tf_trainer_class(),), {})()
    if kind == "optimizer":
        optimizer = keras.optimizers.SGD(0.1, gradient_accumulation_steps=2, name="tfdp_probe")
        optimizer.build([keras.Variable(0.0, name="tfdp_probe")])
        return optimizer
    if kind == "backup_callback":
        return keras.callbacks.BackupAndRestore(backup_dir="tfdp_probe")
    if kind == "optional":
        return tf.experimental.Optional.empty(None)
    raise ValueError(f"no probe of kind {kind!r}")


def check_attributes(kind: str, names: tuple[str, ...]) -> None:
    """Raises MissingInternal unless a fresh object of `kind` has each private attribute in `names`."""
    unknown = set(names) - set(PRIVATE_ATTRIBUTES[kind])
    if unknown:
        raise ValueError(f"{sorted(unknown)} are not listed in PRIVATE_ATTRIBUTES[{kind!r}]")
    probe = _probe(kind)
    for name in names:
        if not hasattr(probe, name):
            raise MissingInternal(f"{type(probe).__mro__[1 if kind == 'model' else 0].__qualname__}.{name} "
                                  "(an attribute) does not exist")


def distribute_strategy_of(model):
    """The strategy a Keras model was created under (`_distribute_strategy`; None: none)."""
    return _attribute(model, "_distribute_strategy", "Model")


def set_initial_epoch(model, epoch: int) -> None:
    """The epoch Keras's fit starts from, set by a restoring callback (`Trainer._initial_epoch`)."""
    _attribute(model, "_initial_epoch", "Model")
    model._initial_epoch = epoch


def optimizer_iterations(optimizer):
    """The optimizer's step-count variable itself (`_iterations`), not the public read-only view."""
    return _attribute(optimizer, "_iterations", "Optimizer")


def accumulated_gradients(optimizer) -> list:
    """The gradient accumulators of gradient_accumulation_steps, one per variable (`_accumulated_gradients`)."""
    return _attribute(optimizer, "_accumulated_gradients", "Optimizer")


def optimizer_trainable_variables(optimizer) -> list:
    """The variables the optimizer was built for (`_trainable_variables`)."""
    return _attribute(optimizer, "_trainable_variables", "Optimizer")


def bind_optimizer(optimizer, strategy) -> None:
    """Binds a Keras optimizer to `strategy` (Keras binds it to the strategy in scope when it is
    CREATED, as `TFOptimizer._distribution_strategy`; one made outside fails on its first update)."""
    _attribute(optimizer, "_distribution_strategy", "TFOptimizer")
    optimizer._distribution_strategy = strategy


def backup_position(callback) -> tuple[int, int]:
    """(epoch, last batch seen) of a BackupAndRestore callback (`_current_epoch`, `_last_batch_seen`)."""
    return (_attribute(callback, "_current_epoch", "BackupAndRestore"),
            _attribute(callback, "_last_batch_seen", "BackupAndRestore"))


def set_backup_position(callback, *, epoch: int | None = None, batch: int | None = None) -> None:
    """Moves a BackupAndRestore callback's position (what it saves next, and where fit resumes)."""
    backup_position(callback)
    if epoch is not None:
        callback._current_epoch = epoch
    if batch is not None:
        callback._last_batch_seen = batch


def optional_spec(optional):
    """The element spec a tf.experimental.Optional holds (`_element_spec`)."""
    return _attribute(optional, "_element_spec", "Optional")


def set_optional_spec(optional, spec) -> None:
    """Sets an Optional's element spec once it is known (Keras's own trick in its step loop)."""
    optional_spec(optional)
    optional._element_spec = spec


@contextlib.contextmanager
def partial_batch_handling_off(strategy):
    """Datasets distributed inside skip tf.distribute's per-step cross-worker end-of-data vote.

    TensorFlow reads `extended.enable_partial_batch_handling` (older releases:
    `experimental_enable_get_next_as_optional`) when a distributed dataset is built.
    """
    extended = strategy.extended
    names = [n for n in ("enable_partial_batch_handling", "experimental_enable_get_next_as_optional")
             if hasattr(extended, n)]
    if not names:
        raise MissingInternal("tf.distribute: the strategy has no partial-batch-handling switch "
                              "(enable_partial_batch_handling).")
    saved = {n: getattr(extended, n) for n in names}
    for n in names:
        setattr(extended, n, False)
    try:
        yield
    finally:
        for n, value in saved.items():
            setattr(extended, n, value)
