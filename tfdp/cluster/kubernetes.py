"""A Kubernetes Indexed Job (or JobSet) -> the cluster of one worker per pod.

Kubernetes gives each pod of an Indexed Job its index (JOB_COMPLETION_INDEX) and,
with a headless Service named in the pod's `subdomain`, a stable DNS name
`<job>-<index>.<service>[.<namespace>]`. The manifest tells tfdp the rest through
these variables (see docs/clusters.md for a complete manifest):

    TFDP_K8S_WORKERS    how many pods train (the Job's completions and parallelism)
    TFDP_K8S_JOB        the Job's name, the prefix of its pods' host names
                        (a JobSet: "<jobset>-<replicated job>-0")
    TFDP_K8S_SERVICE    the headless Service (the pods' subdomain)
    TFDP_K8S_NAMESPACE  optional: the namespace, for names resolvable from anywhere
    TFDP_K8S_PORT       optional: the port every pod listens on (default 12345)
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from tfdp.cluster.scheduler_env import DEFAULT_PORT, required, whole_number
from tfdp.errors import ConfigError

INDEX_VAR = "JOB_COMPLETION_INDEX"
WORKERS_VAR = "TFDP_K8S_WORKERS"
_FIX = "set it in the pod template's env (docs/clusters.md has a complete manifest)."
# A DNS label, as Kubernetes names Jobs, Services and namespaces.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def detected(env: Mapping[str, str]) -> bool:
    """Whether this process runs in a pod of an Indexed Job that tfdp was told about."""
    return bool(env.get(INDEX_VAR, "").strip() and env.get(WORKERS_VAR, "").strip())


def cluster_from_kubernetes(env: Mapping[str, str], *, port: int | None = None) -> tuple[list[str], int]:
    """(every worker's address in index order, this pod's index).

    Raises:
        ConfigError: naming the variable that is missing or malformed.
    """
    workers = whole_number(env, WORKERS_VAR, why="the number of worker pods", fix=_FIX, low=1)
    index = whole_number(env, INDEX_VAR, why="the pod's index (Kubernetes sets it for completionMode: Indexed)",
                         fix=_FIX, low=0, high=workers - 1)
    names = {name: required(env, name, why=why, fix=_FIX) for name, why in (
        ("TFDP_K8S_JOB", "the Job's name, which prefixes its pods' host names"),
        ("TFDP_K8S_SERVICE", "the headless Service named in the pods' subdomain"))}
    if env.get("TFDP_K8S_NAMESPACE", "").strip():
        names["TFDP_K8S_NAMESPACE"] = env["TFDP_K8S_NAMESPACE"].strip()
    for name, value in names.items():
        if not _LABEL.fullmatch(value):
            raise ConfigError(f"{name}={value!r} is not a Kubernetes name (lower-case letters, digits and '-'). "
                              "Fix: use the object's metadata.name (docs/clusters.md has a complete manifest).")
    if port is None:
        port = whole_number(env, "TFDP_K8S_PORT", why="the port every pod listens on", fix=_FIX, low=1024,
                            high=65535) if env.get("TFDP_K8S_PORT", "").strip() else DEFAULT_PORT
    domain = ".".join(names[n] for n in ("TFDP_K8S_SERVICE", "TFDP_K8S_NAMESPACE") if n in names)
    return [f"{names['TFDP_K8S_JOB']}-{i}.{domain}:{port}" for i in range(workers)], index
