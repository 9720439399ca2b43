"""tfdp-launch: run an N-worker TensorFlow job on this machine and never hang.

    tfdp-launch --num_workers 2 -- python train.py --flags...

The job runs in a network namespace of its own (loopback only: TensorFlow's gRPC servers
listen on every interface, unauthenticated; --network host opts out). Each worker gets
its TF_CONFIG (addresses on 127.0.0.1, free ports from the OS), its
output goes to --log_dir/worker-i.log and, for the chief by default (--console), to the
console with a "[worker i]" prefix; when
any worker fails the others are stopped (SIGTERM, then SIGKILL after a grace period),
the first failure is reported with the tail of its output, and the job is restarted
from scratch up to --max_restarts times. No TensorFlow is imported here.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import functools
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tfdp import netns, stacks
from tfdp.cluster import JOB_ID_ENV, SEED_ENV, TFConfig

RESTART_COUNT_ENV = "TFDP_RESTART_COUNT"
TAIL_LINES = 20
POLL_SECONDS = 0.05
STACK_DUMP_SECONDS = 2.0  # how long a still-running worker gets to print where it is
# What a worker prints when a collective it waited in timed out (TensorFlow's words).
_COLLECTIVE_TIMEOUT = re.compile(r"DeadlineExceeded|Deadline Exceeded|collective timed out|timed out", re.IGNORECASE)


def _env_default(name: str, default, kind=str):
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return kind(value)
    except ValueError:
        print(f"tfdp-launch: error: environment variable {name}={value!r} is not a valid {kind.__name__}. "
              f"Fix: correct it or unset it.", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfdp-launch",
        description="Run N TensorFlow worker processes on this machine, each with its TF_CONFIG.",
        epilog="Every option can also be set by an environment variable (TFDP_NUM_WORKERS, "
               "TFDP_NUM_PS, TFDP_MAX_RESTARTS, TFDP_LOG_DIR, TFDP_TIMEOUT, TFDP_GRACE_PERIOD, TFDP_PORT, "
               "TFDP_THREADS_PER_WORKER, TFDP_PIN, TFDP_GPUS_PER_WORKER, TFDP_NETWORK, TFDP_CONSOLE). Each "
               "worker also gets TFDP_JOB_ID, one id per job kept across restarts (set it to choose it).")
    parser.add_argument("--num_workers", type=int, default=_env_default("TFDP_NUM_WORKERS", None, int),
                        help="How many worker processes to start (required).")
    parser.add_argument("--num_ps", type=int, default=_env_default("TFDP_NUM_PS", 0, int),
                        help="Parameter servers: with P > 0 the job is a chief, --num_workers workers and P ps "
                             "tasks (create_strategy('parameter_server')); it ends when the chief ends, and a "
                             "failed worker is restarted alone (it rejoins) instead of stopping the job.")
    parser.add_argument("--max_restarts", type=int, default=_env_default("TFDP_MAX_RESTARTS", 0, int),
                        help="Restart all workers up to this many times after a failure (with --num_ps: a failed "
                             "worker alone; a chief or ps failure restarts the job).")
    parser.add_argument("--log_dir", default=_env_default("TFDP_LOG_DIR", None),
                        help="Also write each worker's output to LOG_DIR/worker-<i>.log.")
    parser.add_argument("--timeout", type=float, default=_env_default("TFDP_TIMEOUT", None, float),
                        help="Stop the job after this many seconds (exit code 124).")
    parser.add_argument("--grace_period", type=float, default=_env_default("TFDP_GRACE_PERIOD", 10.0, float),
                        help="Seconds between SIGTERM and SIGKILL when stopping workers.")
    parser.add_argument("--port", type=int, default=_env_default("TFDP_PORT", 0, int),
                        help="First port of the workers (ports PORT..PORT+N-1); 0: free ports from the OS.")
    parser.add_argument("--threads_per_worker", type=int,
                        default=_env_default("TFDP_THREADS_PER_WORKER", None, int),
                        help="TensorFlow intra-/inter-op threads of each worker (default: this machine's "
                             "cores divided by the workers, at least 1). With --num_ps: the workers' intra-op "
                             "threads only (the chief and ps tasks keep TensorFlow's defaults).")
    parser.add_argument("--pin", choices=["auto", "on", "off"], default=_env_default("TFDP_PIN", "off"),
                        help="Pin each worker to its own cores (like torchrun's NUMA binding). auto: when "
                             "workers x threads fit in this machine's cores. Off by default: on a 2-core "
                             "machine pinning 2 workers to 1 core each made them 3.5x slower, as their "
                             "gRPC and tf.data threads then share the compute core (docs/performance.md).")
    parser.add_argument("--gpus_per_worker", type=int, default=_env_default("TFDP_GPUS_PER_WORKER", None, int),
                        help="GPUs each worker sees (CUDA_VISIBLE_DEVICES, as torchrun's local ranks: worker i "
                             "gets the i-th group of the visible GPUs). Default: the visible GPUs split evenly, "
                             "nothing set when there are none. 0: the workers see no GPU.")
    parser.add_argument("--network", choices=["isolated", "host"], default=_env_default("TFDP_NETWORK", "isolated"),
                        help="isolated (default): the job runs in a network namespace of its own, so its "
                             "workers, whose TensorFlow gRPC servers listen on every interface without "
                             "authentication, are reachable from this job's loopback only. host: on this "
                             "machine's network (a warning; for machines that allow no namespaces).")
    parser.add_argument("--console", choices=["chief", "all", "none"], default=_env_default("TFDP_CONSOLE", "chief"),
                        help="Whose output the console shows, each line prefixed [worker i]: chief (worker 0, the "
                             "default), all, or none. --log_dir keeps every worker's whole output either way, and "
                             "a failed worker's last lines are reported whatever this says.")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="The worker command, after --, e.g. -- python train.py --epochs=3")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parses and checks the launcher's arguments; exits with a usage error on bad ones."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if args.num_workers is None:
        parser.error("--num_workers is required, e.g. --num_workers 2")
    if args.num_workers < 1:
        parser.error(f"--num_workers must be >= 1 (got {args.num_workers})")
    if args.num_ps < 0:
        parser.error(f"--num_ps must be >= 0 (got {args.num_ps})")
    if args.max_restarts < 0:
        parser.error(f"--max_restarts must be >= 0 (got {args.max_restarts})")
    if args.timeout is not None and args.timeout <= 0:
        parser.error(f"--timeout must be a number of seconds > 0 (got {args.timeout})")
    if args.grace_period < 0:
        parser.error(f"--grace_period must be >= 0 (got {args.grace_period})")
    tasks = num_tasks(args)
    if args.port and not 1024 <= args.port <= 65536 - tasks:
        parser.error(f"--port {args.port}: ports {args.port}..{args.port + tasks - 1} "
                     f"must lie in 1024..65535; pick a lower port or use 0 for free ports")
    if not args.command:
        parser.error("no worker command: put it after --, e.g. tfdp-launch --num_workers 2 -- python train.py")
    if shutil.which(args.command[0]) is None:
        parser.error(f"worker command {args.command[0]!r} not found (neither on PATH nor an executable file). "
                     f"Fix: give the program's path, e.g. -- {sys.executable} train.py")
    if args.log_dir and os.path.exists(args.log_dir) and not os.path.isdir(args.log_dir):
        parser.error(f"--log_dir {args.log_dir}: is a file, not a directory. Fix: name a directory (it is created)")
    cores = len(available_cores())
    if args.threads_per_worker is None:
        args.threads_per_worker = max(1, cores // args.num_workers)
    if args.threads_per_worker < 1:
        parser.error(f"--threads_per_worker must be >= 1 (got {args.threads_per_worker})")
    if args.pin == "on" and args.num_workers * args.threads_per_worker > cores:
        parser.error(f"--pin on: {args.num_workers} workers x {args.threads_per_worker} threads need "
                     f"{args.num_workers * args.threads_per_worker} cores and this machine offers {cores}; "
                     "lower --threads_per_worker or use --pin auto")
    try:
        args.worker_gpus = worker_gpus(args.num_workers, args.gpus_per_worker)
    except ValueError as e:
        parser.error(str(e))
    return args


def num_tasks(args: argparse.Namespace) -> int:
    """Processes of the job: the workers, plus a chief and the ps tasks in a parameter-server job."""
    return args.num_workers + (1 + args.num_ps if args.num_ps else 0)


def job_tasks(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(task type, index) of every process, in start order: the chief first."""
    workers = [("worker", i) for i in range(args.num_workers)]
    if not args.num_ps:
        return workers
    return [("chief", 0), *workers, *[("ps", i) for i in range(args.num_ps)]]


