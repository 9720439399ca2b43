"""recipes.benchmark runs its configurations and reports a table and JSON (numbers, not timings, are checked)."""

import json
import subprocess
import sys

import pytest

from tests.workers import ROOT, _env

BENCHMARK = [sys.executable, "-m", "recipes.benchmark"]


def test_benchmark_reports_each_configuration(tmp_path):
    output = tmp_path / "bench.json"
    args = ["--configs=single-1t-trainer,workers2-trainer", "--model=mlp", "--steps=3", "--repeats=1",
            "--split_steps=2", "--split_repeats=1", f"--output={output}"]
    result = subprocess.run([*BENCHMARK, *args], timeout=300, capture_output=True, text=True, cwd=ROOT,
                            env=_env(None))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "config" in result.stdout and "examples/s" in result.stdout and "all reduce" in result.stdout
    report = json.loads(output.read_text())
    assert [r["config"] for r in report["results"]] == ["single-1t-trainer", "workers2-trainer"]
    for r in report["results"]:
        assert r["examples_per_sec"] > 0 and r["first_step_seconds"] > 0
        split = r["split"]
        assert split["step_ms"] == pytest.approx(1000 * 128 / r["examples_per_sec"])
        assert split["compute_ms"] > 0
        assert set(split) == {"step_ms", "compute_ms", "input_wait_ms", "all_reduce_ms", "other_ms"}
    assert report["results"][0]["scaling_vs_1_process_1_thread"] == 1.0


def test_unknown_configuration_is_a_usage_error():
    result = subprocess.run([*BENCHMARK, "--configs=single-9t"], capture_output=True, text=True, timeout=120,
                            cwd=ROOT, env=_env(None))
    assert result.returncode != 0 and "--configs: unknown ['single-9t']" in result.stderr
