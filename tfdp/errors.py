"""The one error type tfdp raises for bad user input."""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and the fix."""


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """Returns ' Did you mean "x"?' for the nearest choice, or '' when none is close."""
    matches = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    return f' Did you mean "{matches[0]}"?' if matches else ""


def check_choice(field: str, value: object, choices: Iterable[str]) -> str:
    """Returns `value` if it is one of `choices`, else raises ConfigError naming them."""
    choices = tuple(choices)
    if isinstance(value, str) and value in choices:
        return value
    raise ConfigError(
        f"{field}: {value!r} is not one of {', '.join(map(repr, choices))}."
        f"{did_you_mean(value, choices)}"
    )


def check_whole(field: str, value: object, *, call: str | None = None, minimum: int = 1,
                allow_none: bool = False, meaning: str = "") -> int | None:
    """Returns `value` as an int >= minimum (or None when allowed), else raises ConfigError.

    The message names `call(field=value)` (or `field=value` without a call) and the rule,
    followed by `meaning` when given (what the number counts, what None means).
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        where = f"{call}({field}={value!r})" if call else f"{field}={value!r}"
        rule = f"must be a whole number >= {minimum}{', or None' if allow_none else ''}"
        raise ConfigError(f"{where}: {rule}{f' ({meaning})' if meaning else ''}.")
    return int(value)
