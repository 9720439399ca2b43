"""The job's processes: spawn each task with its environment, stream its output, stop them all.

A task (a worker, or a parameter-server job's chief or ps) is a child in a session of
its own, killed by the kernel when the launcher dies however it dies (the parent-death
signal), pinned to its cores when asked. Its output goes to its log file, to the
console with a "[worker i]" prefix when shown, and into the tail kept for reports.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from tfdp.cluster import JOB_ID_ENV, SEED_ENV, TFConfig
from tfdp.launch import resources
from tfdp.launch.config import LaunchConfig

RESTART_COUNT_ENV = "TFDP_RESTART_COUNT"
TAIL_LINES = 20
RECENT_LINES = 200  # enough for a stack dump of every thread
POLL_SECONDS = 0.05
JOB_DIR_PREFIX = "tfdp-job-"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class TaskProcess:
    """One running task of the job (a worker, a chief or a ps) and the tail of its output."""

    index: int
    process: subprocess.Popen
    task_type: str = "worker"
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RECENT_LINES))
    reader: threading.Thread | None = None
    lost: bool = False  # a parameter-server job's worker that ended and was not restarted

    @property
    def name(self) -> str:
        return "chief" if self.task_type == "chief" else f"{self.task_type} {self.index}"

    @property
    def log_name(self) -> str:
        return "chief.log" if self.task_type == "chief" else f"{self.task_type}-{self.index}.log"

    def running(self) -> bool:
        return self.process.poll() is None

    def finish_reading(self, timeout: float = 2.0) -> None:
        """Waits for the reader to take the last of the output (a task that ended said its last words)."""
        if self.reader:
            self.reader.join(timeout=timeout)


def _in_task_before_exec(launcher_pid: int, cores: list[int] | None) -> None:
    """Runs in each task between fork and exec: dies with the launcher, pinned if asked.

    The task runs in its own session (so a Ctrl-C reaches the launcher, which stops the
    tasks in order); the parent-death signal makes the kernel SIGKILL it when the
    launcher dies however it dies (SIGKILL included), so no task outlives the job.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != launcher_pid:  # the launcher died before the prctl took effect
        os._exit(1)
    if cores:
        os.sched_setaffinity(0, cores)


def _stream(task: TaskProcess, log_path: str | None, lock: threading.Lock, shown: bool) -> None:
    log = open(log_path, "a", encoding="utf-8") if log_path else None
    try:
        for line in task.process.stdout:
            task.tail.append(line.rstrip("\n"))
            task.recent.append(line.rstrip("\n"))
            if shown:
                with lock:
                    sys.stdout.write(f"[{task.name}] {line}")
                    sys.stdout.flush()
            if log:
                log.write(line)
                log.flush()
    finally:
        if log:
            log.close()


class ProcessGroup:
    """The tasks of one attempt of the job, started, restarted one at a time, and stopped."""

    def __init__(self, config: LaunchConfig):
        self.config = config
        self.tasks: list[TaskProcess] = []
        self.ports: list[int] = []
        self.attempt = 0
        self._lock = threading.Lock()

    def start(self, attempt: int) -> None:
        """Starts every task of the job, on new ports unless --port fixes them."""
        self.ports = self.config.fixed_ports or resources.free_ports(len(self.config.tasks))
        if self.config.log_dir:
            os.makedirs(self.config.log_dir, exist_ok=True)
        self.attempt = attempt
        self.tasks = [self._spawn(position) for position in range(len(self.config.tasks))]

    def restart(self, position: int) -> TaskProcess:
        """Starts the task at `position` again, alone, on its address (a parameter-server job's worker)."""
        self.tasks[position] = self._spawn(position)
        return self.tasks[position]

    def _cluster(self) -> dict[str, list[str]]:
        cluster: dict[str, list[str]] = {}
        for (task_type, _), port in zip(self.config.tasks, self.ports):
            cluster.setdefault(task_type, []).append(f"127.0.0.1:{port}")
        return cluster

    def _environment(self, task_type: str, index: int) -> dict[str, str]:
        config = self.config
        tf_config = TFConfig(cluster=self._cluster(), task_type=task_type, task_index=index)
        env = dict(os.environ, TF_CONFIG=tf_config.to_json(),
                   **{RESTART_COUNT_ENV: str(self.attempt), SEED_ENV: config.seed, JOB_ID_ENV: config.job_id,
                      "PYTHONUNBUFFERED": "1"})
        threads = str(config.threads_per_worker)
        if not config.num_ps:
            env.update(TF_NUM_INTRAOP_THREADS=threads, TF_NUM_INTEROP_THREADS=threads)
        elif task_type == "worker":  # a 1-thread inter-op pool deadlocks concurrent remote steps (measured)
            env.update(TF_NUM_INTRAOP_THREADS=threads)
        gpus = config.worker_gpus[index] if task_type == "worker" else ("" if config.num_ps else None)
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus
        return env

    def _spawn(self, position: int) -> TaskProcess:
        config = self.config
        task_type, index = config.tasks[position]
        cores = config.worker_cores()[index] if task_type == "worker" else None
        process = subprocess.Popen(list(config.command), env=self._environment(task_type, index),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                   start_new_session=True,
                                   preexec_fn=functools.partial(_in_task_before_exec, os.getpid(), cores))
        task = TaskProcess(index, process, task_type)
        log_path = os.path.join(config.log_dir, task.log_name) if config.log_dir else None
        chief_type = "chief" if config.num_ps else "worker"
        shown = config.console == "all" or (config.console == "chief" and task_type == chief_type and index == 0)
        task.reader = threading.Thread(target=_stream, args=(task, log_path, self._lock, shown), daemon=True)
        task.reader.start()
        return task

    def stop_all(self) -> None:
        """SIGTERM every task's process group, SIGKILL what is left after the grace period.

        In a parameter-server job the chief goes first, alone: its SIGTERM save reads the
        variables from the ps tasks, which must still be there.
        """
        if self.config.num_ps:
            self._stop([t for t in self.tasks if t.task_type == "chief"])
        self._stop(self.tasks)

    def _stop(self, tasks: list[TaskProcess]) -> None:
        for sig, wait in ((signal.SIGTERM, self.config.grace_period), (signal.SIGKILL, None)):
            alive = [t for t in tasks if t.running()]
            for t in alive:
                try:
                    os.killpg(t.process.pid, sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + (wait or 0)
            while wait and any(t.running() for t in alive) and time.monotonic() < end:
                time.sleep(POLL_SECONDS)
        for t in tasks:
            t.process.wait()
            try:  # The group may hold children of the task: none may outlive it.
                os.killpg(t.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            t.finish_reading(timeout=5)


def job_temp_dir() -> str:
    """A temporary directory for this job's tasks (their TMPDIR); stale ones of dead launchers go."""
    root = tempfile.gettempdir()
    for entry in os.listdir(root):
        pid = entry[len(JOB_DIR_PREFIX):].split("-", 1)[0]
        if entry.startswith(JOB_DIR_PREFIX) and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{JOB_DIR_PREFIX}{os.getpid()}-", dir=root)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