def visible_gpus() -> list[str]:
    """The GPUs this launcher may hand out: CUDA_VISIBLE_DEVICES if set, else the NVIDIA driver's."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu for gpu in visible.split(",") if gpu.strip()]
    try:
        return [str(i) for i in range(len(os.listdir("/proc/driver/nvidia/gpus")))]
    except OSError:
        return []


def worker_gpus(num_workers: int, gpus_per_worker: int | None) -> list[str | None]:
    """Each worker's CUDA_VISIBLE_DEVICES (None: leave it as it is).

    Raises:
        ValueError: more GPUs asked for than are visible.
    """
    gpus = visible_gpus()
    if gpus_per_worker is None:
        if not gpus:
            return [None] * num_workers
        if len(gpus) < num_workers:
            raise ValueError(f"{num_workers} workers and {len(gpus)} visible GPU(s): give each worker a GPU with "
                             f"--num_workers {len(gpus)}, or run on the CPU with --gpus_per_worker 0")
        gpus_per_worker = len(gpus) // num_workers
    if gpus_per_worker < 0 or gpus_per_worker * num_workers > len(gpus):
        raise ValueError(f"--gpus_per_worker {gpus_per_worker}: {num_workers} workers x {gpus_per_worker} GPUs "
                         f"need {num_workers * gpus_per_worker} and {len(gpus)} are visible "
                         f"({','.join(gpus) or 'none'}); lower it, or 0 for the CPU")
    return [",".join(gpus[i * gpus_per_worker:(i + 1) * gpus_per_worker]) for i in range(num_workers)]


def available_cores() -> list[int]:
    """The CPU cores this process may run on, in order."""
    return sorted(os.sched_getaffinity(0))


def worker_cores(args: argparse.Namespace) -> list[list[int] | None]:
    """Each worker's own cores when pinning applies, else None for each."""
    cores = available_cores()
    n, threads = args.num_workers, args.threads_per_worker
    if args.pin == "off" or n * threads > len(cores):
        return [None] * n
    return [cores[i * threads:(i + 1) * threads] for i in range(n)]


