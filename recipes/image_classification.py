"""Trains a small CNN on images with model.fit or tfdp.Trainer under a tfdp strategy.

    python -m recipes.image_classification --strategy=mirrored --num_cpu_replicas=2 --loop=fit|custom

Writes `model_dir/results.json` with eval accuracy and loss, train metrics,
examples/s and the resolved configuration.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

from recipes import datasets, models
from recipes import flags as recipe_flags

FLAGS = flags.FLAGS
recipe_flags.define_strategy_flags()
recipe_flags.define_training_flags(global_batch_size=64, epochs=20, learning_rate=0.003)
flags.adopt_module_key_flags(recipe_flags)  # --help lists the strategy and training flags too
flags.DEFINE_enum("dataset", "digits", datasets.NAMES,
                  "digits: scikit-learn's digits, written once as a local TFDS dataset (no download); "
                  "synthetic: random images for benchmarks; mnist/fashion_mnist/cifar10: TFDS data "
                  "already prepared under --data_dir.")
flags.DEFINE_string("data_dir", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"),
                    "Where the local dataset is written once and read from.")
flags.DEFINE_float("target_accuracy", 0.95, "results.json records the training time until the test accuracy "
                   "first reaches this (evaluated after every epoch).", lower_bound=0.0, upper_bound=1.0)


def epoch_clock(keras, start: float, history: list):
    """A callback appending each epoch's logs and the seconds since `start` to `history`."""

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            history.append({"epoch": epoch + 1, "seconds": time.perf_counter() - start,
                            **{k: float(v) for k, v in (logs or {}).items()}})

    return EpochClock()


def time_to_accuracy(history: list) -> dict:
    """When the test accuracy first reached --target_accuracy (None: never)."""
    reached = next((h for h in history if h.get("val_accuracy", 0.0) >= FLAGS.target_accuracy), None)
    return {"target": FLAGS.target_accuracy, "epoch": reached and reached["epoch"],
            "seconds": reached and reached["seconds"]}


def compile_for_fit(keras, model, learning_rate):
    optimizer = keras.optimizers.Adam(learning_rate, global_clipnorm=FLAGS.clip_global_norm,
                                      gradient_accumulation_steps=FLAGS.grad_accum_steps
                                      if FLAGS.grad_accum_steps > 1 else None)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=FLAGS.steps_per_loop)


def train_with_fit(keras, model, train, test, clock):
    tensorboard = keras.callbacks.TensorBoard(os.path.join(FLAGS.model_dir, "logs"))  # the chief's only
    history = model.fit(train, epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch, verbose=2,
                        validation_data=test, callbacks=[tensorboard, clock])
    eval_loss, eval_accuracy = model.evaluate(test, verbose=0)
    return {k: float(v[-1]) for k, v in history.history.items()}, {"accuracy": eval_accuracy, "loss": eval_loss}


def train_with_trainer(keras, tfdp, strategy, model, train, test, learning_rate, clock):
    trainer = tfdp.Trainer(model, optimizer=keras.optimizers.Adam(learning_rate),
                           loss="sparse_categorical_crossentropy",
                           metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")], strategy=strategy,
                           mixed_precision=FLAGS.mixed_precision, grad_accum_steps=FLAGS.grad_accum_steps,
                           clip_global_norm=FLAGS.clip_global_norm, steps_per_loop=FLAGS.steps_per_loop,
                           model_dir=os.path.join(FLAGS.model_dir, "trainer"), local_steps=FLAGS.local_steps,
                           outer_optimizer=recipe_flags.outer_optimizer_from_flags(keras))
    history = trainer.fit(train, epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch, validation_data=test,
                          callbacks=[clock])
    evaluation = trainer.evaluate(test, verbose=0)
    trainer.close()
    return {k: v[-1] for k, v in history.history.items()}, evaluation


def main(argv):
    del argv
    import tfdp

    try:
        strategy = recipe_flags.create_strategy_from_flags()
    except tfdp.ConfigError as e:
        raise app.UsageError(str(e)) from None
    import keras

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
    steps_per_epoch = FLAGS.steps_per_epoch or -(-data.num_train // batch) // FLAGS.grad_accum_steps
    learning_rate, peak = recipe_flags.learning_rate_from_flags(keras, steps_per_epoch=steps_per_epoch)
    plan = {"strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
            "workers": tfdp.strategy.num_workers(strategy), "global_batch_size": batch,
            "per_replica_batch_size": per_replica, "loop": FLAGS.loop, "epochs": FLAGS.epochs,
            "dataset": FLAGS.dataset, "learning_rate": peak, "lr_scaling": FLAGS.lr_scaling,
            "warmup_epochs": FLAGS.warmup_epochs, "mixed_precision": FLAGS.mixed_precision,
            "grad_accum_steps": FLAGS.grad_accum_steps, "clip_global_norm": FLAGS.clip_global_norm,
            "steps_per_loop": FLAGS.steps_per_loop, "local_steps": FLAGS.local_steps,
            "outer_learning_rate": FLAGS.outer_learning_rate, "outer_momentum": FLAGS.outer_momentum,
            "target_accuracy": FLAGS.target_accuracy,
            "train_examples": data.num_train}
    if FLAGS.dry_run:
        print(json.dumps(plan, indent=2))
        return
    if FLAGS.loop == "fit":
        train = data.train.shuffle(data.num_train, seed=0).batch(batch)
        test = data.test.batch(batch)
    else:  # tfdp's exactly-once sharding, batched per replica
        train = tfdp.data.distribute(strategy, data.train, global_batch_size=batch, shuffle_buffer=data.num_train,
                                     shuffle_seed=0)
        test = tfdp.data.distribute(strategy, data.test, global_batch_size=batch)
    with strategy.scope():
        model = models.small_cnn(keras, data.image_shape, data.num_classes)
        if FLAGS.loop == "fit":
            compile_for_fit(keras, model, learning_rate)
    start, history = time.perf_counter(), []
    clock = epoch_clock(keras, start, history)
    if FLAGS.loop == "fit":
        train_logs, evaluation = train_with_fit(keras, model, train, test, clock)
    else:
        train_logs, evaluation = train_with_trainer(keras, tfdp, strategy, model, train, test, learning_rate, clock)
    seconds = time.perf_counter() - start
    results = {
        "eval": {k: float(v) for k, v in evaluation.items()},
        "train": train_logs,
        "examples_per_sec": data.num_train * FLAGS.epochs / seconds,
        "history": history,
        "time_to_accuracy": time_to_accuracy(history),
        "config": plan,
    }
    if tfdp.is_chief(strategy):
        os.makedirs(FLAGS.model_dir, exist_ok=True)
        with open(os.path.join(FLAGS.model_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        print(f"eval accuracy {results['eval']['accuracy']:.4f}, loss {results['eval']['loss']:.4f}; "
              f"{results['examples_per_sec']:.0f} examples/s; results in {FLAGS.model_dir}/results.json")


if __name__ == "__main__":
    app.run(main)
