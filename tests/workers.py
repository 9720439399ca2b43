"""Runs real worker processes for tests: each with its TF_CONFIG, a hard timeout, reaped."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from tfdp.launch import free_ports

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def as_dict(self) -> dict:
        return asdict(self)

    def json_lines(self) -> list[dict]:
        """Lines the worker printed as `RESULT {...}`."""
        return [json.loads(line[len("RESULT "):]) for line in self.stdout.splitlines()
                if line.startswith("RESULT ")]


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra or {})
    return env


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait()


def run_python(code: str, *, env: dict[str, str] | None = None, timeout: float = 120,
               args: tuple[str, ...] = ()) -> Result:
    """Runs `code` in a fresh Python process (its own TensorFlow runtime)."""
    results = run_processes([textwrap.dedent(code)], envs=[env or {}], timeout=timeout, args=args)
    return results[0]


def run_processes(codes: list[str], *, envs: list[dict[str, str]], timeout: float,
                  args: tuple[str, ...] = ()) -> list[Result]:
    """Starts one process per code string, waits for all, kills all on timeout."""
    with tempfile.TemporaryDirectory() as tmp:
        procs, files = [], []
        try:
            for i, (code, env) in enumerate(zip(codes, envs)):
                out = open(os.path.join(tmp, f"{i}.out"), "w+")
                err = open(os.path.join(tmp, f"{i}.err"), "w+")
                files.append((out, err))
                procs.append(subprocess.Popen(
                    [sys.executable, "-c", textwrap.dedent(code), *args], env=_env(env),
                    stdout=out, stderr=err, text=True, cwd=ROOT, start_new_session=True))
            deadline = time.monotonic() + timeout
            for p in procs:
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _stop(procs)
                    tails = [_read(err)[-3000:] for _, err in files]
                    raise AssertionError(f"processes did not finish within {timeout} s; "
                                         f"stderr tails: {tails}") from None
            return [Result(p.returncode, _read(out), _read(err))
                    for p, (out, err) in zip(procs, files)]
        finally:
            _stop(procs)
            for out, err in files:
                out.close()
                err.close()


def _read(f) -> str:
    f.flush()
    f.seek(0)
    return f.read()


def run_workers(code: str, *, num_workers: int, timeout: float = 180,
                env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> list[Result]:
    """Runs `code` as `num_workers` multi-worker processes on 127.0.0.1."""
    ports = free_ports(num_workers)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    envs = [{**(env or {}), "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
            for i in range(num_workers)]
    return run_processes([code] * num_workers, envs=envs, timeout=timeout, args=args)


def _lines_with(stream, text: str, *, count: int, seconds: float = 30) -> list[str]:
    """The first `count` lines of `stream` that contain `text`, read for at most `seconds` (fewer if they never come).

    Reads the pipe's file descriptor directly: a buffered readline after select() can leave a
    second line in Python's buffer, where select() never sees it.
    """
    fd, found, pending = stream.fileno(), [], b""
    deadline = time.monotonic() + seconds
    while len(found) < count and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:  # the launcher ended
            break
        *lines, pending = (pending + chunk).split(b"\n")
        found += [line for line in (raw.decode(errors="replace") for raw in lines) if text in line]
    return found[:count]


def once_per_run(tmp_path_factory, name: str, job: Callable[[Path], Any]) -> tuple[Path, Any]:
    """Runs `job(directory)` once per test run, whichever test process (pytest-xdist) asks first.

    A job several tests share (one cluster start-up for their cases) runs once even when the
    tests land in different processes: the first to ask runs it under a file lock and keeps
    its JSON result; the others wait for the lock and read it. Returns (its directory, result).
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # shared by every xdist process
    directory, result_file = root / name, root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not result_file.exists():
            directory.mkdir(exist_ok=True)
            result_file.write_text(json.dumps(job(directory)))
        return directory, json.loads(result_file.read_text())


LAUNCH = [sys.executable, "-m", "tfdp.launch"]


def launch(args: list[str], *, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs tfdp-launch with `args` from the repository root, every task's output on its console.

    Returns the finished launcher's CompletedProcess with `.seconds`, its wall time.
    """
    started = time.monotonic()
    result = subprocess.run([*LAUNCH, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                            env=_env({"TFDP_CONSOLE": "all", **(env or {})}))
    result.seconds = time.monotonic() - started
    return result
