"""`tfdp doctor`: one device vs N CPU replicas of a model, both in a real process of their own (not the test's)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import tfdp
from tfdp import doctor
from tests.workers import ROOT, _env

MODELS, DATA = "tests.doctor_models", "tests.doctor_models:data"


def _doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tfdp", "doctor", *args], cwd=ROOT, env=_env(None), capture_output=True, text=True, timeout=300)  # noqa: E501


def test_builtin_check_passes_and_exits_0():
    done = _doctor("--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0, done.stderr
    assert report["equivalent"] and report["max_difference"] <= report["tolerance"] == 1e-5
    assert set(report["layers"]) == {"sequential/hidden", "sequential/out"}
    assert report["config"]["global_batch_size"] == 9  # uneven shares: the partial_batch repair at work
    assert report["metrics"]["one"]["loss"] == pytest.approx(report["metrics"]["replicas"]["loss"], rel=1e-5)


def test_plain_user_model_is_equivalent():
    report = doctor.compare(f"{MODELS}:plain", DATA, replicas=2, steps=3, global_batch_size=8)
    assert report.equivalent, report.render()
    assert report.causes == [] and "EQUIVALENT" in report.render()


def test_unsynchronized_batch_norm_is_named_and_exits_1():
    done = _doctor("--model", f"{MODELS}:batch_norm", "--data", DATA, "--steps", "3")
    assert done.returncode == 1, done.stderr
    assert "NOT EQUIVALENT" in done.stdout
    assert "Likely cause: unsynchronised BatchNormalization 'bn'" in done.stdout
    assert "tfdp.synchronize_batch_norm(model)" in done.stdout


def test_unseeded_random_op_is_named_and_the_rest_checks_out_without_it():
    report = doctor.compare(f"{MODELS}:unseeded_noise", DATA, steps=3, global_batch_size=8)
    assert not report.equivalent
    assert len(report.causes) == 1 and "layer 'noise' (Noise) draws random numbers in training" in report.causes[0]
    rerun = doctor.compare(f"{MODELS}:unseeded_noise", DATA, steps=3, global_batch_size=8,
                           training_randomness=False)
    assert rerun.equivalent, rerun.render()
    assert any("'noise'" in note and "training=False" in note for note in rerun.notes)


def test_dropout_is_named_as_expected():
    report = doctor.compare(f"{MODELS}:dropout", DATA, steps=3, global_batch_size=8)
    assert not report.equivalent
    assert "random layer 'drop' (Dropout)" in report.causes[0] and "expected" in report.causes[0]


def test_custom_train_step_that_sums_the_loss_is_named():
    report = doctor.compare(f"{MODELS}:summed_loss", DATA, steps=3, global_batch_size=8)
    assert not report.equivalent
    assert len(report.causes) == 1 and "summed over the replicas" in report.causes[0]
    assert "custom train_step" in report.causes[0]


def test_a_model_function_returning_an_uncompiled_model_is_a_usage_error():
    done = _doctor("--model", f"{MODELS}:not_compiled", "--data", DATA, "--steps", "1")
    assert done.returncode == 2
    assert "--model: the model is not compiled. Fix: call model.compile" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("model, message", [
    ("tests.doctor_models", "write it as MODULE:FUNCTION"),
    ("no_such_module:f", "module 'no_such_module' cannot be imported"),
    (f"{MODELS}:nothing", "has no 'nothing'"),
])
def test_bad_model_spec(model, message):
    with pytest.raises(tfdp.ConfigError, match=message):
        doctor.compare(model, DATA, steps=1)


def test_bad_arguments_are_config_errors_before_any_run():
    with pytest.raises(tfdp.ConfigError, match="model must be importable"):
        doctor.compare(lambda: None, DATA)
    with pytest.raises(tfdp.ConfigError, match="replicas=1: comparing needs at least 2"):
        doctor.compare(replicas=1)
    with pytest.raises(tfdp.ConfigError, match="global_batch_size=1: smaller than the 2 replicas"):
        doctor.compare(global_batch_size=1)
    done = _doctor("--model", f"{MODELS}:plain")
    assert done.returncode == 2 and "give --model and --data together" in done.stderr
