"""Command-line defaults from TFDP_* environment variables, read one way for every command.

torchrun's convention: each flag's default comes from an environment variable, and a
value there is checked as the flag would be. A malformed value is a ConfigError naming
the variable (the commands turn it into a usage error, exit 2), never a traceback and
never silently ignored. No TensorFlow is imported here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from tfdp.errors import ConfigError, did_you_mean

T = TypeVar("T")

_KIND_WORDS = {int: "a whole number", float: "a number"}


def env_default(name: str, default: T, *, kind: Callable[[str], T] = str, choices: Sequence[str] | None = None,
                environ: Mapping[str, str] | None = None) -> T:
    """The value of environment variable `name` as `kind`, or `default` when it is unset or empty.

    Args:
        name: the variable, e.g. "TFDP_NUM_WORKERS".
        default: what an unset (or empty) variable means.
        kind: converts the text (int, float or str).
        choices: the values allowed, for a flag with choices.
        environ: the environment to read (default: os.environ).

    Raises:
        ConfigError: the value does not convert, is not finite, or is not one of `choices`.
    """
    value = (os.environ if environ is None else environ).get(name)
    if value is None or not value.strip():
        return default
    value = value.strip()
    try:
        converted = kind(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not {_KIND_WORDS.get(kind, 'valid')}. "
                          "Fix: correct it or unset it.") from None
    if isinstance(converted, float) and not math.isfinite(converted):
        raise ConfigError(f"environment variable {name}={value!r} is not a finite number. Fix: correct it or "
                          "unset it.")
    if choices is not None and converted not in choices:
        raise ConfigError(f"environment variable {name}={value!r} is not one of {', '.join(choices)}."
                          f"{did_you_mean(value, choices)} Fix: correct it or unset it.")
    return converted
