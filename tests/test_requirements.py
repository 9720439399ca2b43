"""A missing or too-old TensorFlow/Keras is one clear message saying what to install."""

import pytest

from tests.workers import run_python
import tfdp
from tfdp._requirements import VERIFIED_KERAS, check_versions


def test_the_installed_versions_pass_and_the_pins_agree_with_the_verified_range():
    import keras
    import tensorflow as tf

    from tests.workers import ROOT

    check_versions(tf.__version__, keras.__version__, keras.backend.backend())  # what this venv has
    assert f"keras>={VERIFIED_KERAS[0]}," in (ROOT / "setup.cfg").read_text()  # the oldest verified, required
    nightly = (ROOT / ".ci" / "keras-nightly.txt").read_text().strip()
    assert nightly == f"keras-nightly=={VERIFIED_KERAS[1]}"  # the newest verified, run by CI's nightly lane


def test_a_too_old_tensorflow_says_what_to_install():
    with pytest.raises(ImportError) as raised:
        check_versions("2.15.1", "3.15.1", "tensorflow")
    for part in ['TensorFlow >= 2.16', "found 2.15.1", 'pip install "tfdp[cpu]"']:
        assert part in str(raised.value)


@pytest.mark.parametrize("keras_version,backend,expected", [
    ("3.3.3", "tensorflow", ["Keras 3.3.3", f"verified on Keras {VERIFIED_KERAS[0]}", f'pip install "keras>={VERIFIED_KERAS[0]}"']),
    ("3.15.0", "tensorflow", ["Keras 3.15.0", f'pip install "keras>={VERIFIED_KERAS[0]}"']),
    ("3.15.1", "jax", ['KERAS_BACKEND is "jax"', "KERAS_BACKEND=tensorflow"]),
])
def test_an_unverified_keras_or_backend_is_a_config_error(keras_version, backend, expected):
    with pytest.raises(tfdp.ConfigError) as raised:
        check_versions("2.21.0", keras_version, backend)
    for part in expected:
        assert part in str(raised.value)


def test_nightly_and_newer_keras_pass_the_import_check():
    check_versions("2.21.0", VERIFIED_KERAS[1], "tensorflow")
    check_versions("2.21.0", "3.16.0", "tensorflow")


def test_missing_tensorflow_is_one_clear_message():
    # A module finder that hides TensorFlow, as on a machine where it is not installed.
    result = run_python("""
        import sys
        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name == "tensorflow" or name.startswith("tensorflow."):
                    raise ImportError("No module named 'tensorflow'")
        sys.meta_path.insert(0, Hide())
        import tfdp
        try:
            tfdp.create_strategy("default")  # its checks pass without TensorFlow; then it needs it
        except ImportError as e:
            print("MESSAGE", e)
    """, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "MESSAGE tfdp needs TensorFlow" in result.stdout
    assert 'pip install "tfdp[cpu]"' in result.stdout



@pytest.mark.xdist_group("requirements")
def test_xdist_groups_take_effect(request):
    """Tests that share one job (xdist_group) run in one test process only on pytest < 9 (setup.cfg
    pins it): pytest-xdist 3.8 marks a group in item._nodeid, which pytest 9 no longer reads."""
    assert int(pytest.__version__.split(".")[0]) < 9, pytest.__version__
    if request.config.getoption("dist", "no") == "loadgroup":  # the mark is in the id the scheduler groups by
        assert request.node.nodeid.endswith("@requirements"), request.node.nodeid
