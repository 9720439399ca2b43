"""Bounds the wait for a multi-worker cluster to form, and names the tasks that never came.

`tf.distribute.MultiWorkerMirroredStrategy()` blocks inside TensorFlow until every task
of TF_CONFIG has started: the coordination leader (worker 0) waits with no deadline,
holding Python's GIL and ignoring SIGTERM, so no thread of the process can end the wait.
A small watchdog process (`python -m tfdp.startup`, no TensorFlow) probes the peers'
addresses meanwhile; if the strategy is not made within the start-up timeout, it prints
which tasks never listened and SIGKILLs the waiting process. The process tells the
watchdog it is done by closing the watchdog's stdin (its own death does the same).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from tfdp.cluster import TRAINING_TASK_TYPES, TFConfig
from tfdp.errors import ConfigError

PROBE_SECONDS = 0.5


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def _resolves(address: str) -> bool:
    try:
        socket.getaddrinfo(address.rpartition(":")[0].strip("[]"), None)
        return True
    except OSError:
        return False


class Peers:
    """The other tasks of a TF_CONFIG, and which of them have accepted a connection."""

    def __init__(self, tf_config: TFConfig):
        self.own_address = tf_config.address
        own = (tf_config.task_type, tf_config.task_index)
        self.tasks = [(job, index, address) for job, addresses in tf_config.cluster.items()
                      if job in TRAINING_TASK_TYPES  # the tasks that join at start-up
                      for index, address in enumerate(addresses) if (job, index) != own]
        self.answered: set[str] = set()

    def probe(self) -> None:
        for _, _, address in self.tasks:
            if address not in self.answered and _listening(address):
                self.answered.add(address)

    def why(self) -> str:
        """Why the cluster did not form, naming the tasks that never accepted a connection."""
        missing = [f"{job} {index} ({address})" for job, index, address in self.tasks
                   if address not in self.answered]
        if not _resolves(self.own_address):
            return (f"this task's own address {self.own_address} does not resolve on this machine. Fix: "
                    "correct the host name (on Kubernetes, TFDP_K8S_JOB and TFDP_K8S_SERVICE must name the "
                    "Job and its headless Service, and the pods' subdomain must be that Service)")
        if missing:
            return (f"{', '.join(missing)} never accepted a connection. Fix: start every task TF_CONFIG "
                    "lists (tfdp-launch starts them all) and check their addresses and firewalls")
        return ("every task listens, but they did not all join: one may be stuck before create_strategy() "
                "or run with a TF_CONFIG that lists other tasks. Fix: give every task the same cluster")


class StartupWatchdog:
    """A context manager around making the strategy: the process is ended if it takes too long."""

    def __init__(self, tf_config: TFConfig, *, seconds: float):
        self.tf_config, self.seconds = tf_config, seconds
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "StartupWatchdog":
        env = dict(os.environ, TF_CONFIG=self.tf_config.to_json())
        self._process = subprocess.Popen(  # ends itself when our end of its stdin closes
            [sys.executable, "-m", "tfdp.startup", str(os.getpid()), str(self.seconds)],
            stdin=subprocess.PIPE, env=env)
        return self

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.stdin.close()
            self._process.wait()
            self._process = None

    def error(self) -> ConfigError:
        """The ConfigError for TensorFlow giving up before the watchdog did."""
        peers = Peers(self.tf_config)
        peers.probe()
        return ConfigError(f"the cluster did not form (create_strategy): {peers.why()}, or allow a slower "
                           "start with a larger startup_timeout_seconds.")


def watch(parent: int, seconds: float, tf_config: TFConfig) -> int:
    """The watchdog process: SIGKILLs `parent` after `seconds` unless stdin closes first."""
    peers, deadline = Peers(tf_config), time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sys.stdin], [], [], PROBE_SECONDS)
        if ready:  # closed (or written to): the strategy is made, or the parent is gone
            return 0
        peers.probe()
    sys.stderr.write(f"tfdp: the cluster did not form within {seconds:g} s (create_strategy("
                     f"startup_timeout_seconds)): {peers.why()}, or allow a slower start with a larger "
                     "startup_timeout_seconds. Ending the waiting process (TensorFlow's wait cannot be "
                     "interrupted).\n")
    sys.stderr.flush()
    try:
        os.kill(parent, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfdp.startup", description=__doc__.split("\n")[0])
    parser.add_argument("parent", type=int, help="PID of the process making the strategy.")
    parser.add_argument("seconds", type=float, help="How long it may take.")
    args = parser.parse_args(argv)
    tf_config = TFConfig.from_env()
    if tf_config is None:
        parser.error("TF_CONFIG is not set")
    return watch(args.parent, args.seconds, tf_config)


if __name__ == "__main__":
    sys.exit(main())
