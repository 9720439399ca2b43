"""`tfdp env`: a report of this install and this process's cluster, in text and JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import keras

from tests.workers import ROOT, _env


def _env_command(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tfdp", "env", *args], cwd=ROOT, env=_env(extra), capture_output=True, text=True, timeout=120)  # noqa: E501


def test_json_report_has_versions_devices_repairs_and_threads():
    done = _env_command("--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["versions"]["keras"] == keras.__version__ and report["versions"]["tfdp"]
    assert report["tensorflow"]["devices"][0].startswith("CPU")
    repairs = {fix["name"]: fix for fix in report["tensorflow"]["repairs"]}
    assert "partial_batch" in repairs and all(fix["installs"] for fix in repairs.values())
    assert set(report["tensorflow"]["threads"]) == {"intra_op", "inter_op"}
    assert report["cluster"]["detected"] == []


def test_text_report_names_the_task_its_role_and_non_loopback_addresses():
    tf_config = '{"cluster":{"chief":["10.1.2.3:2222"],"worker":["127.0.0.1:2223"]},"task":{"type":"worker","index":0}}'
    done = _env_command(extra={"TF_CONFIG": tf_config, "TF_NUM_INTRAOP_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "detected TF_CONFIG" in done.stdout
    assert "this task worker 0 at 127.0.0.1:2223, chief: False, 2 training task(s)" in done.stdout
    assert "addresses beyond loopback" in done.stdout and "10.1.2.3:2222" in done.stdout
    assert "TF_NUM_INTRAOP_THREADS=1" in done.stdout
    assert "partial_batch          installs" in done.stdout


def test_kubernetes_variables_are_read_as_the_cluster():
    done = _env_command("--json", extra={"JOB_COMPLETION_INDEX": "1", "TFDP_K8S_WORKERS": "2",
                                         "TFDP_K8S_JOB": "train", "TFDP_K8S_SERVICE": "train-svc"})
    cluster = json.loads(done.stdout)["cluster"]
    assert cluster["detected"] == ["Kubernetes"] and cluster["task"] == "worker 1" and not cluster["is_chief"]
    assert cluster["loopback_only"] is False


def test_malformed_tf_config_is_reported_not_raised():
    done = _env_command(extra={"TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "wrker"}}'})
    assert done.returncode == 0, done.stderr
    assert "ERROR TF_CONFIG task" in done.stdout and "Traceback" not in done.stdout + done.stderr


def test_a_malformed_tfdp_default_is_a_usage_error_naming_the_variable(monkeypatch, capsys):
    from tfdp import cli

    monkeypatch.setenv("TFDP_DOCTOR_REPLICAS", "two")
    for command in (["env"], ["doctor"]):
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert "TFDP_DOCTOR_REPLICAS='two' is not a whole number" in err and "Traceback" not in err
