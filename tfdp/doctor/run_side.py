"""Both sides of a doctor comparison, one after the other in a process of their own.

    python -m tfdp.doctor.run_side --model M:F --data M:F --replicas N --out DIR ...

The process splits its CPU into N logical devices before TensorFlow starts. The
one-device side is plain Keras (no tfdp strategy, tfdp's repairs not yet installed: it
runs on the first CPU device): it builds the model, writes its initial weights, probes
which layers draw random numbers in training, trains and writes the final weights. Then
Keras's global state is cleared (the layers get the same names again) and the replicas
side builds the same model inside a tfdp "mirrored" strategy of the N CPU replicas,
loads those initial weights and trains on the same batches. One process instead of one
per side: TensorFlow starts once.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import json
import os
import sys
from typing import Any, Callable

import numpy as np

from tfdp.errors import ConfigError

SEED = 1234  # both sides: layers with a SeedGenerator start from the same seed
INITIAL, FINAL, SUMMARY = "initial.npz", "{side}.npz", "{side}.json"


def load_function(spec: str, field: str) -> Callable[[], Any]:
    """`module:function` -> the function (the current directory is importable)."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ConfigError(f"{field} {spec!r}: write it as MODULE:FUNCTION, e.g. {field} my_models:build")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{field} {spec!r}: module {module_name!r} cannot be imported ({e}). Fix: run from the "
                          "directory that holds it, or put it on PYTHONPATH") from None
    function = module
    for part in name.split("."):
        function = getattr(function, part, None)
        if function is None:
            raise ConfigError(f"{field} {spec!r}: {module_name} has no {name!r}")
    if not callable(function):
        raise ConfigError(f"{field} {spec!r}: {name} is not a function")
    return function


def _build_model(model_fn, keras) -> Any:
    model = model_fn()
    if not isinstance(model, keras.Model):
        raise ConfigError(f"--model: the function returned a {type(model).__name__}, not a keras.Model. Fix: "
                          "return a compiled model")
    if not model.compiled:
        raise ConfigError("--model: the model is not compiled. Fix: call model.compile(optimizer=..., loss=...) "
                          "in the function")
    return model


def _dataset(data_fn, tf) -> Any:
    data = data_fn()
    if isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, (tuple, list)) and 1 <= len(data) <= 3:
        return tf.data.Dataset.from_tensor_slices(tuple(data))
    raise ConfigError(f"--data: the function returned a {type(data).__name__}. Fix: return an unbatched "
                      "tf.data.Dataset of (x, y) or arrays (x, y)")


def _without_training(call):
    """`call` with training forced off: what --no_training_randomness does to a random layer."""
    @functools.wraps(call)
    def wrapper(*args, **kwargs):
        kwargs["training"] = False
        return call(*args, **kwargs)

    return wrapper


def _takes_training(layer) -> bool:
    return "training" in inspect.signature(layer.call).parameters


def _layers(model) -> list:
    from tfdp import _compat

    return [layer for layer in _compat.flatten_layers(model) if layer is not model]


def random_layers(model, batch_x, tf, keras) -> list[dict[str, Any]]:
    """The layers whose training-mode output differs between two calls on the same input."""
    found = []
    for layer in model.layers:
        try:
            layer_input = keras.Model(model.inputs, layer.input)(batch_x, training=False)
        except Exception:  # noqa: BLE001 -- a subclassed model has no symbolic inputs per layer
            layer_input = None
        if layer_input is None:
            continue
        kwargs = {"training": True} if _takes_training(layer) else {}
        first, second = layer(layer_input, **kwargs), layer(layer_input, **kwargs)
        differs = any(not np.array_equal(np.asarray(a), np.asarray(b))
                      for a, b in zip(tf.nest.flatten(first), tf.nest.flatten(second)))
        if differs:
            found.append({"name": layer.name, "class": type(layer).__name__,
                          "keras_random_layer": hasattr(layer, "seed_generator")
                          and type(layer).__module__.startswith("keras."),
                          "can_turn_off": _takes_training(layer)})
    if not found:
        outputs = [model(batch_x, training=True) for _ in range(2)]
        if any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(tf.nest.flatten(outputs[0]), tf.nest.flatten(outputs[1]))):
            found.append({"name": model.name, "class": type(model).__name__, "keras_random_layer": False,
                          "can_turn_off": False})
    return found


