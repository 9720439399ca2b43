"""What the Trainer's options may be: each wrong one a ConfigError naming it and the fix."""

from __future__ import annotations

import dataclasses
import inspect
import numbers
import sys
import warnings
from collections.abc import Callable, Mapping

import keras

from tfdp.errors import ConfigError, check_whole, did_you_mean
from tfdp.roles import num_workers


# tfdp's first names for what Keras already names: still accepted, with a DeprecationWarning.
RENAMED = {"grad_accum_steps": "gradient_accumulation_steps", "clip_global_norm": "global_clipnorm",
           "steps_per_loop": "steps_per_execution"}


def renamed_options(given: Mapping[str, object], *, call: str, signature_of: Callable) -> dict[str, object]:
    """The new names' values for options given under their old names (each with a DeprecationWarning).

    Raises:
        ConfigError: an option no name of `signature_of` knows, with the nearest name.
    """
    known = [name for name in inspect.signature(signature_of).parameters if name not in ("self", "old_names")]
    values = {}
    for old, value in given.items():
        if old not in RENAMED:
            raise ConfigError(f"{call}({old}=...): no such option.{did_you_mean(old, [*known, *RENAMED])} "
                              f"The options: {', '.join(known)}.")
        warnings.warn(f"{call}({old}=...) is now {RENAMED[old]}=..., Keras's name for it; the old name will go.",
                      DeprecationWarning, stacklevel=3)
        values[RENAMED[old]] = value
    return values


@dataclasses.dataclass(frozen=True)
class Counts:
    """The Trainer's whole-number options, checked (None: not given)."""

    gradient_accumulation_steps: int
    steps_per_execution: int
    save_every_steps: int | None
    summary_every_steps: int | None
    local_steps: int


def check_numbers(*, gradient_accumulation_steps, steps_per_execution, max_checkpoints, save_every_steps,
                  summary_every_steps, local_steps, model_dir, global_clipnorm) -> Counts:
    """The Trainer's numeric options: whole numbers >= 1 where they count, a positive clip norm,
    a model_dir where checkpoints are asked for. Raises ConfigError naming the option."""
    counts = Counts(
        gradient_accumulation_steps=check_whole("gradient_accumulation_steps", gradient_accumulation_steps,
                                                call="Trainer"),
        steps_per_execution=check_whole("steps_per_execution", steps_per_execution, call="Trainer"),
        save_every_steps=check_whole("save_every_steps", save_every_steps, call="Trainer", allow_none=True),
        summary_every_steps=check_whole("summary_every_steps", summary_every_steps, call="Trainer", allow_none=True),
        local_steps=check_whole("local_steps", local_steps, call="Trainer"))
    check_whole("max_checkpoints", max_checkpoints, call="Trainer")
    if counts.save_every_steps and not model_dir:
        raise ConfigError(f"Trainer(save_every_steps={save_every_steps}): checkpoints need a place. "
                          "Fix: give model_dir too.")
    if global_clipnorm is not None and not (isinstance(global_clipnorm, numbers.Real) and global_clipnorm > 0):
        raise ConfigError(f"Trainer(global_clipnorm={global_clipnorm!r}): must be > 0, or None.")
    return counts


def check_optimizer(optimizer) -> None:
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ConfigError('Trainer(optimizer=LossScaleOptimizer(...)): the Trainer scales the loss itself. '
                          'Fix: pass the inner optimizer and mixed_precision="mixed_float16".')
    if optimizer.gradient_accumulation_steps:
        raise ConfigError(f"Trainer(optimizer=...(gradient_accumulation_steps="
                          f"{optimizer.gradient_accumulation_steps})): the Trainer accumulates with one "
                          "all-reduce per update. Fix: pass gradient_accumulation_steps="
                          f"{optimizer.gradient_accumulation_steps} to the Trainer instead.")


def verbosity(verbose) -> int:
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    if verbose in (0, 1, 2) and not isinstance(verbose, bool):
        return int(verbose)
    raise ConfigError(f'verbose={verbose!r}: use "auto", 0 (silent), 1 (progress bar) or 2 (one line per epoch).')


def check_local_steps(local_steps: int, *, outer_optimizer, strategy, mixed_precision, all_reduce_dtype,
                       save_every_steps) -> None:
    if local_steps == 1:
        if outer_optimizer is not None:
            raise ConfigError("Trainer(outer_optimizer=...): the outer optimizer acts on the average of local steps. "
                              "Fix: give local_steps > 1 too, or drop outer_optimizer.")
        return
    replicas_here = strategy.num_replicas_in_sync // num_workers(strategy)
    if mixed_precision == "mixed_float16" and replicas_here > 1:
        raise ConfigError(f"Trainer(local_steps={local_steps}, mixed_precision=\"mixed_float16\"): each replica keeps "
                          f"its own loss scale between averages, which needs one replica per process; this one "
                          f"has {replicas_here}. Fix: one worker per device (multi_worker), or mixed_bfloat16.")
    if all_reduce_dtype != "float32":
        raise ConfigError(f"Trainer(local_steps={local_steps}, all_reduce_dtype={all_reduce_dtype!r}): local steps "
                          "all-reduce weights, not gradients, and always in float32. Fix: drop all_reduce_dtype.")
    if save_every_steps and save_every_steps % local_steps:
        raise ConfigError(f"Trainer(save_every_steps={save_every_steps}, local_steps={local_steps}): a checkpoint "
                          "must land where every replica holds the average. Fix: a save_every_steps that is a "
                          "multiple of local_steps.")
