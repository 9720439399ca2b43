"""Every Python block of README.md runs as written, each in a fresh process."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.workers import ROOT, _env, run_python

BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    result = run_python(BLOCKS[index], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


README = (ROOT / "README.md").read_text()
COMMANDS = [line.strip() for block in re.findall(r"```bash\n(.*?)```", README, re.S)
            for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
TEST_COMMAND = COMMANDS[1]  # the second line of the first block: what runs this very test
# Flags appended to shorten a command (the command as written comes first, unchanged).
SHORTER = {"recipes.image_classification": " --epochs=1",
           "tests.keras_own_tests": " --files optimizers/loss_scale_optimizer_test.py"}


def test_every_code_block_is_python_or_bash():
    fences = re.findall(r"^```(\w*)$", README, re.M)
    assert set(fences[0::2]) == {"python", "bash"} and set(fences[1::2]) == {""}, \
        "a block of another kind would escape the tests below"


def test_readme_starts_with_the_setup_and_test_commands():
    assert COMMANDS[0].startswith("python3 -m venv .venv && .venv/bin/pip install") and "recipes." in COMMANDS[0]
    assert TEST_COMMAND.endswith(".venv/bin/python -m pytest -q tests")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert "bash .ci/run" not in TEST_COMMAND and ci[-1] == TEST_COMMAND  # CI ends with the README's test command


def test_every_readme_command_runs_as_written_in_order(tmp_path):
    """Each shell command of README.md, in order, from the repository root (the README's test command aside)."""
    env = _env({"TFDP_RUNS_DIR": str(tmp_path)})
    ran = []
    for command in COMMANDS:
        if command == TEST_COMMAND:
            continue
        shorter = "".join(flags for key, flags in SHORTER.items() if key in command)
        result = subprocess.run(["bash", "-c", command + shorter], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)  # noqa: E501
        assert result.returncode == 0, f"{command}{shorter}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        ran.append(command)
        if "recipes.image_classification" in command:  # each run wrote its results in a directory of its own
            model_dir = next(line.split("model_dir ", 1)[1] for line in result.stdout.splitlines()
                             if "model_dir " in line)
            assert model_dir.startswith(str(tmp_path))
            assert json.loads((Path(model_dir) / "results.json").read_text())["train"]["loss"] > 0
    assert len(ran) == len(COMMANDS) - 1 >= 6  # setup+recipe, env, 2 doctors, Keras's tests, tfdp-launch


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_and_docs_reference_resolves():
    """Links in README.md and docs/, and the docs/*.md that code and messages point to, exist."""
    missing = []
    for page in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not re.match(r"[a-z]+://", target) and not (page.parent / target).exists():
                missing.append(f"{page.name} -> {target}")
    for source in [*(ROOT / "tfdp").rglob("*.py"), *(ROOT / "recipes").rglob("*.py")]:
        for target in re.findall(r"docs/[\w.-]+\.md", source.read_text()):
            if not (ROOT / target).exists():
                missing.append(f"{source.relative_to(ROOT)} -> {target}")
    assert not missing, missing


def test_the_repair_table_lists_every_repair():
    from tfdp import keras_fixes

    table = (ROOT / "docs" / "model_fit.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert sorted(rows) == sorted(keras_fixes.NAMES)
