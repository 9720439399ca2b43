"""What the launcher prints: a task's end, the first failure and its cause, the closing line."""

from __future__ import annotations

import signal
import sys

from tfdp.launch.process_group import TaskProcess


def describe(returncode: int) -> str:
    """"exit code N" or "killed by signal NAME"."""
    if returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def say(message: str) -> None:
    """One line (or block) of the launcher's own, on stderr."""
    print(f"tfdp-launch: {message}", file=sys.stderr, flush=True)


def last_output(task: TaskProcess, lines: int | None = None) -> str:
    """The task's last output lines, indented."""
    tail = list(task.tail) if lines is None else list(task.tail)[-lines:]
    return "\n".join(f"    {line}" for line in tail)


def failure(task: TaskProcess, cause: tuple[int, str] | None) -> None:
    """The first failure with its last output, and the culprit when another worker stalled the job."""
    say(f"{task.name} failed first ({describe(task.process.returncode)}); its last output:\n{last_output(task)}")
    if cause is not None and cause[0] != task.index:
        say(f"the cause is worker {cause[0]}: {cause[1]}")


def closing_line(code: int, tasks: list[TaskProcess], restarts_used: int, max_restarts: int, seconds: float) -> None:
    """The last line of every run: exit code, each task's end, restarts, wall time."""
    statuses = ", ".join(f"{t.name} {describe(t.process.returncode)}" for t in tasks)
    say(f"exit code {code}; {statuses or 'no worker started'}; restarts used {restarts_used} of {max_restarts}; "
        f"wall time {seconds:.1f} s")