def free_ports(count: int) -> list[int]:
    """Ports on 127.0.0.1 that the OS reports free (held together so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _in_worker_before_exec(launcher_pid: int, cores: list[int] | None) -> None:
    """Runs in each worker between fork and exec: dies with the launcher, pinned if asked.

    The worker runs in its own session (so a Ctrl-C reaches the launcher, which stops the
    workers in order); the parent-death signal makes the kernel SIGKILL it when the
    launcher dies however it dies (SIGKILL included), so no worker outlives the job.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != launcher_pid:  # the launcher died before the prctl took effect
        os._exit(1)
    if cores:
        os.sched_setaffinity(0, cores)


@dataclass
class Worker:
    """One running task process (a worker, or a parameter-server job's chief or ps) and the tail of its output."""

    index: int
    process: subprocess.Popen
    task_type: str = "worker"
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES))
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))
    reader: threading.Thread | None = None
    restarts: int = 0
    lost: bool = False  # a parameter-server job's worker that ended and was not restarted

    @property
    def name(self) -> str:
        return "chief" if self.task_type == "chief" else f"{self.task_type} {self.index}"


def _stream(worker: Worker, log_path: str | None, lock: threading.Lock, shown: bool) -> None:
    log = open(log_path, "a", encoding="utf-8") if log_path else None
    try:
        for line in worker.process.stdout:
            worker.tail.append(line.rstrip("\n"))
            worker.recent.append(line.rstrip("\n"))
            if shown:
                with lock:
                    sys.stdout.write(f"[{worker.name}] {line}")
                    sys.stdout.flush()
            if log:
                log.write(line)
                log.flush()
    finally:
        if log:
            log.close()


def _describe(returncode: int) -> str:
    if returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


# TensorFlow's coordination service names tasks that stopped sending heartbeats.
_UNHEALTHY = re.compile(r"unhealthy.*?/job:worker/replica:0/task:(\d+)", re.IGNORECASE)


