"""The test process runs TensorFlow with two logical CPU devices (2 replicas).

Logical devices can be set only before TensorFlow starts, so it happens once here;
tests that need another device layout or a multi-worker runtime start their own
processes (see tests/workers.py).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

NUM_TEST_REPLICAS = 2
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration() for _ in range(NUM_TEST_REPLICAS)])


import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def two_replicas():
    """A tfdp mirrored strategy over this process's two logical CPU devices."""
    import tfdp

    return tfdp.create_strategy("mirrored", num_cpu_replicas=NUM_TEST_REPLICAS)


@pytest.fixture
def dtype_policy():
    """Sets Keras's global dtype policy for one test (`dtype_policy("mixed_float16")`); float32 after, always."""
    yield keras.mixed_precision.set_dtype_policy
    keras.mixed_precision.set_dtype_policy("float32")
