"""Which task stalled the job, and where: read from the kernel, TensorFlow's words and stack dumps.

The first task to fail is often not the cause: in a collective every worker waits for
the slowest, so the one that timed out first names only the symptom. The culprit is a
task stopped by a signal or a debugger (the kernel's process state), one TensorFlow's
coordination service calls unhealthy, or one still running outside the collective its
peers timed out in (its Python stack, dumped on `stacks.DUMP_SIGNAL`).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field

from tfdp import stacks
from tfdp.launch.process_group import TaskProcess

STACK_DUMP_SECONDS = 2.0  # how long a still-running task gets to print where it is
# What a worker prints when a collective it waited in timed out (TensorFlow's words).
_COLLECTIVE_TIMEOUT = re.compile(r"DeadlineExceeded|Deadline Exceeded|collective timed out|timed out", re.IGNORECASE)
# TensorFlow's coordination service names tasks that stopped sending heartbeats.
_UNHEALTHY = re.compile(r"unhealthy.*?/job:worker/replica:0/task:(\d+)", re.IGNORECASE)


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of a process (R, S, T for stopped, Z), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


@dataclass
class Diagnosis:
    """What was seen when a task failed: the stopped tasks, and where the running ones were."""

    stopped: list[int] = field(default_factory=list)
    stuck: dict[int, list[str]] = field(default_factory=dict)  # still running when a collective timed out


def diagnose(tasks: list[TaskProcess], failed: TaskProcess) -> Diagnosis:
    """Looks at the job right after `failed` ended, before the others are stopped."""
    stopped = [t.index for t in tasks if process_state(t.process.pid) == "T"]
    return Diagnosis(stopped=stopped, stuck={} if stopped else _where_stuck(tasks, failed))


def _where_stuck(tasks: list[TaskProcess], failed: TaskProcess) -> dict[int, list[str]]:
    """After a collective timeout: where each task still running is (its stack dump)."""
    failed.finish_reading()  # its last words, complete
    if not any(_COLLECTIVE_TIMEOUT.search(line) for line in failed.tail):
        return {}
    running = [t for t in tasks if t.running()]
    for t in running:
        t.recent.clear()
        try:
            os.kill(t.process.pid, stacks.DUMP_SIGNAL)
        except ProcessLookupError:
            pass
    time.sleep(STACK_DUMP_SECONDS)
    return {t.index: stacks.main_thread_frames(list(t.recent)) for t in running if t.running()}


def culprit(tasks: list[TaskProcess], diagnosis: Diagnosis) -> tuple[int, str] | None:
    """(worker, why) when a worker other than the first to fail stalled the job, else None."""
    if diagnosis.stopped:
        return diagnosis.stopped[0], "it was stopped (SIGSTOP or a debugger) while its peers waited for it"
    for t in tasks:
        for line in t.tail:
            match = _UNHEALTHY.search(line)
            if match:
                return int(match.group(1)), f"TensorFlow reports it unhealthy (worker {t.index}'s output)"
    for index, frames in diagnosis.stuck.items():
        where = "; ".join(frames) or "no Python stack printed (it did not call tfdp.create_strategy)"
        return index, f"it was still running, outside the collective its peers timed out in, at: {where}"
    return None
