"""tfdp-launch's arguments: flags with TFDP_* defaults -> one frozen, checked LaunchConfig.

Every flag's default comes from an environment variable (torchrun's convention), read by
`tfdp.env_defaults`; a malformed one is a usage error naming the variable. What the
rest of the launcher needs is derived here once: the tasks in start order, each
worker's threads, cores and GPUs, the job id and seed kept across restarts.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from tfdp.cluster import JOB_ID_ENV, SEED_ENV
from tfdp.env_defaults import env_default
from tfdp.errors import ConfigError
from tfdp.launch import resources

# Flags renamed to say what they bound: old spelling -> (new flag, its variable, the old variable).
_RENAMED = {"--timeout": ("--job_timeout", "TFDP_JOB_TIMEOUT", "TFDP_TIMEOUT")}


@dataclass(frozen=True)
class LaunchConfig:
    """One job, as the launcher runs it (see `tfdp-launch --help` for each field)."""

    command: tuple[str, ...]
    num_workers: int
    num_ps: int = 0
    max_restarts: int = 0
    log_dir: str | None = None
    job_timeout: float | None = None
    grace_period: float = 10.0
    port: int = 0
    threads_per_worker: int = 1
    pin: str = "off"
    worker_gpus: tuple[str | None, ...] = ()
    network: str = "isolated"
    console: str = "chief"
    job_id: str = ""
    seed: str = ""

    @property
    def tasks(self) -> list[tuple[str, int]]:
        """(task type, index) of every process, in start order: the chief first."""
        workers = [("worker", i) for i in range(self.num_workers)]
        if not self.num_ps:
            return workers
        return [("chief", 0), *workers, *[("ps", i) for i in range(self.num_ps)]]

    @property
    def fixed_ports(self) -> list[int]:
        """The ports --port asks for, one per task (empty: free ports from the OS)."""
        return list(range(self.port, self.port + len(self.tasks))) if self.port else []

    def worker_cores(self) -> list[list[int] | None]:
        """Each worker's own cores when pinning applies, else None for each."""
        return resources.worker_cores(self.num_workers, self.threads_per_worker, self.pin)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfdp-launch",
        description="Run N TensorFlow worker processes on this machine, each with its TF_CONFIG.",
        epilog="Every option can also be set by an environment variable (TFDP_NUM_WORKERS, "
               "TFDP_NUM_PS, TFDP_MAX_RESTARTS, TFDP_LOG_DIR, TFDP_JOB_TIMEOUT, TFDP_GRACE_PERIOD, TFDP_PORT, "
               "TFDP_THREADS_PER_WORKER, TFDP_PIN, TFDP_GPUS_PER_WORKER, TFDP_NETWORK, TFDP_CONSOLE). Each "
               "worker also gets TFDP_JOB_ID, one id per job kept across restarts (set it to choose it).")
    parser.add_argument("--num_workers", type=int, default=env_default("TFDP_NUM_WORKERS", None, kind=int),
                        help="How many worker processes to start (required).")
    parser.add_argument("--num_ps", type=int, default=env_default("TFDP_NUM_PS", 0, kind=int),
                        help="Parameter servers: with P > 0 the job is a chief, --num_workers workers and P ps "
                             "tasks (create_strategy('parameter_server')); it ends when the chief ends, and a "
                             "failed worker is restarted alone (it rejoins) instead of stopping the job.")
    parser.add_argument("--max_restarts", type=int, default=env_default("TFDP_MAX_RESTARTS", 0, kind=int),
                        help="Restart all workers up to this many times after a failure (with --num_ps: a failed "
                             "worker alone; a chief or ps failure restarts the job).")
    parser.add_argument("--log_dir", default=env_default("TFDP_LOG_DIR", None),
                        help="Also write each task's output to LOG_DIR/worker-<i>.log (chief.log, ps-<i>.log).")
    job_timeout = env_default("TFDP_JOB_TIMEOUT", None, kind=float)
    parser.add_argument("--job_timeout", type=float, default=job_timeout,
                        help="Stop the whole job after this many seconds of wall time (exit code 124).")
    parser.add_argument("--timeout", type=float, default=None if job_timeout is not None else
                        env_default("TFDP_TIMEOUT", None, kind=float), help=argparse.SUPPRESS)
    parser.add_argument("--grace_period", type=float, default=env_default("TFDP_GRACE_PERIOD", 10.0, kind=float),
                        help="Seconds between SIGTERM and SIGKILL when stopping workers.")
    parser.add_argument("--port", type=int, default=env_default("TFDP_PORT", 0, kind=int),
                        help="First port of the tasks (ports PORT..PORT+N-1); 0: free ports from the OS.")
    parser.add_argument("--threads_per_worker", type=int,
                        default=env_default("TFDP_THREADS_PER_WORKER", None, kind=int),
                        help="TensorFlow intra-/inter-op threads of each worker (default: this machine's "
                             "cores divided by the workers, at least 1). With --num_ps: the workers' intra-op "
                             "threads only (the chief and ps tasks keep TensorFlow's defaults).")
    pins = ("auto", "on", "off")
    parser.add_argument("--pin", choices=pins, default=env_default("TFDP_PIN", "off", choices=pins),
                        help="Pin each worker to its own cores (like torchrun's NUMA binding). auto: when "
                             "workers x threads fit in this machine's cores. Off by default: on a 2-core "
                             "machine pinning 2 workers to 1 core each made them 3.5x slower, as their "
                             "gRPC and tf.data threads then share the compute core (docs/performance.md).")
    parser.add_argument("--gpus_per_worker", type=int, default=env_default("TFDP_GPUS_PER_WORKER", None, kind=int),
                        help="GPUs each worker sees (CUDA_VISIBLE_DEVICES, as torchrun's local ranks: worker i "
                             "gets the i-th group of the visible GPUs). Default: the visible GPUs split evenly, "
                             "nothing set when there are none. 0: the workers see no GPU.")
    networks = ("isolated", "host")
    parser.add_argument("--network", choices=networks,
                        default=env_default("TFDP_NETWORK", "isolated", choices=networks),
                        help="isolated (default): the job runs in a network namespace of its own, so its "
                             "workers, whose TensorFlow gRPC servers listen on every interface without "
                             "authentication, are reachable from this job's loopback only. host: on this "
                             "machine's network (a warning; for machines that allow no namespaces).")
    consoles = ("chief", "all", "none")
    parser.add_argument("--console", choices=consoles, default=env_default("TFDP_CONSOLE", "chief", choices=consoles),
                        help="Whose output the console shows, each line prefixed [worker i]: chief (worker 0, the "
                             "default), all, or none. --log_dir keeps every worker's whole output either way, and "
                             "a failed worker's last lines are reported whatever this says.")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="The worker command, after --, e.g. -- python train.py --epochs=3")
    return parser


