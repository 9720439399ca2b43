"""The supervisor: runs attempts of the job under its restart policy, with one restart counter.

Two policies, by the kind of job:
- all workers (synchronous jobs): the job succeeds when every worker exits 0; the first
  failure stops all of them, and the whole job restarts while restarts last;
- a parameter-server job: the job ends with its chief; a lost worker is restarted
  alone on its address (it rejoins) while restarts last, else the job goes on without
  it; a lost ps or chief fails the attempt, and the whole job restarts.
Both spend restarts from the same budget (--max_restarts) through `_take_restart`.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

from tfdp.launch import diagnosis, network, report, resources
from tfdp.launch.config import LaunchConfig
from tfdp.launch.process_group import POLL_SECONDS, ProcessGroup, TaskProcess, job_temp_dir


class Supervisor:
    """Starts, watches and stops one attempt of the job at a time; owns the restart count."""

    def __init__(self, config: LaunchConfig):
        self.config = config
        self.group = ProcessGroup(config)
        self.restarts_used = 0
        self.stop_signal: int | None = None
        self.cause: tuple[int, str] | None = None

    def _take_restart(self) -> bool:
        """Spends one restart if any is left (the one place the count changes)."""
        if self.restarts_used >= self.config.max_restarts:
            return False
        self.restarts_used += 1
        return True

    def run_attempts(self, deadline: float | None) -> int:
        """Runs the job until it succeeds, is stopped, times out, or has no restart left; its exit code."""
        config, attempt = self.config, 0
        everyone = (f"all {config.num_workers} workers" if not config.num_ps else
                    f"the whole job (chief, {config.num_workers} workers, {config.num_ps} ps)")
        while True:
            self.group.start(attempt)
            outcome, failed = self._wait(deadline)
            self.group.stop_all()
            if outcome == "ok":
                return 0
            if outcome == "signal":
                report.say(f"stopped all workers on {signal.Signals(self.stop_signal).name}")
                return 128 + self.stop_signal
            if outcome == "timeout":
                report.say(f"the job did not finish within --job_timeout {config.job_timeout:g} s; "
                           "stopped all workers")
                return 124
            report.failure(failed, self.cause)
            if not self._take_restart():
                returncode = failed.process.returncode
                return returncode if returncode > 0 else 128 - returncode
            attempt += 1
            report.say(f"restarting {everyone} (restart {self.restarts_used} of {config.max_restarts})")

    def _wait(self, deadline: float | None) -> tuple[str, TaskProcess | None]:
        """("ok", None), ("failed", the first failed task), or ("timeout" | "signal", None)."""
        poll = self._poll_parameter_server_job if self.config.num_ps else self._poll_all_workers
        while True:
            if self.stop_signal is not None:
                return "signal", None
            outcome = poll()
            if outcome is not None:
                return outcome
            if deadline is not None and time.monotonic() > deadline:
                return "timeout", None
            time.sleep(POLL_SECONDS)

    def _poll_all_workers(self) -> tuple[str, TaskProcess | None] | None:
        tasks = self.group.tasks
        codes = [t.process.poll() for t in tasks]
        failed = [t for t, code in zip(tasks, codes) if code not in (None, 0)]
        if failed:
            seen = diagnosis.diagnose(tasks, failed[0])
            self.cause = diagnosis.culprit(tasks, seen)
            return "failed", failed[0]
        if all(code == 0 for code in codes):
            return "ok", None
        return None

    def _poll_parameter_server_job(self) -> tuple[str, TaskProcess | None] | None:
        tasks = self.group.tasks
        code = tasks[0].process.poll()  # the chief
        if code is not None:
            return ("ok", None) if code == 0 else self._failed(tasks[0])
        for position, task in enumerate(tasks):
            code = task.process.poll()
            if code is None or task.task_type == "chief" or task.lost:
                continue
            if task.task_type == "ps":  # the variables live there: the job cannot go on
                return self._failed(task)
            self._lose_worker(position, task, code)
        workers = [t for t in self.group.tasks if t.task_type == "worker"]
        if all(t.lost for t in workers):
            return self._failed(workers[0])
        return None

    def _failed(self, task: TaskProcess) -> tuple[str, TaskProcess]:
        """A parameter-server job's attempt failed with `task` (no collectives: no stack dumps to ask for)."""
        self.cause = diagnosis.culprit(self.group.tasks, diagnosis.Diagnosis())
        return "failed", task

    def _lose_worker(self, position: int, task: TaskProcess, code: int) -> None:
        """A parameter-server job's worker ended while the chief runs: restart it alone, or go on without it."""
        task.finish_reading()
        tail = report.last_output(task, 5)
        if self._take_restart():
            report.say(f"{task.name} lost ({report.describe(code)}); restarting it alone, on its address "
                       f"(restart {self.restarts_used} of {self.config.max_restarts}); its last output:\n{tail}")
            self.group.restart(position)
        else:
            task.lost = True
            report.say(f"{task.name} lost ({report.describe(code)}); no restart left (--max_restarts "
                       f"{self.config.max_restarts}): the job goes on with the other workers; its last "
                       f"output:\n{tail}")


def run(config: LaunchConfig) -> int:
    """Runs the job; returns the launcher's exit code (and prints one closing line)."""
    if not network.isolate(config.network):
        return 2
    busy = resources.busy_ports(config.fixed_ports)
    if busy:
        report.say(f"error: --port {config.port}: port(s) {', '.join(map(str, busy))} are in use on this "
                   "network. Fix: another --port, or 0 for free ports.")
        return 2
    supervisor = Supervisor(config)
    started, code = time.monotonic(), 1

    def on_signal(signum, frame):
        supervisor.stop_signal = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    deadline = time.monotonic() + config.job_timeout if config.job_timeout else None
    job_dir = job_temp_dir()
    os.environ["TMPDIR"] = job_dir  # the tasks' private files live and die with the job
    try:
        code = supervisor.run_attempts(deadline)
        return code
    finally:
        supervisor.group.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(job_dir, ignore_errors=True)
        report.closing_line(code, supervisor.group.tasks, supervisor.restarts_used, config.max_restarts,
                            time.monotonic() - started)
