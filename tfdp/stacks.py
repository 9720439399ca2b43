"""Where a worker is: its Python stacks on a signal, and reading them back from its output.

When a collective times out, the worker that never joined it is alive and says nothing.
A multi-worker process made by `tfdp.create_strategy` dumps every thread's Python stack
to stderr on DUMP_SIGNAL (faulthandler: C-level, works while TensorFlow holds the GIL),
and tfdp-launch reads the dump to say where the stuck worker was. SIGURG is used
because its default action is to do nothing: a program that never enabled the dump is
not hurt by being asked.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
from collections.abc import Iterable

DUMP_SIGNAL = signal.SIGURG
_HEADERS = ("Thread 0x", "Current thread 0x")


def enable_dump_on_signal() -> None:
    """Makes DUMP_SIGNAL print all Python stacks to stderr, unless the program handles it."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(DUMP_SIGNAL) in (signal.SIG_DFL, None):
        faulthandler.register(DUMP_SIGNAL, file=sys.stderr, all_threads=True)


def main_thread_frames(lines: Iterable[str], *, frames: int = 3) -> list[str]:
    """The innermost `frames` lines of the last dumped stack that runs the program's <module>."""
    blocks: list[list[str]] = []
    for line in lines:
        if line.startswith(_HEADERS):
            blocks.append([])
        elif blocks and line.lstrip().startswith("File "):
            blocks[-1].append(line.strip())
    for block in reversed(blocks):
        if any(line.endswith(" in <module>") for line in block):
            return block[:frames]
    return []