def _process_state(pid: int) -> str | None:
    """The kernel's one-letter state of a process (R, S, T for stopped, Z), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


class Launcher:
    """Starts, watches and stops one attempt of the job at a time."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.workers: list[Worker] = []
        self.stopped: list[int] = []
        self.stuck: dict[int, list[str]] = {}  # still running when a peer's collective timed out: where
        self.lock = threading.Lock()
        self.stop_signal: int | None = None
        self.seed = os.environ.get(SEED_ENV) or str(random.randrange(2**31))
        self.job_id = os.environ.get(JOB_ID_ENV) or f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.restarts_used, self.attempt, self.ports = 0, 0, []

    def start(self, attempt: int) -> None:
        tasks = job_tasks(self.args)
        self.ports = (list(range(self.args.port, self.args.port + len(tasks))) if self.args.port
                      else free_ports(len(tasks)))
        if self.args.log_dir:
            os.makedirs(self.args.log_dir, exist_ok=True)
        self.attempt = attempt
        self.workers = [self._start_task(position, attempt) for position in range(len(tasks))]

    def _cluster(self) -> dict[str, list[str]]:
        cluster: dict[str, list[str]] = {}
        for (task_type, _), port in zip(job_tasks(self.args), self.ports):
            cluster.setdefault(task_type, []).append(f"127.0.0.1:{port}")
        return cluster

    def _start_task(self, position: int, attempt: int) -> Worker:
        """Starts the task at `position` of job_tasks (again, on its port, when it is restarted alone)."""
        task_type, index = job_tasks(self.args)[position]
        threads = str(self.args.threads_per_worker)
        tf_config = TFConfig(cluster=self._cluster(), task_type=task_type, task_index=index)
        env = dict(os.environ, TF_CONFIG=tf_config.to_json(),
                   **{RESTART_COUNT_ENV: str(attempt), SEED_ENV: self.seed, JOB_ID_ENV: self.job_id,
                      "PYTHONUNBUFFERED": "1"})
        if not self.args.num_ps:
            env.update(TF_NUM_INTRAOP_THREADS=threads, TF_NUM_INTEROP_THREADS=threads)
        elif task_type == "worker":  # a 1-thread inter-op pool deadlocks concurrent remote steps (measured)
            env.update(TF_NUM_INTRAOP_THREADS=threads)
        gpus = self.args.worker_gpus[index] if task_type == "worker" else ("" if self.args.num_ps else None)
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus
        cores = worker_cores(self.args)[index] if task_type == "worker" else None
        process = subprocess.Popen(self.args.command, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace",
                                   start_new_session=True,
                                   preexec_fn=functools.partial(_in_worker_before_exec, os.getpid(), cores))
        worker = Worker(index, process, task_type)
        log_name = "chief" if task_type == "chief" else f"{task_type}-{index}"
        log_path = os.path.join(self.args.log_dir, f"{log_name}.log") if self.args.log_dir else None
        chief_type = "chief" if self.args.num_ps else "worker"
        shown = self.args.console == "all" or (self.args.console == "chief" and task_type == chief_type
                                                and index == 0)
        worker.reader = threading.Thread(target=_stream, args=(worker, log_path, self.lock, shown), daemon=True)
        worker.reader.start()
        return worker

    def wait(self, deadline: float | None) -> tuple[str, Worker | None]:
        """Returns ("ok", None), ("failed", first failed worker), ("timeout"|"signal", None)."""
        if self.args.num_ps:
            return self._wait_parameter_server_job(deadline)
        while True:
            if self.stop_signal is not None:
                return "signal", None
            codes = [w.process.poll() for w in self.workers]
            failed = [w for w, code in zip(self.workers, codes) if code not in (None, 0)]
            if failed:
                self.stopped = [w.index for w in self.workers if _process_state(w.process.pid) == "T"]
                self.stuck = self._where_stuck(failed[0]) if not self.stopped else {}
                return "failed", failed[0]
            if all(code == 0 for code in codes):
                return "ok", None
            if deadline is not None and time.monotonic() > deadline:
                return "timeout", None
            time.sleep(POLL_SECONDS)

    def _wait_parameter_server_job(self, deadline: float | None) -> tuple[str, Worker | None]:
        """A parameter-server job ends with its chief; a lost worker is restarted alone while restarts last."""
        chief = self.workers[0]
        while True:
            if self.stop_signal is not None:
                return "signal", None
            code = chief.process.poll()
            if code is not None:
                return ("ok", None) if code == 0 else ("failed", chief)
            for position, w in enumerate(self.workers):
                code = w.process.poll()
                if code is None or w.task_type == "chief" or w.lost:
                    continue
                if w.task_type == "ps":  # the variables live there: the job cannot go on
                    return "failed", w
                self._lose_worker(position, w, code)
            if all(w.lost for w in self.workers if w.task_type == "worker"):
                return "failed", next(w for w in self.workers if w.task_type == "worker")
            if deadline is not None and time.monotonic() > deadline:
                return "timeout", None
            time.sleep(POLL_SECONDS)

    def _lose_worker(self, position: int, worker: Worker, code: int) -> None:
        """A worker of a parameter-server job ended while the chief runs: restart it alone, or go on without it."""
        if worker.reader:
            worker.reader.join(timeout=2)
        tail = "\n".join(f"    {line}" for line in list(worker.tail)[-5:])
        if self.restarts_used < self.args.max_restarts:
            self.restarts_used += 1
            print(f"tfdp-launch: {worker.name} lost ({_describe(code)}); restarting it alone, on its address "
                  f"(restart {self.restarts_used} of {self.args.max_restarts}); its last output:\n{tail}",
                  file=sys.stderr, flush=True)
            self.workers[position] = self._start_task(position, self.attempt)
            self.workers[position].restarts = worker.restarts + 1
        else:
            worker.lost = True
            print(f"tfdp-launch: {worker.name} lost ({_describe(code)}); no restart left (--max_restarts "
                  f"{self.args.max_restarts}): the job goes on with the other workers; its last output:\n{tail}",
                  file=sys.stderr, flush=True)

    def _where_stuck(self, failed: Worker) -> dict[int, list[str]]:
        """After a collective timeout: where each worker still running is (its stack dump)."""
        if failed.reader:
            failed.reader.join(timeout=2)  # its last words, complete
        if not any(_COLLECTIVE_TIMEOUT.search(line) for line in failed.tail):
            return {}
        running = [w for w in self.workers if w.process.poll() is None]
        for w in running:
            w.recent.clear()
            try:
                os.kill(w.process.pid, stacks.DUMP_SIGNAL)
            except ProcessLookupError:
                pass
        time.sleep(STACK_DUMP_SECONDS)
        return {w.index: stacks.main_thread_frames(list(w.recent)) for w in running
                if w.process.poll() is None}

    def stop_all(self) -> None:
        """SIGTERM every worker's process group, SIGKILL what is left after the grace period.

        In a parameter-server job the chief goes first, alone: its SIGTERM save reads the
        variables from the ps tasks, which must still be there.
        """
        if self.args.num_ps:
            self._stop([w for w in self.workers if w.task_type == "chief"])
        self._stop(self.workers)

    def _stop(self, workers: list[Worker]) -> None:
        for sig, wait in ((signal.SIGTERM, self.args.grace_period), (signal.SIGKILL, None)):
            alive = [w for w in workers if w.process.poll() is None]
            for w in alive:
                try:
                    os.killpg(w.process.pid, sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + (wait or 0)
            while wait and any(w.process.poll() is None for w in alive) and time.monotonic() < end:
                time.sleep(POLL_SECONDS)
        for w in workers:
            w.process.wait()
            try:  # The group may hold children of the worker: none may outlive it.
                os.killpg(w.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if w.reader:
                w.reader.join(timeout=5)

    def report(self, worker: Worker) -> None:
        tail = "\n".join(f"    {line}" for line in worker.tail)
        print(f"tfdp-launch: {worker.name} failed first ({_describe(worker.process.returncode)}); "
              f"its last output:\n{tail}", file=sys.stderr)
        culprit = self.culprit()
        if culprit is not None and culprit[0] != worker.index:
            print(f"tfdp-launch: the cause is worker {culprit[0]}: {culprit[1]}", file=sys.stderr)

    def culprit(self) -> tuple[int, str] | None:
        """(worker, why) when a worker other than the first to fail stalled the job, else None."""
        if self.stopped:
            return self.stopped[0], "it was stopped (SIGSTOP or a debugger) while its peers waited for it"
        for w in self.workers:
            for line in w.tail:
                match = _UNHEALTHY.search(line)
                if match:
                    return int(match.group(1)), f"TensorFlow reports it unhealthy (worker {w.index}'s output)"
        for index, frames in self.stuck.items():
            where = "; ".join(frames) or "no Python stack printed (it did not call tfdp.create_strategy)"
            return index, (f"it was still running, outside the collective its peers timed out in, at: {where}")
        return None


def _isolate_network(args: argparse.Namespace) -> bool:
    """Puts the job in its own network namespace (--network isolated); False: refused, said why."""
    if args.network == "host":
        print("tfdp-launch: --network host: the workers' TensorFlow gRPC servers listen on every interface of "
              "this machine, unauthenticated; run only on an isolated network.", file=sys.stderr)
        return True
    try:
        netns.isolate()
    except OSError as e:
        print(f"tfdp-launch: cannot give the job a network namespace of its own ({e}), and without one its "
              "workers' TensorFlow gRPC servers listen on every interface, unauthenticated. Fix: run as root "
              "or where unprivileged user namespaces are allowed (sysctl kernel.unprivileged_userns_clone=1, "
              "or a container started with them), or pass --network host to accept the exposure.",
              file=sys.stderr)
        return False
    return True


def _busy_ports(ports: Sequence[int]) -> list[int]:
    """The ports among `ports` that something on this network already listens on (TF binds 0.0.0.0)."""
    busy = []
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                busy.append(port)
    return busy


JOB_DIR_PREFIX = "tfdp-job-"


def _job_temp_dir() -> str:
    """A temporary directory for this job's workers (their TMPDIR); stale ones of dead launchers go."""
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


def run(args: argparse.Namespace) -> int:
    """Runs the job; returns the launcher's exit code (and prints one closing line)."""
    if not _isolate_network(args):
        return 2
    fixed_ports = list(range(args.port, args.port + num_tasks(args))) if args.port else []
    busy = _busy_ports(fixed_ports)
    if busy:
        print(f"tfdp-launch: error: --port {args.port}: port(s) {', '.join(map(str, busy))} are in use on this "
              "network. Fix: another --port, or 0 for free ports.", file=sys.stderr)
        return 2
    launcher = Launcher(args)
    started, code = time.monotonic(), 1

    def on_signal(signum, frame):
        launcher.stop_signal = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    deadline = time.monotonic() + args.timeout if args.timeout else None
    job_dir = _job_temp_dir()
    os.environ["TMPDIR"] = job_dir  # the workers' private files live and die with the job
    everyone = (f"all {args.num_workers} workers" if not args.num_ps else
                f"the whole job (chief, {args.num_workers} workers, {args.num_ps} ps)")
    try:
        attempt = 0
        while True:
            launcher.start(attempt)
            outcome, failed = launcher.wait(deadline)
            launcher.stop_all()
            if outcome == "ok":
                code = 0
                return code
            if outcome == "signal":
                print(f"tfdp-launch: stopped all workers on {signal.Signals(launcher.stop_signal).name}",
                      file=sys.stderr)
                code = 128 + launcher.stop_signal
                return code
            if outcome == "timeout":
                print(f"tfdp-launch: the job did not finish within --timeout {args.timeout:g} s; "
                      "stopped all workers", file=sys.stderr)
                code = 124
                return code
            launcher.report(failed)
            if launcher.restarts_used >= args.max_restarts:
                break
            launcher.restarts_used += 1
            attempt += 1
            print(f"tfdp-launch: restarting {everyone} (restart {launcher.restarts_used} of {args.max_restarts})",
                  file=sys.stderr)
        returncode = failed.process.returncode
        code = returncode if returncode > 0 else 128 - returncode
        return code
    finally:
        launcher.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(job_dir, ignore_errors=True)
        statuses = ", ".join(f"{w.name} {_describe(w.process.returncode)}" for w in launcher.workers)
        print(f"tfdp-launch: exit code {code}; {statuses or 'no worker started'}; restarts used "
              f"{launcher.restarts_used} of {args.max_restarts}; wall time {time.monotonic() - started:.1f} s",
              file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `tfdp-launch` and `python -m tfdp.launch`."""
    return run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
