"""Runs Keras's own tests of the classes tfdp patches, stock and with the repairs installed.

    python -m tests.keras_own_tests            # from the repository root, in tfdp's venv

The test files ship in the keras wheel (keras-nightly ships none: then those of the
keras TESTS_RELEASE wheel, downloaded from the package index, run). Every test runs with
`tfdp.keras_fixes.install()` done before collection (the files split over two fresh
pytest processes side by side); the tests that fail there, and those listed in
EXPECTED_DIFFERENCES, run again on stock Keras. A test that fails with the repairs and
passes on stock Keras must be listed in EXPECTED_DIFFERENCES with the reason; any other
such test, a listed one that does not differ, or a file that cannot run exits with
status 1. (A test that fails on stock Keras and passes with the repairs is not looked
for: it would be a repair fixing more than it claims, not a regression.)

Keras's trainer_test.py imports jax at module level and parametrizes some cases over jax,
grain and torch data sources. None is a dependency of tfdp (jax alone is ~620 MB), so when
one is missing its cases are deselected in both runs alike, and a placeholder `jax` module
lets the file import.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import os
import subprocess
import sys
import tempfile
import types
import xml.etree.ElementTree as ElementTree
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPAIRS_ENV = "TFDP_KERAS_OWN_TESTS_REPAIRS"
TEST_FILES = (
    "callbacks/backup_and_restore_test.py",
    "callbacks/model_checkpoint_test.py",
    "callbacks/tensorboard_test.py",
    "optimizers/loss_scale_optimizer_test.py",
    "backend/tensorflow/optimizer_distribute_test.py",
    "trainers/trainer_test.py",
    "losses/loss_test.py",
)
# The longest file: it runs in one process, the others in a second one beside it.
HEAVIEST = "trainers/trainer_test.py"
# Test id -> why its outcome differs with the repairs installed (stock outcome, repaired outcome).
EXPECTED_DIFFERENCES = {
    "callbacks.backup_and_restore_test.BackupAndRestoreCallbackTest.test_best_case_step": (
        "passed", "failed",
        "backup_and_restore resumes a mid-epoch backup after the steps it holds: the test counts 17 "
        "batches where stock Keras replays the interrupted epoch from its start and tfdp trains the "
        "15 an uninterrupted run trains (the replay is the bug the repair fixes)."),
}
TIMEOUT_SECONDS = 1200
# Optional data sources of Keras's trainer tests, not dependencies of tfdp: their cases are
# deselected (in both runs) when the package is missing.
OPTIONAL_PACKAGES = ("jax", "grain", "torch")
# Whose test files run against a Keras that ships none (keras-nightly).
TESTS_RELEASE = "3.15.1"
# The one adaptation those files need on Keras 3.16: its TensorFlow trainer class was
# renamed (old import -> (new import, the name that is gone when it applies)).
RENAMES = {"TensorFlowTrainer as Trainer": ("Trainer as Trainer", "TensorFlowTrainer")}


# -- pytest plugin (loaded with -p tests.keras_own_tests) ---------------------------------


def pytest_configure(config) -> None:
    import keras  # noqa: F401  (first, so that Keras itself sees jax missing)

    try:
        import jax  # noqa: F401
    except ImportError:
        sys.modules["jax"] = types.ModuleType("jax")  # only for trainer_test.py's module-level import
    if os.environ.get(REPAIRS_ENV) == "1":
        from tfdp import keras_fixes

        print(f"tfdp repairs installed: {', '.join(keras_fixes.install())}")


# -- runner -------------------------------------------------------------------------------


def _outcomes(junit_xml: str) -> dict[str, str]:
    outcomes = {}
    for case in ElementTree.parse(junit_xml).getroot().iter("testcase"):
        name = f"{case.get('classname')}.{case.get('name')}"
        kinds = {child.tag for child in case}
        outcomes[name] = ("failed" if kinds & {"failure", "error"} else
                          "skipped" if "skipped" in kinds else "passed")
    return outcomes


def test_files(keras_src: Path, tmp: str, files: tuple[str, ...]) -> tuple[Path, str]:
    """(directory holding `files`, where they come from).

    The installed wheel's own files when it ships them; keras-nightly ships none, so then
    the files of the released Keras wheel TESTS_RELEASE (from the package index) test the
    installed Keras.
    """
    if all((keras_src / name).exists() for name in files):
        return keras_src, "the installed wheel"
    download = os.path.join(tmp, "wheel")
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", download, f"keras=={TESTS_RELEASE}"]
    subprocess.run(command, check=True, timeout=600)
    target = Path(tmp) / "keras_tests"
    trainer_module = importlib.import_module("keras.src.backend.tensorflow.trainer")
    with zipfile.ZipFile(next(Path(download).glob("keras-*.whl"))) as wheel:
        for name in files:
            text = wheel.read(f"keras/src/{name}").decode()
            for old, (new, attribute) in RENAMES.items():
                if not hasattr(trainer_module, attribute):
                    text = text.replace(old, new)
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_text(text)
    return target, f"the keras {TESTS_RELEASE} wheel (this Keras ships no tests)"


def _node_ids(tests: Path, files: tuple[str, ...], names: list[str]) -> list[str]:
    """pytest node ids of junit test names ("module.Class.test" or "module.test")."""
    ids = []
    for name in names:
        for file in files:
            module = file[: -len(".py")].replace("/", ".")
            if name.startswith(module + "."):
                head, bracket, parameters = name[len(module) + 1:].partition("[")  # "Class.test[a.b]"
                ids.append("::".join([str(tests / file), *head.split(".")]) + bracket + parameters)
                break
    return ids


def _missing_optional_packages() -> list[str]:
    return [name for name in OPTIONAL_PACKAGES
            if subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, timeout=120).returncode]


def run(targets: list[str], *, tests: Path, repairs: bool, tmp: str, label: str,
        deselect: list[str]) -> dict[str, str]:
    """Outcome of every test in `targets` (files or node ids), in one fresh pytest process."""
    report = os.path.join(tmp, f"{label}.xml")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull,
               "--rootdir", str(tests), "--import-mode=importlib", "-p", "tests.keras_own_tests", f"--junitxml={report}",
               *(["-k", " and ".join(f"not {name}" for name in deselect)] if deselect else []), *targets]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # a Keras put first stays first
    env = {**os.environ, REPAIRS_ENV: "1" if repairs else "0", "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(command, env=env, cwd=tmp, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    if not os.path.exists(report) or result.returncode not in (0, 1):
        sys.exit(f"Keras's tests did not run ({label}, exit "
                 f"{result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return _outcomes(report)


def _counts(outcomes: dict[str, str]) -> str:
    return ", ".join(f"{sum(o == kind for o in outcomes.values())} {kind}"
                     for kind in ("passed", "failed", "skipped"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", nargs="+", choices=TEST_FILES, default=list(TEST_FILES), metavar="FILE",
                        help=f"run only these of the test files (default: all of {', '.join(TEST_FILES)})")
    files = tuple(parser.parse_args(argv).files)
    import keras

    keras_src = Path(keras.__file__).parent / "src"
    deselect = _missing_optional_packages()
    with tempfile.TemporaryDirectory() as tmp:
        tests, source = test_files(keras_src, tmp, files)
        halves = [[str(tests / name) for name in files if (name == HEAVIEST) == first] for first in (True, False)]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # the two halves side by side
            parts = pool.map(lambda part: run(part[1], tests=tests, repairs=True, tmp=tmp, label=f"repaired-{part[0]}",
                                              deselect=deselect), [(i, h) for i, h in enumerate(halves) if h])
            repaired = {name: outcome for part in parts for name, outcome in part.items()}
        failed = sorted(name for name, outcome in repaired.items() if outcome == "failed")
        again = _node_ids(tests, files, sorted(set(failed) | set(EXPECTED_DIFFERENCES)))
        stock = run(again, tests=tests, repairs=False, tmp=tmp, label="stock", deselect=[]) if again else {}
    print(f"Keras {keras.__version__}: {len(files)} test files of the patched classes, from {source}")
    print(f"  with tfdp repairs:  {_counts(repaired)}")
    print(f"  on stock Keras, the {len(again)} that failed with the repairs or are listed: {_counts(stock)}")
    unexpected = []
    for name in failed:
        expected = EXPECTED_DIFFERENCES.get(name)
        if stock.get(name) == "failed":
            print(f"  fails on stock Keras too (not tfdp's): {name}")
        elif expected and expected[:2] == (stock.get(name), "failed"):
            print(f"  expected difference: {name}: {expected[0]} -> failed. {expected[2]}")
        else:
            unexpected.append(f"{name}: stock {stock.get(name, 'missing')}, repaired failed")
    for name, (before, after, _) in EXPECTED_DIFFERENCES.items():
        if name not in failed and _node_ids(tests, files, [name]):  # its file ran, and it did not fail
            unexpected.append(f"{name}: listed as an expected difference ({before} -> {after}) but with the "
                              f"repairs it {repaired.get(name, 'is missing')}, on stock Keras it "
                              f"{stock.get(name, 'is missing')}: remove it from the list")
    for line in unexpected:
        print(f"  UNEXPECTED: {line}")
    print(f"keras_own_tests: {len(unexpected)} unexpected difference(s)")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