def _model_facts(model, keras) -> dict[str, Any]:
    from tfdp import _compat

    layers = _layers(model)
    return {
        "unsynchronized_batch_norm": [layer.name for layer in layers
                                      if isinstance(layer, keras.layers.BatchNormalization)
                                      and not layer.synchronized],
        "custom_train_step": type(model).train_step is not _compat.tf_trainer_class().train_step,
        "variables": [v.path for v in model.weights],
    }


def _train_side(side: str, args: argparse.Namespace, model_fn, data_fn, strategy, probed: list | None,
                tf, keras) -> dict[str, Any]:
    """Builds, trains and saves one side; its summary. "one" probes the random layers and writes the
    initial weights; "replicas" loads those and takes `probed`, the random layers "one" found."""
    keras.utils.set_random_seed(SEED)
    dataset = _dataset(data_fn, tf).batch(args.global_batch_size).repeat()
    batch_x = next(iter(dataset))[0]
    if strategy is None:
        model = _build_model(model_fn, keras)
    else:
        with strategy.scope():
            model = _build_model(model_fn, keras)
    if not model.built or not model.weights:
        model(batch_x)  # a subclassed model makes its weights on its first call
    summary: dict[str, Any] = {"side": side, "replicas": args.replicas if strategy else 1}
    if side == "one":
        summary.update(_model_facts(model, keras))
        summary["random_layers"] = probed = random_layers(model, batch_x, tf, keras)
        np.savez(os.path.join(args.out, INITIAL), *[v.numpy() for v in model.weights])
    else:
        with np.load(os.path.join(args.out, INITIAL)) as initial:
            model.set_weights([initial[f"arr_{i}"] for i in range(len(initial.files))])
    if args.no_training_randomness:
        random_off = {entry["name"] for entry in probed if entry["can_turn_off"]}
        for layer in _layers(model):
            if layer.name in random_off:
                layer.call = _without_training(layer.call)
    keras.utils.set_random_seed(SEED)
    history = model.fit(dataset, epochs=1, steps_per_epoch=args.steps, verbose=0, shuffle=False)
    summary["metrics"] = {name: float(values[-1]) for name, values in history.history.items()}
    np.savez(os.path.join(args.out, FINAL.format(side=side)), *[v.numpy() for v in model.weights])
    with open(os.path.join(args.out, SUMMARY.format(side=side)), "w") as f:
        json.dump(summary, f)
    return summary


def run(args: argparse.Namespace) -> None:
    import tfdp
    from tfdp.strategy import configure_cpu_replicas

    configure_cpu_replicas(args.replicas)  # before TensorFlow starts; the one-device side uses the first
    import keras
    import tensorflow as tf

    model_fn, data_fn = load_function(args.model, "--model"), load_function(args.data, "--data")
    one = _train_side("one", args, model_fn, data_fn, None, None, tf, keras)
    keras.backend.clear_session()  # the replicas' layers are named as the one device's
    strategy = tfdp.create_strategy("mirrored", num_cpu_replicas=args.replicas)
    _train_side("replicas", args, model_fn, data_fn, strategy, one["random_layers"], tf, keras)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfdp.doctor.run_side")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--replicas", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--global_batch_size", type=int, required=True)
    parser.add_argument("--no_training_randomness", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        run(args)
    except ConfigError as e:
        with open(os.path.join(args.out, "error.txt"), "w") as f:
            f.write(str(e))
        print(f"tfdp doctor: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
