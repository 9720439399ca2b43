"""tfdp: data-parallel training for Keras 3 on TensorFlow.

`import tfdp` is cheap: `tfdp.cluster`, `tfdp.ConfigError` and the launcher need no
TensorFlow; the names that do (`create_strategy`, `is_chief`, `synchronize_batch_norm`,
`Trainer`, `data`, `training`, `keras_fixes`) import it on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from tfdp import cluster
from tfdp.errors import ConfigError

__version__ = "0.1.0"

_LAZY = {
    "create_strategy": "tfdp.strategy",
    "is_chief": "tfdp.roles",
    "synchronize_batch_norm": "tfdp.batch_norm",
    "Trainer": "tfdp.training",
}
_LAZY_MODULES = ("data", "strategy", "keras_fixes", "training")

__all__ = ["ConfigError", "cluster", "__version__", *_LAZY, *_LAZY_MODULES]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"tfdp.{name}")
    raise AttributeError(f"module 'tfdp' has no attribute {name!r}")
