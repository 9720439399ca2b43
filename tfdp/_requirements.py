"""Imports TensorFlow and Keras once, with one clear message when they are unusable.

Also the one statement of which Keras releases tfdp's repairs are verified on (no
TensorFlow needed to read it: setup.cfg, the docs and `tfdp.keras_fixes` agree with it).
"""

from __future__ import annotations

import os
from types import ModuleType

from packaging.version import InvalidVersion, Version

from tfdp.errors import ConfigError

MIN_TENSORFLOW = "2.16"
# The oldest and newest Keras on which every repair was reproduced (stock Keras wrong) and
# verified (repaired Keras equal to one device). The newest is the keras-nightly pinned in
# .ci/run's nightly lane; it moves only with that pin, in a commit of its own.
VERIFIED_KERAS = ("3.15.1", "3.16.0.dev2026102704")
_INSTALL_HINT = ('Install a build of TensorFlow >= 2.16 with tfdp\'s extras: pip install "tfdp[cpu]" '
                 '(CPU-only) or pip install "tfdp[gpu]" (CUDA).')


def parse_version(version: str) -> Version:
    """A PEP 440 version; local tags and odd suffixes ("2.21.0-rc1+cpu") are tolerated."""
    try:
        return Version(version)
    except InvalidVersion:
        return Version(".".join(version.split("+")[0].split("-")[0].split(".")[:3]))


def check_versions(tf_version: str, keras_version: str, keras_backend: str) -> None:
    """Raises with what to install when the versions cannot work.

    Raises:
        ImportError: TensorFlow is too old.
        ConfigError: Keras is older than the oldest Keras the repairs are verified on,
            or Keras runs another backend.
    """
    if parse_version(tf_version) < Version(MIN_TENSORFLOW):
        raise ImportError(f"tfdp needs TensorFlow >= {MIN_TENSORFLOW} (Keras 3 era); found {tf_version}. "
                          f"{_INSTALL_HINT}")
    if parse_version(keras_version) < Version(VERIFIED_KERAS[0]):
        raise ConfigError(f"Keras {keras_version}: tfdp's repairs of Keras are verified on Keras "
                          f"{VERIFIED_KERAS[0]} to {VERIFIED_KERAS[1]}, and older releases have bugs they "
                          f'were not checked against. Fix: pip install "keras>={VERIFIED_KERAS[0]}".')
    if keras_backend != "tensorflow":
        raise ConfigError(f'KERAS_BACKEND is "{keras_backend}": tfdp needs the Keras TensorFlow backend. '
                          "Fix: unset KERAS_BACKEND or set KERAS_BACKEND=tensorflow before importing keras.")


def import_tensorflow() -> ModuleType:
    """Returns the tensorflow module after checking TF, Keras and the Keras backend."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(f"tfdp needs TensorFlow, which could not be imported ({e}). {_INSTALL_HINT}") from e
    try:
        import keras
    except ImportError as e:
        raise ImportError(f"tfdp needs Keras 3, which could not be imported ({e}). "
                          f'Fix: pip install "keras>={VERIFIED_KERAS[0]}".') from e
    check_versions(tf.__version__, keras.__version__, keras.backend.backend())
    return tf
