"""Reading a scheduler's environment variables (SLURM, Kubernetes): present, and whole numbers.

One way for every cluster environment to say which variable is missing or malformed
and how to fix it. No TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping

from tfdp.errors import ConfigError

DEFAULT_PORT = 12345  # the port of a cluster's tasks when the scheduler's environment names none


def required(env: Mapping[str, str], name: str, *, why: str, fix: str) -> str:
    """The stripped value of `name`; a ConfigError saying `why` it is needed and the `fix` when unset."""
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set: {why}. Fix: {fix}")
    return value


def whole_number(env: Mapping[str, str], name: str, *, why: str, fix: str, low: int,
                 high: int | None = None) -> int:
    """The value of `name` as a whole number in low..high; a ConfigError naming it otherwise."""
    value = required(env, name, why=why, fix=fix)
    if not value.isdigit() or int(value) < low or (high is not None and int(value) > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name}={value!r}: {why} must be a whole number {bound}. Fix: {fix}")
    return int(value)
