"""Repairs of upstream Keras bugs that break data-parallel training: one module per repair.

Each module holds the bug, its upstream link, the Keras versions it was reproduced on,
the patch and its undo (`FIX`). `tfdp.create_strategy` calls `install()`, which puts in
every repair this Keras needs:

- Keras older than the oldest verified release: a `ConfigError` (tfdp refuses to import).
- Keras newer than the newest verified one (the keras-nightly pinned in CI): the repairs
  are installed and ONE warning names the verified range.
- A Keras internal a repair touches is gone or has another shape: a `ConfigError`
  naming the repair, the Keras version and the fix, before anything is patched.

Never silent, never an ImportError. `install(exclude=[...])` leaves repairs out (stock
behaviour, for those who accept it) and remembers that for later `install()` calls;
`uninstall()` restores stock Keras.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from tfdp._requirements import VERIFIED_KERAS, import_tensorflow, parse_version

import_tensorflow()
import keras  # noqa: E402

from tfdp._compat import MissingInternal  # noqa: E402
from tfdp.errors import ConfigError, check_choice  # noqa: E402
from tfdp.keras_fixes import (  # noqa: E402
    atomic_assign_add, backup_and_restore, chief_writes, multi_worker_fit, parameter_server_fit, partial_batch, reduce_before_clip,
    steps_per_execution)
from tfdp.keras_fixes._base import Fix, Undo  # noqa: E402
from tfdp.keras_fixes.collective_keys import use_fresh_collective_keys  # noqa: E402

logger = logging.getLogger("tfdp")

FIXES: tuple[Fix, ...] = (partial_batch.FIX, multi_worker_fit.FIX, reduce_before_clip.FIX,
                          chief_writes.FIX, backup_and_restore.FIX, steps_per_execution.FIX,
                          parameter_server_fit.FIX, atomic_assign_add.FIX)
NAMES = tuple(fix.name for fix in FIXES)

_installed: dict[str, Undo] = {}
_excluded: set[str] = set()
_warned_newer = False

__all__ = ["FIXES", "Fix", "install", "installed", "is_needed", "uninstall", "use_fresh_collective_keys",
           "VERIFIED_KERAS"]


def is_needed(fix: Fix, keras_version: str | None = None) -> bool:
    """Whether `fix`'s bug can occur on this Keras (False once upstream fixed it)."""
    version = parse_version(keras_version or keras.__version__)
    return fix.fixed_in is None or version < parse_version(fix.fixed_in)


def _warn_if_newer_than_verified() -> None:
    global _warned_newer
    if _warned_newer or parse_version(keras.__version__) <= parse_version(VERIFIED_KERAS[1]):
        return
    _warned_newer = True
    logger.warning(
        "tfdp: Keras %s is newer than the Keras releases tfdp's repairs are verified on (%s to %s). "
        "They are installed (their internals check out); if model.fit under a strategy misbehaves, "
        'pin pip install "keras<=%s" and report it.', keras.__version__, *VERIFIED_KERAS,
        VERIFIED_KERAS[1])


def _check_installable(fix: Fix) -> None:
    try:
        fix.check()
    except MissingInternal as e:
        raise ConfigError(
            f"tfdp cannot install its repair {fix.name!r} ({fix.problem}) on Keras {keras.__version__}: "
            f"{e}. Keras changed an internal the repair replaces. Fix: pin a Keras it is verified on "
            f'(pip install "keras>={VERIFIED_KERAS[0]},<={VERIFIED_KERAS[1]}"), or accept stock Keras '
            f'behaviour for it with tfdp.keras_fixes.install(exclude=["{fix.name}"]) before '
            f"create_strategy. Upstream: {fix.upstream}") from None


def install(*, exclude: Iterable[str] | None = None) -> tuple[str, ...]:
    """Installs every repair this Keras needs (idempotent).

    Args:
        exclude: names of repairs to leave out (and uninstall if installed); remembered
            for later calls without it. None keeps the previous choice; () clears it.

    Returns:
        The names of the repairs now installed.

    Raises:
        ConfigError: an unknown name, or a repair whose Keras internals are gone.
    """
    if exclude is not None:
        _excluded.clear()
        _excluded.update(check_choice("keras_fixes.install(exclude)", name, NAMES) for name in exclude)
        uninstall(_excluded)
    wanted = [fix for fix in FIXES if fix.name not in _installed and fix.name not in _excluded
              and is_needed(fix)]
    for fix in wanted:  # Check all first: nothing is patched when one cannot be.
        _check_installable(fix)
    _warn_if_newer_than_verified()
    for fix in wanted:
        _installed[fix.name] = fix.apply()
        logger.debug("tfdp: installed repair %s (%s)", fix.name, fix.upstream)
    return installed()


def uninstall(names: Iterable[str] | None = None) -> None:
    """Removes installed repairs (all by default): stock Keras behaviour again."""
    for name in list(_installed if names is None else names):
        if name in _installed:
            _installed.pop(name)()


def installed() -> tuple[str, ...]:
    """Names of the repairs currently installed."""
    return tuple(_installed)
