"""Trains a small CNN on images with model.fit or tfdp.Trainer under a tfdp strategy.

    python -m recipes.image_classification --strategy=mirrored --num_cpu_replicas=2 --loop=fit|custom

Writes `model_dir/results.json` with eval accuracy and loss, the last epoch's train
metrics, the per-epoch history, time to --target_accuracy, wall time, time to the first
step, examples/s (defined in the file), the versions and the resolved configuration; and
TensorBoard logs (train and validation curves) and checkpoints in model_dir. A run
resumes from model_dir's checkpoint and says so; a model_dir whose run finished is left
as it is.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

from recipes import run_record  # first: its clock starts before TensorFlow is imported
from recipes import console, datasets, models, run_dir
from recipes import flags as recipe_flags
from tfdp import roles

FLAGS = flags.FLAGS
recipe_flags.define_strategy_flags()
recipe_flags.define_training_flags(global_batch_size=64, epochs=10, learning_rate=0.003)
recipe_flags.define_enum("dataset", "digits", datasets.NAMES,
                         "digits: the UCI digits the recipes ship, written once as a local TFDS dataset (no download); "
                         "synthetic: random images for benchmarks; mnist/fashion_mnist/cifar10: TFDS data "
                         "already prepared under --data_dir.")
flags.DEFINE_string("data_dir", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"),
                    "Where the local dataset is written once and read from.")
flags.DEFINE_float("target_accuracy", 0.95, "results.json records the training time until the test accuracy "
                   "first reaches this (evaluated after every epoch).", lower_bound=0.0, upper_bound=1.0)
flags.adopt_module_key_flags(recipe_flags)  # --help lists the flags defined in recipes/flags.py too


def time_to_accuracy(history: list) -> dict:
    """When the test accuracy first reached --target_accuracy (None: never)."""
    reached = next((h for h in history if h.get("val_accuracy", 0.0) >= FLAGS.target_accuracy), None)
    return {"target": FLAGS.target_accuracy, "epoch": reached and reached["epoch"],
            "seconds": reached and reached["seconds"]}


def compile_for_fit(keras, model, learning_rate):
    optimizer = keras.optimizers.Adam(learning_rate, global_clipnorm=FLAGS.global_clipnorm,
                                      gradient_accumulation_steps=FLAGS.gradient_accumulation_steps
                                      if FLAGS.gradient_accumulation_steps > 1 else None)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=FLAGS.steps_per_execution)


def train_with_fit(keras, model, train, test, clock, model_dir):
    tensorboard = keras.callbacks.TensorBoard(os.path.join(model_dir, "logs"),  # the chief's only
                                              update_freq=FLAGS.summary_every_steps)
    backup = keras.callbacks.BackupAndRestore(os.path.join(model_dir, "backup"))  # resume; SIGTERM saves
    history = model.fit(train, epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch, verbose=2,
                        validation_data=test, callbacks=[backup, tensorboard, clock],
                        shuffle=False)  # the dataset shuffles itself
    eval_loss, eval_accuracy = model.evaluate(test, verbose=0)
    return {k: float(v[-1]) for k, v in history.history.items()}, {"accuracy": eval_accuracy, "loss": eval_loss}


def train_with_trainer(trainer, train, test, clock, steps_per_epoch):
    history = trainer.fit(train, epochs=FLAGS.epochs, steps_per_epoch=steps_per_epoch, validation_data=test,
                          callbacks=[clock])
    evaluation = trainer.evaluate(test, verbose=0)
    trainer.close()
    return {k: v[-1] for k, v in history.history.items() if k != "examples_per_sec"}, evaluation


def make_trainer(keras, tfdp, strategy, model, learning_rate, model_dir):
    return tfdp.Trainer(model, optimizer=keras.optimizers.Adam(learning_rate),
                        loss="sparse_categorical_crossentropy",
                        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")], strategy=strategy,
                        mixed_precision=FLAGS.mixed_precision, gradient_accumulation_steps=FLAGS.gradient_accumulation_steps,
                        global_clipnorm=FLAGS.global_clipnorm, steps_per_execution=FLAGS.steps_per_execution,
                        model_dir=model_dir, local_steps=FLAGS.local_steps,
                        outer_optimizer=recipe_flags.outer_optimizer_from_flags(keras),
                        summary_every_steps=FLAGS.summary_every_steps, max_staleness=FLAGS.max_staleness)


def finished_on_any_worker(tfdp, strategy, finished: bool) -> bool:
    """Whether any worker found a finished run in model_dir (all workers then stop alike)."""
    import tensorflow as tf

    if tfdp.strategy.num_workers(strategy) == 1 or roles.loop_on_chief_only(strategy):  # one process decides
        return finished
    mine = strategy.experimental_distribute_values_from_function(lambda _: tf.constant(float(finished)))
    return bool(strategy.reduce("SUM", mine, axis=None).numpy() > 0)


def main(argv):
    del argv
    console.quiet_libraries()
    import tfdp

    try:
        strategy = recipe_flags.create_strategy_from_flags()
    except tfdp.ConfigError as e:
        raise app.UsageError(str(e)) from None
    import keras

    chief = tfdp.is_chief(strategy)
    model_dir = run_dir.resolve(FLAGS.model_dir)
    if finished_on_any_worker(tfdp, strategy, run_dir.finished(model_dir)):
        if chief:
            print(f"model_dir {model_dir} holds a finished run ({run_dir.RESULTS}); nothing to train. Give another "
                  "--model_dir (or none: every run gets its own) to train again.")
        return
    if chief:
        print(f"model_dir {model_dir}", flush=True)
    batch = FLAGS.global_batch_size
    try:
        per_replica = tfdp.data.per_replica_batch_size(batch, strategy)
    except tfdp.ConfigError as e:
        raise app.UsageError(f"--global_batch_size: {e}") from None
    if FLAGS.mixed_precision:
        tfdp.training.set_mixed_precision(FLAGS.mixed_precision)
    try:
        data = datasets.load(FLAGS.dataset, FLAGS.data_dir)
    except FileNotFoundError as e:
        raise app.UsageError(str(e)) from None
    batches_per_epoch = FLAGS.steps_per_epoch and FLAGS.steps_per_epoch * FLAGS.gradient_accumulation_steps \
        or -(-data.num_train // batch)
    steps_per_epoch = batches_per_epoch // FLAGS.gradient_accumulation_steps
    learning_rate, peak = recipe_flags.learning_rate_from_flags(keras, steps_per_epoch=steps_per_epoch)
    asynchronous = roles.loop_on_chief_only(strategy)
    cluster = tfdp.cluster.TFConfig.from_env().cluster if asynchronous else {}
    plan = {"strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
            "workers": len(cluster["worker"]) if asynchronous else tfdp.strategy.num_workers(strategy),
            "ps": len(cluster.get("ps", ())), "max_staleness": FLAGS.max_staleness, "global_batch_size": batch,
            "per_replica_batch_size": per_replica, "loop": FLAGS.loop, "epochs": FLAGS.epochs,
            "dataset": FLAGS.dataset, "learning_rate": peak, "lr_scaling": FLAGS.lr_scaling,
            "warmup_epochs": FLAGS.warmup_epochs, "mixed_precision": FLAGS.mixed_precision,
            "gradient_accumulation_steps": FLAGS.gradient_accumulation_steps, "global_clipnorm": FLAGS.global_clipnorm,
            "steps_per_execution": FLAGS.steps_per_execution, "local_steps": FLAGS.local_steps,
            "outer_learning_rate": FLAGS.outer_learning_rate, "outer_momentum": FLAGS.outer_momentum,
            "target_accuracy": FLAGS.target_accuracy, "model_dir": model_dir,
            "train_examples": data.num_train}
    if FLAGS.dry_run:
        print(json.dumps(plan, indent=2))
        return
    if FLAGS.loop == "fit":
        train = data.train.shuffle(data.num_train, seed=0).batch(batch)
        test = data.test.batch(batch)
    elif asynchronous:  # each worker reads its own copy, in its own order; the chief evaluates
        train = data.train.shuffle(data.num_train).repeat().batch(batch)
        test = data.test.batch(batch)
    else:  # tfdp's exactly-once sharding, batched per replica
        train = tfdp.data.distribute(strategy, data.train, global_batch_size=batch, shuffle_buffer=data.num_train,
                                     shuffle_seed=0)
        test = tfdp.data.distribute(strategy, data.test, global_batch_size=batch)
    with strategy.scope():
        model = models.small_cnn(keras, data.image_shape, data.num_classes)
        if FLAGS.loop == "fit":
            compile_for_fit(keras, model, learning_rate)
    trainer = None if FLAGS.loop == "fit" else make_trainer(keras, tfdp, strategy, model, learning_rate, model_dir)
    optimizer = model.optimizer if trainer is None else trainer.optimizer
    record = run_record.RunRecord()
    epoch_examples = data.num_train if not FLAGS.steps_per_epoch else batches_per_epoch * batch
    clock = run_record.clock(keras, record, updates=lambda: int(optimizer.iterations.numpy()),
                             batches_per_update=FLAGS.gradient_accumulation_steps, batches_per_epoch=batches_per_epoch,
                             epoch_examples=epoch_examples, global_batch_size=batch)
    if trainer is None:
        train_logs, evaluation = train_with_fit(keras, model, train, test, clock, model_dir)
    else:
        train_logs, evaluation = train_with_trainer(  # asynchronous: an epoch is a number of steps, not a pass
            trainer, train, test, clock, steps_per_epoch if asynchronous else FLAGS.steps_per_epoch)
    if not record.examples and chief:  # resumed from a save after the last epoch, before results.json
        print("training had already finished in model_dir (resumed at its end): evaluated only")
    results = {
        "eval": {k: float(v) for k, v in evaluation.items()},
        "train": train_logs or None,
        "examples_per_sec": record.examples_per_sec(),
        "examples_per_sec_definition": run_record.EXAMPLES_PER_SEC_DEFINITION,
        "train_examples_this_run": record.examples,
        "train_seconds": record.train_seconds,
        "wall_seconds": time.perf_counter() - run_record.PROGRAM_START,
        "time_to_first_step_seconds": record.first_step_seconds,
        "history": record.history,
        "time_to_accuracy": time_to_accuracy(record.history),
        "versions": run_record.versions(),
        "config": plan,
    }
    if chief:
        os.makedirs(model_dir, exist_ok=True)
        path = os.path.join(model_dir, run_dir.RESULTS)
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=2)
        os.replace(path + ".tmp", path)  # whole or absent: it marks the run finished
        speed = f"{results['examples_per_sec']:.0f} examples/s" if results["examples_per_sec"] else "nothing trained"
        print(f"eval accuracy {results['eval']['accuracy']:.4f}, loss {results['eval']['loss']:.4f}; "
              f"{speed}; results in {path}")


if __name__ == "__main__":
    app.run(main)
