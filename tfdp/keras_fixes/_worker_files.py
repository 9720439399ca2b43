"""Where a callback on a worker writes: the chief into the user's directory, others privately."""

from __future__ import annotations

import shutil
import tempfile
import weakref

from tfdp import roles

_private_dirs: "weakref.WeakKeyDictionary[object, str]" = weakref.WeakKeyDictionary()


def on_chief(callback, model=None) -> bool:
    """Whether the process running `callback` (for `model`) writes the user's files."""
    return roles.is_chief((model or callback.model).distribute_strategy)


def private_dir(callback) -> str:
    """A temporary directory of this callback's own (created on first use)."""
    if callback not in _private_dirs:
        _private_dirs[callback] = tempfile.mkdtemp(prefix="tfdp-worker-")
    return _private_dirs[callback]


def remove_private_dir(callback) -> None:
    path = _private_dirs.pop(callback, None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
