"""The image datasets of the recipes, as (image, label) datasets with what the model needs.

TensorFlow is imported when a dataset is loaded, not with this module: the recipes'
flags (and --help) need NAMES before anything starts TensorFlow.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

NAMES = ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10")
SYNTHETIC_SHAPE, SYNTHETIC_TRAIN, SYNTHETIC_TEST = (32, 32, 3), 4096, 512


@dataclasses.dataclass
class Splits:
    train: tf.data.Dataset
    test: tf.data.Dataset
    num_train: int
    image_shape: tuple[int, ...]
    num_classes: int


def _digits(data_dir: str) -> Splits:
    from recipes import digits

    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, f".{digits.NAME}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # Workers sharing data_dir prepare it once.
        builder = digits.prepare(data_dir)
    as_pair = lambda ex: (ex["image"], ex["label"])  # noqa: E731
    train, test = (builder.as_dataset(split=s).map(as_pair) for s in ("train", "test"))
    return Splits(train, test, builder.info.splits["train"].num_examples, digits.IMAGE_SHAPE, digits.NUM_CLASSES)


def _synthetic() -> Splits:
    """Random images with a learnable label (the sign pattern of channel means), for benchmarks."""
    import tensorflow as tf

    rng = np.random.default_rng(0)

    def split(n):
        images = rng.normal(size=(n, *SYNTHETIC_SHAPE)).astype("float32")
        labels = (images.mean(axis=(1, 2)) > 0).astype("int64") @ np.array([1, 2, 4])
        return tf.data.Dataset.from_tensor_slices((images, labels))

    return Splits(split(SYNTHETIC_TRAIN), split(SYNTHETIC_TEST), SYNTHETIC_TRAIN, SYNTHETIC_SHAPE, 8)


def _tfds(name: str, data_dir: str) -> Splits:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if not tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json")):
        raise FileNotFoundError(
            f"--dataset={name}: not prepared under --data_dir={data_dir}. Prepare it once on a machine "
            f"with internet access (tfds build {name} --data_dir={data_dir}) and copy the directory, or "
            "use --dataset=digits, which needs no download.")
    scale = lambda ex: (tf.cast(ex["image"], tf.float32) / 255.0, ex["label"])  # noqa: E731
    train, test = (builder.as_dataset(split=s).map(scale) for s in ("train", "test"))
    info = builder.info
    return Splits(train, test, info.splits["train"].num_examples, info.features["image"].shape,
                  info.features["label"].num_classes)


def load(name: str, data_dir: str) -> Splits:
    """The train/test splits of `name` (one of NAMES)."""
    if name == "digits":
        return _digits(data_dir)
    if name == "synthetic":
        return _synthetic()
    return _tfds(name, data_dir)