def _renamed(args: argparse.Namespace) -> None:
    """Old spellings still work, with a DeprecationWarning naming the new one."""
    for old, (new, variable, old_variable) in _RENAMED.items():
        value = getattr(args, old.lstrip("-"))
        if value is not None:
            warnings.warn(f"tfdp-launch {old} (and {old_variable}) is now {new} ({variable}): it bounds the whole "
                          "job's wall time. The old name will go.", DeprecationWarning, stacklevel=3)
            print(f"tfdp-launch: warning: {old} is deprecated; use {new}", file=sys.stderr)
            if getattr(args, new.lstrip("-")) is None:
                setattr(args, new.lstrip("-"), value)


def parse_args(argv: Sequence[str]) -> LaunchConfig:
    """Parses and checks the launcher's arguments; exits with a usage error (2) on bad ones."""
    try:
        parser = _parser()
    except ConfigError as e:
        print(f"tfdp-launch: error: {e}", file=sys.stderr)
        sys.exit(2)
    args = parser.parse_args(argv)
    _renamed(args)
    try:
        return _config(args)
    except ConfigError as e:
        parser.error(str(e))


def _config(args: argparse.Namespace) -> LaunchConfig:
    command = args.command[1:] if args.command and args.command[0] == "--" else args.command
    if args.num_workers is None:
        raise ConfigError("--num_workers is required, e.g. --num_workers 2")
    if args.num_workers < 1:
        raise ConfigError(f"--num_workers must be >= 1 (got {args.num_workers})")
    if args.num_ps < 0:
        raise ConfigError(f"--num_ps must be >= 0 (got {args.num_ps})")
    if args.max_restarts < 0:
        raise ConfigError(f"--max_restarts must be >= 0 (got {args.max_restarts})")
    if args.job_timeout is not None and not args.job_timeout > 0:
        raise ConfigError(f"--job_timeout must be a number of seconds > 0 (got {args.job_timeout})")
    if not args.grace_period >= 0:
        raise ConfigError(f"--grace_period must be >= 0 (got {args.grace_period})")
    tasks = args.num_workers + (1 + args.num_ps if args.num_ps else 0)
    if args.port and not 1024 <= args.port <= 65536 - tasks:
        raise ConfigError(f"--port {args.port}: ports {args.port}..{args.port + tasks - 1} must lie in "
                          "1024..65535; pick a lower port or use 0 for free ports")
    if not command:
        raise ConfigError("no worker command: put it after --, e.g. tfdp-launch --num_workers 2 -- python train.py")
    if shutil.which(command[0]) is None:
        raise ConfigError(f"worker command {command[0]!r} not found (neither on PATH nor an executable file). "
                          f"Fix: give the program's path, e.g. -- {sys.executable} train.py")
    if args.log_dir and os.path.exists(args.log_dir) and not os.path.isdir(args.log_dir):
        raise ConfigError(f"--log_dir {args.log_dir}: is a file, not a directory. Fix: name a directory "
                          "(it is created)")
    cores = len(resources.available_cores())
    threads = args.threads_per_worker if args.threads_per_worker is not None else max(1, cores // args.num_workers)
    if threads < 1:
        raise ConfigError(f"--threads_per_worker must be >= 1 (got {threads})")
    if args.pin == "on" and args.num_workers * threads > cores:
        raise ConfigError(f"--pin on: {args.num_workers} workers x {threads} threads need "
                          f"{args.num_workers * threads} cores and this machine offers {cores}; "
                          "lower --threads_per_worker or use --pin auto")
    try:
        gpus = resources.worker_gpus(args.num_workers, args.gpus_per_worker)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return LaunchConfig(
        command=tuple(command), num_workers=args.num_workers, num_ps=args.num_ps, max_restarts=args.max_restarts,
        log_dir=args.log_dir, job_timeout=args.job_timeout, grace_period=args.grace_period, port=args.port,
        threads_per_worker=threads, pin=args.pin, worker_gpus=tuple(gpus), network=args.network,
        console=args.console,
        job_id=os.environ.get(JOB_ID_ENV) or f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
        seed=os.environ.get(SEED_ENV) or str(random.randrange(2**31)))
