"""A network namespace of its own for a local job, so its workers are reachable from loopback only.

TensorFlow's gRPC server binds 0.0.0.0:PORT whatever address TF_CONFIG gives (the bind
address is hard-coded in grpc_server_lib.cc) and has no authentication: on the host
network a local job's workers accept connections from anywhere. Moving the launcher into
a new network namespace before it starts any worker leaves the job one interface, its own
loopback: every worker reaches the others on 127.0.0.1, nothing outside can reach them.
Linux only; as root a network namespace is enough, as another user an unprivileged user
namespace (where the kernel allows it) makes one. No TensorFlow is imported here.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = "16sH22x"  # struct ifreq: the interface name, then its flags


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _bring_up_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        _, flags = struct.unpack(_IFREQ, fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0)))
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def isolate() -> str:
    """Moves this (single-threaded) process into a new network namespace with loopback up.

    Every process it starts afterwards inherits the namespace.

    Returns:
        How: "network namespace" or "user + network namespace".

    Raises:
        OSError: the kernel refused (no CAP_SYS_ADMIN and no unprivileged user namespaces,
            a seccomp filter, a non-Linux system).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.geteuid(), os.getegid()
    flags = _CLONE_NEWNET if uid == 0 else _CLONE_NEWNET | _CLONE_NEWUSER
    if libc.unshare(flags) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"unshare: {os.strerror(error)}")
    if uid != 0:  # keep our own identity inside the user namespace
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    _bring_up_loopback()
    return "network namespace" if uid == 0 else "user + network namespace"
