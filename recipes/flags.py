"""absl flags shared by every recipe, defined once, with their cross-flag checks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from absl import flags

import tfdp
from tfdp.errors import did_you_mean
from tfdp.strategy_names import COMMUNICATIONS, STRATEGY_NAMES

if TYPE_CHECKING:
    import tensorflow as tf

FLAGS = flags.FLAGS


class _EnumParser(flags.EnumParser):
    """absl's enum parser, whose error also suggests the nearest value."""

    def parse(self, argument):
        try:
            return super().parse(argument)
        except ValueError as e:
            raise ValueError(f"{e}.{did_you_mean(argument, self.enum_values)}") from None


def define_enum(name: str, default: str | None, choices, help: str) -> None:  # noqa: A002 -- absl's word
    """flags.DEFINE_enum, with a did-you-mean for a misspelled value."""
    flags.DEFINE_enum(name, default, choices, help)
    FLAGS[name].parser = _EnumParser(list(choices))


def define_strategy_flags() -> None:
    """Flags that choose how the job is distributed."""
    define_enum("strategy", "auto", STRATEGY_NAMES, "tfdp.create_strategy name.")
    flags.DEFINE_integer("num_cpu_replicas", None, "Split the CPU into this many replicas.", lower_bound=1)
    define_enum("communication", "auto", COMMUNICATIONS, "All-reduce implementation.")
    flags.DEFINE_float("collective_timeout", None, "Seconds before a multi-worker collective fails.")
    flags.DEFINE_float("startup_timeout", None, "Seconds to wait for every task of TF_CONFIG to start "
                       "(default 300).")


