"""The test process runs TensorFlow with two logical CPU devices (2 replicas).

Logical devices can be set only before TensorFlow starts, so it happens once here;
tests that need another device layout or a multi-worker runtime start their own
processes (see tests/workers.py). Also here: the fixtures every module shares (the
2-replica strategy, a dtype policy that is always restored) and the order of collection.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

NUM_TEST_REPLICAS = 2
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration() for _ in range(NUM_TEST_REPLICAS)])


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


# Modules whose tests start worker processes, the longest first: collected first, so that
# the two test processes (pytest-xdist) take them early and end together.
LONG_FIRST = ("test_readme.py", "test_ray.py", "test_recipes.py", "test_parameter_server.py", "test_zoo.py",
              "test_many_workers.py", "test_launch.py", "test_fit_multi_worker.py", "test_trainer.py",
              "test_doctor.py", "test_strategy.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))
