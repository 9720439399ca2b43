"""Measures training speed under named configurations and prints a table and JSON.

    python -m recipes.benchmark --configs=single-1t-trainer,workers2-trainer-spl20

Each configuration runs in its own process(es): a single process, or 2 local workers
under tfdp-launch. Examples/s is the median over `--repeats` epochs of `--steps` steps
after a first epoch that holds tracing and warm-up; "first step" is the time to the end
of the first step. Scaling ("vs 1x1") is examples/s relative to the configuration run on
1 process x 1 thread with the same loop and steps per call (the honest baseline for N
workers x 1 thread on an N-core machine). With --split (recipes/step_split.py), each
configuration also reports where a step's milliseconds go.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

from recipes import flags as recipe_flags

FLAGS = flags.FLAGS
# name -> (placement, loop, steps per call, mixed precision, all-reduce dtype of the Trainer[, local steps])
CONFIGS = {
    "single-1t-fit": ("single-1t", "fit", 1, None, "float32"),
    "single-1t-fit-spe20": ("single-1t", "fit", 20, None, "float32"),
    "single-1t-trainer": ("single-1t", "trainer", 1, None, "float32"),
    "single-1t-trainer-spl20": ("single-1t", "trainer", 20, None, "float32"),
    "single-fit": ("single", "fit", 1, None, "float32"),
    "single-fit-spe20": ("single", "fit", 20, None, "float32"),
    "single-trainer": ("single", "trainer", 1, None, "float32"),
    "single-trainer-spl20": ("single", "trainer", 20, None, "float32"),
    "single-trainer-bf16": ("single", "trainer", 20, "mixed_bfloat16", "float32"),
    "mirrored2-fit": ("mirrored2", "fit", 1, None, "float32"),
    "mirrored2-trainer": ("mirrored2", "trainer", 1, None, "float32"),
    "workers2-fit": ("workers2", "fit", 1, None, "float32"),
    "workers2-fit-spe20": ("workers2", "fit", 20, None, "float32"),
    "workers2-trainer": ("workers2", "trainer", 1, None, "float32"),
    "workers2-trainer-spl20": ("workers2", "trainer", 20, None, "float32"),
    "workers2-trainer-spl20-ar16": ("workers2", "trainer", 20, None, "bfloat16"),
    "workers2-trainer-spl20-local4": ("workers2", "trainer", 20, None, "float32", 4),
    "workers2-trainer-spl20-local8": ("workers2", "trainer", 20, None, "float32", 8),
    "workers2-trainer-spl20-local16": ("workers2", "trainer", 20, None, "float32", 16),
}
DEFAULT = ["single-1t-fit-spe20", "single-1t-trainer", "single-1t-trainer-spl20", "single-fit-spe20",
           "single-trainer-spl20", "mirrored2-trainer", "workers2-fit-spe20", "workers2-trainer-spl20",
           "workers2-trainer-spl20-ar16"]

flags.DEFINE_list("configs", DEFAULT, f"Configurations to run, from: {', '.join(CONFIGS)}.")
recipe_flags.define_enum("model", "cnn", ["cnn", "mlp"],
                         "cnn: the recipe's small CNN on 32x32x3; mlp: 3 dense layers.")
flags.adopt_module_key_flags(recipe_flags)  # --model is defined through recipes/flags.py
flags.DEFINE_integer("global_batch_size", 128, "Examples per step over all replicas and workers.", lower_bound=2)
flags.DEFINE_integer("steps", 60, "Steps per measured epoch.", lower_bound=1)
flags.DEFINE_integer("repeats", 3, "Measured epochs (the median is reported).", lower_bound=1)
flags.DEFINE_bool("split", True, "Also time the pieces of a step: compute, input wait, all-reduce, other "
                  "(recipes/step_split.py).")
flags.DEFINE_integer("split_steps", 20, "Steps per timed call of each --split loop.", lower_bound=1)
flags.DEFINE_integer("split_repeats", 5, "Timed calls of each --split loop (the median is used).", lower_bound=1)
flags.DEFINE_string("output", None, "Also write the JSON results to this file.")
flags.DEFINE_string("run", None, "Internal: run this configuration in this process and print its JSON.")


def run_here(name: str) -> dict:
    """Runs one configuration in this process (a worker, under tfdp-launch) and measures it."""
    placement, loop, steps_per_call, precision, all_reduce_dtype, *rest = CONFIGS[name]
    local_steps = rest[0] if rest else 1
    import tfdp

    strategy = tfdp.create_strategy({"mirrored2": "mirrored", "workers2": "multi_worker"}.get(placement, "default"),
                                    num_cpu_replicas=2 if placement == "mirrored2" else None)
    import keras
    import tensorflow as tf

    from recipes import models
    from recipes.datasets import load

    if precision:
        tfdp.training.set_mixed_precision(precision)
    data = load("synthetic", "").train.repeat().batch(FLAGS.global_batch_size)
    loss = keras.losses.SparseCategoricalCrossentropy()
    with strategy.scope():
        model = {"cnn": models.small_cnn, "mlp": models.small_mlp}[FLAGS.model](keras, (32, 32, 3), 8)
    epoch_seconds: list[float] = []
    start = time.perf_counter()
    if loop == "fit":
        with strategy.scope():
            model.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss, steps_per_execution=steps_per_call)
        first_step = []

        class Timer(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if not first_step:
                    first_step.append(time.perf_counter() - start)

            def on_epoch_begin(self, epoch, logs=None):
                self.began = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                epoch_seconds.append(time.perf_counter() - self.began)

        model.fit(data, epochs=FLAGS.repeats + 1, steps_per_epoch=FLAGS.steps, verbose=0, callbacks=[Timer()])
        first = first_step[0]
        rates = [FLAGS.steps * FLAGS.global_batch_size / s for s in epoch_seconds[1:]]
    else:
        trainer = tfdp.Trainer(model, optimizer=keras.optimizers.SGD(0.01), loss=loss, strategy=strategy,
                               mixed_precision=precision, steps_per_execution=steps_per_call,
                               all_reduce_dtype=all_reduce_dtype, local_steps=local_steps)
        trainer.fit(data, epochs=1, steps_per_epoch=1, verbose=0)
        first = time.perf_counter() - start
        history = trainer.fit(data, epochs=FLAGS.repeats + 1, steps_per_epoch=FLAGS.steps, verbose=0)
        rates = history.history["examples_per_sec"][1:]  # the first epoch warms up
    result = {"config": name, "examples_per_sec": statistics.median(rates), "repeats": rates,
              "first_step_seconds": first, "chief": tfdp.is_chief(strategy)}
    if FLAGS.split:
        from recipes import step_split

        step_ms = 1000 * FLAGS.global_batch_size / result["examples_per_sec"]
        result["split"] = step_split.measure(
            strategy=strategy, model=model, loss=loss, iterator=iter(strategy.experimental_distribute_dataset(data)),
            steps=-(-FLAGS.split_steps // local_steps) * local_steps,  # whole rounds of local steps
            repeats=FLAGS.split_repeats, step_ms=step_ms, all_reduce_dtype=all_reduce_dtype, local_steps=local_steps)
    return result


def baseline(name: str) -> str | None:
    """The 1 process x 1 thread configuration with the same loop, steps per call and precision."""
    _, loop, steps_per_call, precision, *_ = CONFIGS[name]
    return next((n for n, c in CONFIGS.items() if c[:4] == ("single-1t", loop, steps_per_call, precision)), None)


def _launch(name: str) -> dict:
    placement = CONFIGS[name][0]
    command = [sys.executable, "-m", "recipes.benchmark", f"--run={name}", f"--model={FLAGS.model}",
               f"--global_batch_size={FLAGS.global_batch_size}", f"--steps={FLAGS.steps}",
               f"--repeats={FLAGS.repeats}", f"--split={FLAGS.split}", f"--split_steps={FLAGS.split_steps}",
               f"--split_repeats={FLAGS.split_repeats}"]
    env = dict(os.environ)
    if placement == "single-1t":
        env.update(TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
        command = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *command]
    if placement == "workers2":
        command = [sys.executable, "-m", "tfdp.launch", "--num_workers", "2", "--job_timeout", "1800", "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    lines = [line.split("BENCHMARK ", 1)[1] for line in result.stdout.splitlines() if "BENCHMARK " in line]
    reports = [json.loads(line) for line in lines]
    chief = [r for r in reports if r["chief"]]
    if result.returncode or not chief:
        raise RuntimeError(f"{name} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return chief[0]


def main(argv):
    del argv
    if FLAGS.run:
        print("BENCHMARK " + json.dumps(run_here(FLAGS.run)), flush=True)
        return
    unknown = [c for c in FLAGS.configs if c not in CONFIGS]
    if unknown:
        raise app.UsageError(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    results = [_launch(name) for name in FLAGS.configs]
    for r in results:
        base = next((b for b in results if b["config"] == baseline(r["config"])), None)
        r["scaling_vs_1_process_1_thread"] = r["examples_per_sec"] / base["examples_per_sec"] if base else None
    pieces = ["step_ms", "compute_ms", "input_wait_ms", "all_reduce_ms", "other_ms"]
    split_header = "".join(f" {p[:-3].replace('_', ' '):>11}" for p in pieces) if FLAGS.split else ""
    print(f"{'config':28} {'examples/s':>11} {'vs 1x1':>7} {'first step s':>13}{split_header}")
    for r in results:
        scaling = f"{r['scaling_vs_1_process_1_thread']:.2f}x" if r["scaling_vs_1_process_1_thread"] else "-"
        split = "".join(f" {r['split'][p]:11.1f}" for p in pieces) if FLAGS.split else ""
        print(f"{r['config']:28} {r['examples_per_sec']:11.0f} {scaling:>7} {r['first_step_seconds']:13.1f}{split}")
    if FLAGS.split:
        print("(milliseconds per step: compute, input wait, all-reduce incl. waiting for the slowest worker, "
              "other = update + loop overhead; see recipes/step_split.py)")
    report = {"model": FLAGS.model, "global_batch_size": FLAGS.global_batch_size, "steps": FLAGS.steps,
              "repeats": FLAGS.repeats, "results": results}
    print(json.dumps(report))
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    app.run(main)
