"""The job's network: a namespace of its own (loopback only), or the host's with a warning."""

from __future__ import annotations

import sys

from tfdp import netns


def isolate(network: str) -> bool:
    """Puts this process (and so the job) in its own network namespace for "isolated".

    Returns:
        False when the namespace was refused (said why on stderr); True otherwise,
        including "host", which warns of the exposure.
    """
    if network == "host":
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
