"""What a local job may use on this machine: ports, CPU cores, GPUs. No TensorFlow."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence


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


def busy_ports(ports: Sequence[int]) -> list[int]:
    """The ports among `ports` that something on this network already listens on (TF binds 0.0.0.0)."""
    busy = []
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                busy.append(port)
    return busy


def available_cores() -> list[int]:
    """The CPU cores this process may run on, in order."""
    return sorted(os.sched_getaffinity(0))


def worker_cores(num_workers: int, threads_per_worker: int, pin: str) -> list[list[int] | None]:
    """Each worker's own cores when pinning applies ("on", or "auto" when they fit), else None for each."""
    cores = available_cores()
    if pin == "off" or num_workers * threads_per_worker > len(cores):
        return [None] * num_workers
    return [cores[i * threads_per_worker:(i + 1) * threads_per_worker] for i in range(num_workers)]


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
