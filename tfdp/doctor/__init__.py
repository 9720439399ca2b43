"""`tfdp doctor`: does a model train the same on N replicas as on one device?

`compare(model="my_models:build", data="my_data:load")` trains K steps on one device
(plain Keras) and on N CPU replicas (a tfdp "mirrored" strategy) from the same initial
weights on the same global batches, in a process of their own, and returns a
`Report`: the largest weight difference per layer, a verdict against a stated
tolerance, and the likely cause by name when they differ — unsynchronised
BatchNormalization, layers that draw random numbers in training (Dropout's masks differ
per replica even when seeded: expected; rerun with `training_randomness=False` to check
the rest), a custom `train_step` that does not scale its loss per replica, a global batch
that does not divide, metrics that differ. Without arguments it checks a built-in model
(`tfdp.doctor.builtin`): a proof that tfdp's repairs work on this install.

No TensorFlow is imported in the calling process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Callable

import numpy as np

from tfdp.errors import ConfigError, check_whole

BUILTIN_MODEL, BUILTIN_DATA = "tfdp.doctor.builtin:model", "tfdp.doctor.builtin:data"
DEFAULT_TOLERANCE = 1e-5
SUMMED_LOSS_BAND = 0.25  # an update ratio within 25% of N: the loss was summed over replicas
METRIC_TOLERANCE = 1e-4

__all__ = ["Report", "compare", "BUILTIN_MODEL", "BUILTIN_DATA", "DEFAULT_TOLERANCE"]


@dataclasses.dataclass
class Report:
    """What `compare` found.

    Attributes:
        equivalent: the largest weight difference is within `tolerance`.
        tolerance: max |w_replicas - w_one| / max(1, max |w_one|) allowed, per variable.
        max_difference: the largest such difference over every variable.
        layers: layer path -> its largest difference.
        causes: the likely causes of a difference, by name, each with its fix.
        notes: what else was noticed (uneven shares, metrics, random layers turned off).
        metrics: {"one": {...}, "replicas": {...}}: the last step's fit logs of each side.
        config: what was compared (model, data, replicas, steps, global batch).
    """

    equivalent: bool
    tolerance: float
    max_difference: float
    layers: dict[str, float]
    causes: list[str]
    notes: list[str]
    metrics: dict[str, dict[str, float]]
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def render(self) -> str:
        """The report as text: configuration, per-layer differences, verdict, causes."""
        c = self.config
        lines = [f"tfdp doctor: {c['model']} on {c['data']}: {c['steps']} steps at global batch "
                 f"{c['global_batch_size']}, 1 device vs {c['replicas']} CPU replicas, same initial weights",
                 "Largest weight difference per layer (relative to the weights' scale):"]
        width = max((len(name) for name in self.layers), default=0)
        for name, diff in self.layers.items():
            lines.append(f"  {name:{width}}  {diff:.2e}{'' if diff <= self.tolerance else '  DIFFERS'}")
        for side in ("one", "replicas"):
            shown = ", ".join(f"{k} {v:.6g}" for k, v in self.metrics.get(side, {}).items())
            lines.append(f"Metrics, {'1 device' if side == 'one' else str(c['replicas']) + ' replicas'}: {shown}")
        lines.append(f"Verdict: {'EQUIVALENT' if self.equivalent else 'NOT EQUIVALENT'} (largest difference "
                     f"{self.max_difference:.2e}, tolerance {self.tolerance:.0e})")
        lines += [f"Likely cause: {cause}" for cause in self.causes]
        lines += [f"Note: {note}" for note in self.notes]
        return "\n".join(lines)


def _spec(value: str | Callable[[], Any], field: str) -> str:
    """A MODULE:FUNCTION string for a string or an importable module-level function."""
    if isinstance(value, str):
        return value
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", "")
    if not callable(value) or not module or module == "__main__" or "<" in qualname:
        raise ConfigError(f"tfdp.doctor.compare({field}={value!r}): the runs happen in processes of their own, so "
                          f"{field} must be importable: a 'module:function' string or a module-level function "
                          "of an importable module (not a lambda, a closure or a function of __main__)")
    return f"{module}:{qualname}"


def _check(replicas: int, steps: int, global_batch_size: int, tolerance: float) -> None:
    for field, value in (("replicas", replicas), ("steps", steps), ("global_batch_size", global_batch_size)):
        check_whole(field, value, call="tfdp.doctor.compare")
    if replicas < 2:
        raise ConfigError(f"tfdp doctor replicas={replicas}: comparing needs at least 2 replicas")
    if global_batch_size < replicas:
        raise ConfigError(f"tfdp doctor global_batch_size={global_batch_size}: smaller than the {replicas} "
                          "replicas, so some would get no example; give at least one example per replica")
    if not tolerance > 0:
        raise ConfigError(f"tfdp doctor tolerance={tolerance!r}: must be > 0")


def _run(out: str, args: list[str], timeout_seconds: float) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])),
               TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    env.pop("TF_CONFIG", None)  # the comparison runs on this machine alone,
    env["CUDA_VISIBLE_DEVICES"] = ""  # on the CPU: one CPU device against N CPU replicas
    try:
        done = subprocess.run([sys.executable, "-m", "tfdp.doctor.run_side", "--out", out, *args], env=env, capture_output=True, text=True, timeout=timeout_seconds)  # noqa: E501
    except subprocess.TimeoutExpired:
        raise ConfigError(f"tfdp doctor: the run took longer than {timeout_seconds:g} s. Fix: fewer "
                          "--steps, a smaller model, or a larger timeout") from None
    error_file = os.path.join(out, "error.txt")
    if os.path.exists(error_file):
        raise ConfigError(open(error_file).read())
    if done.returncode != 0:
        tail = "\n".join(f"    {line}" for line in done.stderr.strip().splitlines()[-15:])
        what = "on the replicas" if os.path.exists(os.path.join(out, "one.json")) else "on one device"
        raise ConfigError(f"tfdp doctor: training {what} failed (exit code {done.returncode}); its last "
                          f"output:\n{tail}")


def _differences(out: str, variables: list[str]) -> dict[str, float]:
    """Layer path -> largest relative weight difference among its variables."""
    layers: dict[str, float] = {}
    with np.load(os.path.join(out, "one.npz")) as one, np.load(os.path.join(out, "replicas.npz")) as many:
        for i, path in enumerate(variables):
            a, b = one[f"arr_{i}"].astype(np.float64), many[f"arr_{i}"].astype(np.float64)
            diff = float(np.max(np.abs(a - b))) / max(1.0, float(np.max(np.abs(a)))) if a.size else 0.0
            layer = path.rsplit("/", 1)[0]
            layers[layer] = max(layers.get(layer, 0.0), diff)
    return layers


def _update_ratio(out: str, count: int) -> float:
    """|w_replicas - w_initial| / |w_one - w_initial| over every variable."""
    with np.load(os.path.join(out, "initial.npz")) as w0, np.load(os.path.join(out, "one.npz")) as one, \
            np.load(os.path.join(out, "replicas.npz")) as many:
        d_one = sum(float(np.sum((one[f"arr_{i}"] - w0[f"arr_{i}"]).astype(np.float64) ** 2)) for i in range(count))
        d_many = sum(float(np.sum((many[f"arr_{i}"] - w0[f"arr_{i}"]).astype(np.float64) ** 2))
                     for i in range(count))
    return float(np.sqrt(d_many / d_one)) if d_one else float("inf")


def _diagnose(facts: dict[str, Any], config: dict[str, Any], equivalent: bool, ratio: float,
              metrics: dict[str, dict[str, float]]) -> tuple[list[str], list[str]]:
    causes, notes = [], []
    n, batch = config["replicas"], config["global_batch_size"]
    if batch % n:
        notes.append(f"the global batch {batch} does not divide by {n} replicas: tf.distribute gives them "
                     f"uneven shares, which tfdp's partial_batch repair weights by their size")
    randomness_off = config["training_randomness"] is False
    for layer in facts["random_layers"]:
        if randomness_off and layer["can_turn_off"]:
            notes.append(f"layer {layer['name']!r} ({layer['class']}) draws random numbers in training; it ran "
                         "with training=False on both sides")
            continue
        if layer["keras_random_layer"]:
            cause = (f"random layer {layer['name']!r} ({layer['class']}): its masks differ per replica even when "
                     f"seeded (each replica draws for its own slice), which is expected and harmless. Rerun with "
                     f"--no_training_randomness (training_randomness=False) to check the rest")
        else:
            cause = (f"layer {layer['name']!r} ({layer['class']}) draws random numbers in training (a tf.random / "
                     f"keras.random op, seeded or not): each replica draws its own, so the replicas cannot match "
                     f"one device. If that is meant, rerun with --no_training_randomness to check the rest"
                     + ("" if layer["can_turn_off"] else "; its call takes no `training` argument, so it cannot be "
                        "turned off: make the op depend on `training`"))
        if not equivalent:
            causes.append(cause)
    if facts["unsynchronized_batch_norm"] and not equivalent:
        causes.append(f"unsynchronised BatchNormalization {', '.join(map(repr, facts['unsynchronized_batch_norm']))}: "
                      f"each replica normalises with the statistics of its own slice of the batch. Fix: "
                      f"tfdp.synchronize_batch_norm(model) before training, or "
                      f"BatchNormalization(synchronized=True)")
    summed = abs(ratio - n) <= SUMMED_LOSS_BAND * n and (facts["custom_train_step"] or not causes)
    if not equivalent and summed:
        causes.append(f"the updates on {n} replicas are {ratio:.2f}x those on one device: the loss is summed over "
                      f"the replicas instead of averaged"
                      + (". The model's custom train_step computes its loss without Keras's per-replica scaling: "
                         "use self.compute_loss(...) (or a keras.losses.Loss object), or divide the loss by "
                         "tf.distribute.get_strategy().num_replicas_in_sync" if facts["custom_train_step"] else ""))
    elif not equivalent and facts["custom_train_step"]:
        causes.append("the model overrides train_step: check that it scales its loss per replica "
                      "(self.compute_loss does) and reduces what it adds across replicas")
    for name, value in metrics.get("one", {}).items():
        other = metrics.get("replicas", {}).get(name)
        if other is not None and abs(other - value) > METRIC_TOLERANCE * max(1.0, abs(value)):
            notes.append(f"metric {name!r} differs: {value:.6g} on one device, {other:.6g} on {n} replicas")
    if not equivalent and not causes:
        causes.append("none of the known ones (BatchNormalization, randomness, loss scaling): look for a custom "
                      "layer, loss or metric that computes something over the batch (per replica under "
                      "tf.distribute), or state kept outside Keras variables")
    return causes, notes


def compare(model: str | Callable[[], Any] = BUILTIN_MODEL, data: str | Callable[[], Any] = BUILTIN_DATA, *,
            replicas: int = 2, steps: int = 5, global_batch_size: int = 9, tolerance: float = DEFAULT_TOLERANCE,
            training_randomness: bool = True, timeout_seconds: float = 600.0) -> Report:
    """Trains `steps` steps on one device and on `replicas` CPU replicas and compares.

    Args:
        model: "module:function" (or such a function) returning a compiled Keras model;
            it is called once per side, inside the strategy's scope on the replicas.
        data: "module:function" returning an unbatched tf.data.Dataset of (x, y[, w]) or
            arrays (x, y[, w]); batched to `global_batch_size` and repeated.
        replicas: CPU replicas of the second run (>= 2).
        steps: optimizer steps on each side.
        global_batch_size: examples per step, on one device and across the replicas.
        tolerance: largest relative weight difference still called equivalent.
        training_randomness: False runs the layers found to draw random numbers in
            training with training=False on both sides, to check the rest.
        timeout_seconds: bound on the run of both sides.

    Returns:
        The Report.

    Raises:
        ConfigError: bad arguments, a model/data function that cannot be imported or
            returns the wrong thing, a run that failed or took too long.
    """
    model_spec, data_spec = _spec(model, "model"), _spec(data, "data")
    _check(replicas, steps, global_batch_size, tolerance)
    config = {"model": model_spec, "data": data_spec, "replicas": replicas, "steps": steps,
              "global_batch_size": global_batch_size, "training_randomness": training_randomness}
    args = ["--model", model_spec, "--data", data_spec, "--replicas", str(replicas), "--steps", str(steps),
            "--global_batch_size", str(global_batch_size)] + ([] if training_randomness else ["--no_training_randomness"])
    with tempfile.TemporaryDirectory(prefix="tfdp-doctor-") as out:
        _run(out, args, timeout_seconds)
        facts = json.load(open(os.path.join(out, "one.json")))
        many = json.load(open(os.path.join(out, "replicas.json")))
        layers = _differences(out, facts["variables"])
        ratio = _update_ratio(out, len(facts["variables"]))
    max_difference = max(layers.values(), default=0.0)
    equivalent = max_difference <= tolerance
    metrics = {"one": facts["metrics"], "replicas": many["metrics"]}
    causes, notes = _diagnose(facts, config, equivalent, ratio, metrics)
    return Report(equivalent=equivalent, tolerance=tolerance, max_difference=max_difference, layers=layers,
                  causes=causes, notes=notes, metrics=metrics, config=config)