def define_training_flags(*, global_batch_size: int, epochs: int, learning_rate: float) -> None:
    """Flags of the training loop, with the recipe's own defaults."""
    flags.DEFINE_integer("global_batch_size", global_batch_size,
                         "Examples per step across all replicas and workers.", lower_bound=1)
    flags.DEFINE_integer("epochs", epochs, "Passes over the training data.", lower_bound=1)
    flags.DEFINE_integer("steps_per_epoch", None, "Steps per epoch (default: the whole data).", lower_bound=1)
    flags.DEFINE_float("learning_rate", learning_rate, "Learning rate at the reference batch size.")
    define_enum("lr_scaling", "none", ["none", "linear"],
                      "linear: learning_rate x global_batch_size / reference_batch_size (Goyal et al.).")
    flags.DEFINE_integer("reference_batch_size", global_batch_size, "The batch --learning_rate is tuned for.",
                         lower_bound=1)
    flags.DEFINE_float("warmup_epochs", 0.0, "Ramp the learning rate up linearly over this many epochs.",
                       lower_bound=0.0)
    flags.DEFINE_string("model_dir", None, "Where results.json, checkpoints and TensorBoard logs go. Default: "
                        "/tmp/tfdp_runs/<job id>: the job of tfdp-launch (kept across its restarts, so a "
                        "restarted job resumes), of SLURM or Kubernetes, or of TF_CONFIG's cluster; outside "
                        "a job a new directory per run. A model_dir holding a finished run is left as it is.")
    flags.DEFINE_integer("summary_every_steps", 10, "TensorBoard: training scalars every this many steps "
                         "(besides the per-epoch train and validation curves).", lower_bound=1)
    flags.DEFINE_bool("dry_run", False, "Print the resolved plan and exit.")
    define_enum("loop", "fit", ["fit", "custom"], "model.fit, or tfdp.Trainer's custom loop.")
    define_enum("mixed_precision", None, ["mixed_float16", "mixed_bfloat16"], "Mixed precision policy.")
    flags.DEFINE_integer("gradient_accumulation_steps", 1, "Micro-batches per optimizer step.", lower_bound=1)
    flags.DEFINE_float("global_clipnorm", None, "Clip the all-reduced gradient to this global norm.",
                       lower_bound=0.0)
    flags.DEFINE_integer("steps_per_execution", 1, "Steps per tf.function call.", lower_bound=1)
    for old, new in (("grad_accum_steps", "gradient_accumulation_steps"), ("clip_global_norm", "global_clipnorm"),
                     ("steps_per_loop", "steps_per_execution")):
        flags.DEFINE_alias(old, new)  # the first names, kept for old command lines (deprecated)
    flags.DEFINE_integer("local_steps", 1, "--loop=custom: each replica takes this many steps on its own, then "
                         "the replicas average (1: all-reduce every step).", lower_bound=1)
    flags.DEFINE_float("outer_learning_rate", 0.0, "With --local_steps > 1: learning rate of a Nesterov SGD "
                       "outer optimizer on the averaged change, as DiLoCo (0: plain averaging).", lower_bound=0.0)
    flags.DEFINE_float("outer_momentum", 0.9, "Momentum of the outer optimizer.", lower_bound=0.0)
    flags.DEFINE_integer("max_staleness", None, "--strategy=parameter_server: drop a step when more than this many "
                         "other updates began since it read the weights (default: apply every update; staleness is "
                         "measured and logged either way).", lower_bound=0)
    flags.register_multi_flags_validator(
        ["strategy", "loop"], lambda f: f["strategy"] != "parameter_server" or f["loop"] == "custom",
        message="--strategy=parameter_server needs --loop=custom: Keras 3's model.fit has no asynchronous "
                "parameter-server loop (keras-team/keras#18624); tfdp.Trainer has one.")
    flags.register_multi_flags_validator(
        ["max_staleness", "strategy"], lambda f: f["max_staleness"] is None or f["strategy"] == "parameter_server",
        message="--max_staleness bounds asynchronous updates: it needs --strategy=parameter_server.")
    flags.register_multi_flags_validator(
        ["local_steps", "loop"], lambda f: f["local_steps"] == 1 or f["loop"] == "custom",
        message="--local_steps > 1 needs --loop=custom (tfdp.Trainer); model.fit all-reduces every step.")
    flags.register_multi_flags_validator(
        ["outer_learning_rate", "local_steps"], lambda f: not f["outer_learning_rate"] or f["local_steps"] > 1,
        message="--outer_learning_rate acts on the average of local steps: give --local_steps > 1 too.")


def outer_optimizer_from_flags(keras):
    """The DiLoCo outer optimizer the flags ask for, or None."""
    if not FLAGS.outer_learning_rate:
        return None
    return keras.optimizers.SGD(FLAGS.outer_learning_rate, momentum=FLAGS.outer_momentum, nesterov=True)


def create_strategy_from_flags() -> "tf.distribute.Strategy":
    """The strategy the flags ask for (call first: it may start the TF runtime).

    create_strategy checks TF_CONFIG before TensorFlow is imported, so a malformed one
    costs a clear error at once, not after TensorFlow's start-up.
    """
    return tfdp.create_strategy(FLAGS.strategy, num_cpu_replicas=FLAGS.num_cpu_replicas,
                                communication=FLAGS.communication,
                                timeout_seconds=FLAGS.collective_timeout,
                                startup_timeout_seconds=FLAGS.startup_timeout)


def learning_rate_from_flags(keras, *, steps_per_epoch: int):
    """(learning rate or schedule, peak rate) from --learning_rate, --lr_scaling, --warmup_epochs."""
    peak = FLAGS.learning_rate
    if FLAGS.lr_scaling == "linear":
        peak *= FLAGS.global_batch_size / FLAGS.reference_batch_size
    warmup_steps = int(FLAGS.warmup_epochs * steps_per_epoch)
    if not warmup_steps:
        return peak, peak
    # Linear warmup from 0 to the peak, then constant (alpha=1: no decay).
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=1, alpha=1.0, warmup_target=peak,
                                                  warmup_steps=warmup_steps), peak
