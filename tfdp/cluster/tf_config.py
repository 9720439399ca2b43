"""TF_CONFIG as a validated data model.

This module never imports TensorFlow, so the launcher and any early check can use
it: every malformed TF_CONFIG is reported as a `ConfigError` naming the field and
the fix before any TensorFlow runtime state exists.

TF_CONFIG looks like::

    {"cluster": {"chief": ["host:port"], "worker": ["host:port", ...]},
     "task": {"type": "worker", "index": 0}}

It accepts what TensorFlow accepts: Google Cloud's extra keys ("environment", "job",
and "trial", "cloud" in the task) are kept and type-checked; any other key is kept
too, unless it looks like a typo of a known one. The "master" job of older cloud
configs is the chief's old name and is read as "chief".
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from tfdp.cluster import kubernetes, scheduler_env, slurm
from tfdp.errors import ConfigError, did_you_mean

ENV_VAR = "TF_CONFIG"
# One seed per job, the same on every worker (tfdp-launch sets it; tfdp.strategy reads it).
SEED_ENV = "TFDP_SEED"
# One id per job, the same on every worker and across the launcher's restarts (tfdp-launch sets it).
JOB_ID_ENV = "TFDP_JOB_ID"
TASK_TYPES = ("chief", "worker", "ps", "evaluator")
# Task types that take part in the all-reduce of a multi-worker strategy.
TRAINING_TASK_TYPES = ("chief", "worker")
# Keys TensorFlow or a platform writes, and the JSON type each must have.
_EXTRA_KEYS = {"environment": str, "job": dict, "session_master": str}
_TOP_LEVEL_KEYS = ("cluster", "task", "rpc_layer", *_EXTRA_KEYS)
_EXTRA_TASK_KEYS = {"trial": str, "cloud": str}
_TASK_KEYS = ("type", "index", *_EXTRA_TASK_KEYS)
_SINGLETON_JOBS = ("chief", "evaluator")
_OLD_CHIEF = "master"  # TF 1 and older Cloud ML Engine runtimes


def _extra_keys(where: str, data: Mapping[str, Any], known: Sequence[str],
                types: Mapping[str, type]) -> dict[str, Any]:
    """The keys of `data` beyond `known`: type-checked when a platform defines them, kept;
    a key that looks like a typo of a known one is an error."""
    extra = {}
    for key, value in data.items():
        if key in known and key not in types:
            continue
        if key in types:
            if not isinstance(value, types[key]):
                raise _fail(f'{where}"{key}"', f"is a {type(value).__name__}, not a JSON "
                            f"{'object' if types[key] is dict else 'string'}",
                            "write it as the platform does, or leave it out")
        elif difflib.get_close_matches(str(key), known, n=1, cutoff=0.75):
            raise _fail(f'{where}"{key}"', "is not a TF_CONFIG key", f"use {', '.join(known)}."
                        f"{did_you_mean(key, known)}")
        extra[key] = value
    return extra


def _fail(field: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"TF_CONFIG {field}: {problem}. Fix: {fix}")


def _check_address(job: str, index: int, address: object) -> str:
    field = f'cluster["{job}"][{index}]'
    if not isinstance(address, str) or not address.strip():
        raise _fail(field, f"{address!r} is not an address string",
                    'write it as "host:port", e.g. "127.0.0.1:12345"')
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise _fail(field, f'address "{address}" has no port',
                    f'write it as "host:port", e.g. "{address}:12345"')
    if not port.isdigit():
        raise _fail(field, f'port "{port}" of "{address}" is not a number',
                    'write it as "host:port" with a numeric port')
    if not 1 <= int(port) <= 65535:
        raise _fail(field, f'port {port} of "{address}" is out of range',
                    "use a port between 1 and 65535")
    return address


def _host(address: str) -> str:
    return address.rpartition(":")[0].strip("[]")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class TFConfig:
    """A validated TF_CONFIG.

    Attributes:
        cluster: job name -> list of "host:port" addresses.
        task_type: this process's job ("chief", "worker", "ps" or "evaluator").
        task_index: this process's index within its job.
        rpc_layer: the RPC protocol, usually "grpc" or None for TensorFlow's default.
        extra: other top-level keys, kept as given (e.g. Google Cloud's "environment", "job").
        task_extra: other task keys, kept as given (e.g. Google Cloud's "trial", "cloud").
    """

    cluster: Mapping[str, tuple[str, ...]]
    task_type: str
    task_index: int
    rpc_layer: str | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    task_extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.cluster, Mapping):
            raise _fail("cluster", f"is a {type(self.cluster).__name__}, not an object",
                        'give an object of job name -> address list, e.g. '
                        '{"worker": ["127.0.0.1:12345"]}')
        if not self.cluster:
            raise _fail("cluster", "is empty", 'list at least one job, e.g. {"worker": ["127.0.0.1:12345"]}')
        jobs: dict[str, tuple[str, ...]] = {}
        seen: dict[str, str] = {}
        for job, addresses in self.cluster.items():
            if job == _OLD_CHIEF and "chief" not in self.cluster:
                job = "chief"
            if job not in TASK_TYPES:
                raise _fail(f'cluster["{job}"]', "is not a known job",
                            f"use one of {', '.join(TASK_TYPES)}.{did_you_mean(job, TASK_TYPES)}")
            if isinstance(addresses, str) or not isinstance(addresses, Sequence):
                raise _fail(f'cluster["{job}"]', f"is a {type(addresses).__name__}, not a list",
                            f'give a list of addresses, e.g. "{job}": ["127.0.0.1:12345"]')
            if not addresses:
                raise _fail(f'cluster["{job}"]', "is an empty list",
                            "list at least one address or leave the job out")
            if job in _SINGLETON_JOBS and len(addresses) > 1:
                raise _fail(f'cluster["{job}"]', f"has {len(addresses)} addresses; there can be only one {job}",
                            f'keep one {job} and list the others under "worker"')
            for index, address in enumerate(addresses):
                address = _check_address(job, index, address)
                if address in seen:
                    raise _fail(f'cluster["{job}"][{index}]',
                                f'address "{address}" is also {seen[address]}',
                                "give every task its own host:port")
                seen[address] = f'cluster["{job}"][{index}]'
            jobs[job] = tuple(addresses)
        object.__setattr__(self, "cluster", jobs)
        if self.task_type == _OLD_CHIEF and _OLD_CHIEF not in jobs:
            object.__setattr__(self, "task_type", "chief")

        if not isinstance(self.task_type, str) or self.task_type not in TASK_TYPES:
            raise _fail("task.type", f"{self.task_type!r} is not a known task type",
                        f"use one of {', '.join(TASK_TYPES)}.{did_you_mean(self.task_type, TASK_TYPES)}")
        if self.task_type not in jobs:
            raise _fail("task.type", f'"{self.task_type}" has no job in cluster (jobs: {", ".join(jobs)})',
                        f'add a "{self.task_type}" list to cluster or set task.type to one of its jobs')
        if isinstance(self.task_index, bool) or not isinstance(self.task_index, int):
            raise _fail("task.index", f"{self.task_index!r} is not an integer",
                        "give the task's position in its job's list as a whole number, e.g. 0")
        size = len(jobs[self.task_type])
        if not 0 <= self.task_index < size:
            raise _fail("task.index", f'{self.task_index} is out of range: job "{self.task_type}" has '
                        f"{size} address(es)", f"use an index from 0 to {size - 1}")
        if self.rpc_layer is not None and not isinstance(self.rpc_layer, str):
            raise _fail("rpc_layer", f"{self.rpc_layer!r} is not a string", 'use "grpc" or leave it out')

    # -- construction -------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> "TFConfig":
        """Parses and validates TF_CONFIG JSON text.

        Raises:
            ConfigError: naming the faulty field and the fix.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"TF_CONFIG is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}). "
                'Fix: it must be a JSON object such as {"cluster": {"worker": ["127.0.0.1:12345"]}, '
                '"task": {"type": "worker", "index": 0}}; check quotes (JSON needs double quotes) '
                "and your shell's escaping.") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> "TFConfig":
        """Validates an already decoded TF_CONFIG object."""
        if not isinstance(data, dict):
            raise ConfigError(f"TF_CONFIG is a JSON {type(data).__name__}, not an object. "
                              'Fix: give an object with "cluster" and "task" keys.')
        extra = _extra_keys("key ", data, _TOP_LEVEL_KEYS, _EXTRA_KEYS)
        if "cluster" not in data:
            raise _fail("cluster", "is missing",
                        'add "cluster": {"worker": ["host:port", ...]} listing every task')
        if "task" not in data:
            raise _fail("task", "is missing",
                        'add "task": {"type": "worker", "index": N} saying which task this process is')
        task = data["task"]
        if not isinstance(task, dict):
            raise _fail("task", f"is a {type(task).__name__}, not an object",
                        'write it as {"type": "worker", "index": 0}')
        task_extra = _extra_keys("task key ", task, _TASK_KEYS, _EXTRA_TASK_KEYS)
        if "type" not in task:
            raise _fail("task.type", "is missing", 'add "type": "worker" (or "chief", "ps", "evaluator")')
        if "index" not in task:
            raise _fail("task.index", "is missing", 'add "index": N, this task\'s position in its job\'s list')
        cluster = data["cluster"]
        if not isinstance(cluster, dict):
            raise _fail("cluster", f"is a JSON {type(cluster).__name__}, not an object",
                        'give an object of job name -> address list, e.g. {"worker": ["127.0.0.1:12345"]}')
        return cls(cluster=cluster, task_type=task["type"], task_index=task["index"],
                   rpc_layer=data.get("rpc_layer"), extra=extra, task_extra=task_extra)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "TFConfig | None":
        """This process's cluster: TF_CONFIG, or failing that a Kubernetes Indexed Job's
        variables (`tfdp.cluster.kubernetes`); None when neither is set."""
        env = os.environ if environ is None else environ
        text = env.get(ENV_VAR, "")
        if text.strip():
            return cls.parse(text)
        if kubernetes.detected(env):
            return cls.from_kubernetes(env)
        return None

    @classmethod
    def local_workers(cls, ports: Sequence[int], task_index: int, *,
                      host: str = "127.0.0.1") -> "TFConfig":
        """The TF_CONFIG of worker `task_index` in a cluster of workers on one host."""
        return cls(cluster={"worker": [f"{host}:{port}" for port in ports]},
                   task_type="worker", task_index=task_index)

    @classmethod
    def from_slurm(cls, environ: Mapping[str, str] | None = None, *,
                   port: int = scheduler_env.DEFAULT_PORT) -> "TFConfig":
        """The TF_CONFIG of this SLURM task: one worker per task, ranked by SLURM_PROCID.

        Tasks on a node listen on `port`, `port + 1`, ... by their local id; ranks are
        placed on nodes by SLURM_DISTRIBUTION (block, cyclic or plane) and checked against
        SLURMD_NODENAME, SLURM_NODEID and SLURM_LOCALID.

        Raises:
            ConfigError: naming the SLURM variable that is missing, malformed or disagrees.
        """
        addresses, rank = slurm.cluster_from_slurm(os.environ if environ is None else environ, port=port)
        return cls(cluster={"worker": addresses}, task_type="worker", task_index=rank)

    @classmethod
    def from_kubernetes(cls, environ: Mapping[str, str] | None = None, *,
                        port: int | None = None) -> "TFConfig":
        """The TF_CONFIG of this pod of a Kubernetes Indexed Job: one worker per pod.

        Raises:
            ConfigError: naming the variable that is missing or malformed.
        """
        addresses, index = kubernetes.cluster_from_kubernetes(os.environ if environ is None else environ,
                                                              port=port)
        return cls(cluster={"worker": addresses}, task_type="worker", task_index=index)

    # -- rendering ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The TF_CONFIG object, as TensorFlow reads it."""
        data: dict[str, Any] = {
            "cluster": {job: list(addresses) for job, addresses in self.cluster.items()},
            "task": {"type": self.task_type, "index": self.task_index},
        }
        data["task"].update(self.task_extra)
        if self.rpc_layer is not None:
            data["rpc_layer"] = self.rpc_layer
        data.update(self.extra)
        return data

    def to_json(self) -> str:
        """The TF_CONFIG JSON text to put in the environment."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    # -- roles --------------------------------------------------------------------

    @property
    def num_workers(self) -> int:
        """Tasks that train: the chief (if any) plus the workers."""
        return sum(len(self.cluster.get(job, ())) for job in TRAINING_TASK_TYPES)

    @property
    def num_tasks(self) -> int:
        """Every task of the cluster, of every job."""
        return sum(len(addresses) for addresses in self.cluster.values())

    @property
    def is_chief(self) -> bool:
        """The chief writes the user's files: the "chief" task, else worker 0; an evaluator is
        the chief of its own one-task cluster, as TensorFlow has it."""
        if self.task_type == "evaluator":
            return True
        if "chief" in self.cluster:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def worker_rank(self) -> int | None:
        """This task's position among the training tasks (chief first), or None."""
        if self.task_type not in TRAINING_TASK_TYPES:
            return None
        offset = len(self.cluster.get("chief", ())) if self.task_type == "worker" else 0
        return offset + self.task_index

    @property
    def address(self) -> str:
        """This task's own host:port."""
        return self.cluster[self.task_type][self.task_index]

    def non_loopback_addresses(self) -> list[str]:
        """Addresses that leave this machine (TF's gRPC is unauthenticated: warn)."""
        return [a for addresses in self.cluster.values() for a in addresses
                if not _is_loopback(_host(a))]
