"""A recipe's console: its own lines and tfdp's, not the libraries' chatter.

Called before TensorFlow is imported. TensorFlow's C++ INFO and WARNING lines (oneDNN,
CPU features, the auto-shard notes about tfds's `assert_cardinality`) are hidden unless
TF_CPP_MIN_LOG_LEVEL is set; TensorFlow's Python INFO lines (each all-reduce it builds,
each checkpoint it shards) and tensorflow-datasets' INFO lines (each dataset it opens)
are dropped; warnings and errors of every library still show.
"""

from __future__ import annotations

import logging
import os


class _BelowWarningFrom(logging.Filter):
    """Drops records below WARNING logged from files under the given package directories."""

    def __init__(self, *packages: str):
        super().__init__()
        self.parts = tuple(f"{os.sep}{package}{os.sep}" for package in packages)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(part in record.pathname for part in self.parts)


def quiet_libraries() -> None:
    """Hides the libraries' INFO output (call first in main, before TensorFlow starts)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    # tensorflow-datasets and parts of TensorFlow (the checkpoint saver) log through absl's
    # logger ("absl"), shared with the program's own INFO lines.
    logging.getLogger("absl").addFilter(_BelowWarningFrom("tensorflow_datasets", "tensorflow"))
