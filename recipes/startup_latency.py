"""Measures how fast a user hears back: seconds until `--help`, a bad TF_CONFIG, `tfdp env`.

    python -m recipes.startup_latency [--repeats 3]

Each command runs in a fresh process (the median of --repeats runs); the table shows
whether TensorFlow was imported on the way. No TensorFlow is imported here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

BAD_TF_CONFIG = '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "wrker", "index": 0}}'
# Runs a command line in-process and then says whether TensorFlow was ever imported.
_PROBE = ("import atexit, runpy, sys; atexit.register(lambda: print('TF imported:', 'tensorflow' in sys.modules)); "
          "module = sys.argv[1]; sys.argv = sys.argv[1:]; runpy.run_module(module, run_name='__main__')")
CASES = {
    "recipe --help": ([sys.executable, "-c", _PROBE, "recipes.image_classification", "--help"], {}),
    "recipe, bad --strategy": ([sys.executable, "-c", _PROBE, "recipes.image_classification", "--strategy=mirored"],
                               {}),
    "recipe, malformed TF_CONFIG": ([sys.executable, "-c", _PROBE, "recipes.image_classification", "--dry_run"],
                                    {"TF_CONFIG": BAD_TF_CONFIG}),
    "create_strategy, malformed TF_CONFIG": (
        [sys.executable, "-c", "import sys, tfdp\ntry:\n    tfdp.create_strategy()\nexcept tfdp.ConfigError:\n"
         "    print('TF imported:', 'tensorflow' in sys.modules)"], {"TF_CONFIG": BAD_TF_CONFIG}),
    "tfdp env": ([sys.executable, "-c", _PROBE, "tfdp", "env"], {}),
}


def measure(command: list[str], env: dict[str, str]) -> tuple[float, bool]:
    """(seconds until the process ended, whether it imported TensorFlow)."""
    started = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    return time.perf_counter() - started, "TF imported: True" in done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per command (the median is shown)")
    args = parser.parse_args(argv)
    print(f"{'command':40} {'seconds':>8}  TensorFlow imported")
    for name, (command, env) in CASES.items():
        runs = [measure(command, env) for _ in range(args.repeats)]
        print(f"{name:40} {statistics.median(s for s, _ in runs):8.2f}  {'yes' if runs[0][1] else 'no'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
