"""tfdp-launch: run an N-worker TensorFlow job on this machine and never hang.

    tfdp-launch --num_workers 2 -- python train.py --flags...

The job runs in a network namespace of its own (loopback only: TensorFlow's gRPC servers
listen on every interface, unauthenticated; --network host opts out). Each task gets its
TF_CONFIG (addresses on 127.0.0.1, free ports from the OS); its output goes to
--log_dir/worker-i.log (a parameter-server job's chief to chief.log, its ps tasks to
ps-i.log) and, for the chief by default (--console), to the console with a "[worker i]"
prefix. When a task fails the others are stopped (SIGTERM, then SIGKILL after a grace
period), the first failure is reported with the tail of its output and the cause when
another task stalled the job, and the job is restarted from scratch up to
--max_restarts times (a parameter-server job restarts a lost worker alone). No
TensorFlow is imported here.

The layers, as torchrun's: `config` (flags and TFDP_* defaults -> a frozen LaunchConfig),
`supervisor` (the restart policies and the one restart counter), `process_group`
(spawning the tasks: environment, parent-death signal, logs, console prefixes),
`diagnosis` (which task stalled the job, and where), `report` (what is printed), with
`resources` (ports, cores, GPUs) and `network` (the namespace) below them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tfdp.launch.config import LaunchConfig, parse_args
from tfdp.launch.resources import free_ports
from tfdp.launch.supervisor import run

__all__ = ["LaunchConfig", "free_ports", "main", "parse_args", "run"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `tfdp-launch` and `python -m tfdp.launch`."""
    return run(parse_args(sys.argv[1:] if argv is None else argv))
