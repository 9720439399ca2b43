"""What every repair module is made of: its record, method patching and shape checks."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence

import tensorflow as tf

from tfdp._compat import MissingInternal

Undo = Callable[[], None]


@dataclasses.dataclass(frozen=True)
class Fix:
    """One upstream bug and its repair.

    Attributes:
        name: short identifier, used by `install(exclude=...)`.
        upstream: link to the upstream report of this bug.
        problem: what goes wrong without the repair.
        reproduced: (first, last) Keras versions on which a test showed stock Keras wrong
            or crashing and the repair right (tests/test_keras_fixes_needed.py).
        test: the test that shows it.
        check: raises `MissingInternal` when a Keras internal the repair touches is gone
            or has another shape (called before `apply`).
        apply: installs the repair and returns a function that removes it.
        fixed_in: the first Keras release where upstream fixed the bug (the repair is
            then left out there), or None while it is open.
    """

    name: str
    upstream: str
    problem: str
    reproduced: tuple[str, str]
    test: str
    check: Callable[[], None]
    apply: Callable[[], Undo]
    fixed_in: str | None = None


def check_methods(owner: type, signatures: Mapping[str, Sequence[str]]) -> None:
    """Raises MissingInternal unless `owner` has each method with these leading parameters
    (and no further required ones)."""
    _check_callables(owner, f"{owner.__module__}.{owner.__qualname__}", signatures)


def check_functions(module, signatures: Mapping[str, Sequence[str]]) -> None:
    """The same for a module's functions."""
    _check_callables(module, module.__name__, signatures)


def _check_callables(owner, where: str, signatures: Mapping[str, Sequence[str]]) -> None:
    for name, params in signatures.items():
        method = getattr(owner, name, None)
        if not callable(method):
            raise MissingInternal(f"{where}.{name} does not exist")
        parameters = inspect.signature(method).parameters
        have = tuple(parameters)
        required_extra = [p for p in list(parameters.values())[len(params):]
                          if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if have[:len(params)] != tuple(params) or required_extra:
            raise MissingInternal(f"{where}.{name} takes ({', '.join(have)}), not ({', '.join(params)})")


def patch(owner: type, **methods: Callable) -> Undo:
    """Sets methods on a class (shadowing inherited ones); returns the undo."""
    originals = {name: owner.__dict__.get(name) for name in methods}
    for name, method in methods.items():
        setattr(owner, name, method)

    def undo() -> None:
        for name, method in originals.items():
            if method is None:
                delattr(owner, name)
            else:
                setattr(owner, name, method)

    return undo


def patch_module(module, **functions: Callable) -> Undo:
    """Replaces module-level functions; returns the undo."""
    originals = {name: getattr(module, name) for name in functions}
    for name, function in functions.items():
        setattr(module, name, function)
    return lambda: [setattr(module, name, function) for name, function in originals.items()]


def replicas_in_sync() -> int:
    """Replicas of the strategy in scope (1 outside any)."""
    return tf.distribute.get_strategy().num_replicas_in_sync if tf.distribute.has_strategy() else 1


def in_replica_context_of_several() -> bool:
    """True inside `strategy.run` of a strategy with more than one replica."""
    return replicas_in_sync() > 1 and not tf.distribute.in_cross_replica_context()
