"""The default recipe data: the UCI handwritten digits as a local TFDS dataset.

The 1,797 8x8 digit images ship with the recipes (`recipes/data/digits.csv.gz`, the file
scikit-learn ships), so this works offline and without scikit-learn. They are written
once, in several TFRecord shards, under `data_dir`, so that multi-worker jobs read them
like any sharded TFDS dataset.
"""

from __future__ import annotations

import contextlib
import io
import logging
import gzip
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

NAME = "tfdp_digits"
VERSION = "1.0.0"
NUM_SHARDS = 4
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
TEST_FRACTION = 0.2
CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "digits.csv.gz")


def load() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits: images (N, 8, 8, 1) float32 in [0, 1] and labels (N,) int64."""
    with gzip.open(CSV, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return (rows[:, :-1].reshape(-1, *IMAGE_SHAPE) / 16.0).astype(np.float32), rows[:, -1]


def dataset_dir(data_dir: str) -> str:
    """Where the prepared dataset lives."""
    return os.path.join(data_dir, NAME, VERSION)


def prepare(data_dir: str) -> tfds.core.DatasetBuilder:
    """Writes the digits under `data_dir` unless already there; returns the builder."""
    path = dataset_dir(data_dir)
    if os.path.exists(os.path.join(path, "dataset_info.json")):
        return tfds.builder_from_directory(path)
    images, labels = load()
    order = np.random.default_rng(0).permutation(len(labels))
    num_test = int(len(labels) * TEST_FRACTION)
    splits = {"test": order[:num_test], "train": order[num_test:]}
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.float32),
        "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
    })
    print(f"digits: writing the {len(labels)} digits once to {path} (no download)", flush=True)
    # tfds speaks of "Downloading and preparing" and draws progress bars, though nothing is downloaded.
    absl_logger, level = logging.getLogger("absl"), logging.getLogger("absl").level
    absl_logger.setLevel(logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return tfds.dataset_builders.store_as_tfds_dataset(
                name=NAME, version=VERSION, features=features, data_dir=data_dir,
                split_datasets={split: tf.data.Dataset.from_tensor_slices(
                    {"image": images[index], "label": labels[index]}) for split, index in splits.items()},
                download_config=tfds.download.DownloadConfig(num_shards=NUM_SHARDS),
                description="The UCI 8x8 handwritten digits (as scikit-learn ships them), 80/20 split, seed 0.")
    finally:
        absl_logger.setLevel(level)
        tfds.display_progress_bar(True)
