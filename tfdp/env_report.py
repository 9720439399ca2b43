"""`tfdp env`: what this install and this process's environment are, to check or paste.

Versions come from the installed packages' metadata; the cluster from TF_CONFIG, SLURM,
Kubernetes or Ray as tfdp reads them; TensorFlow is imported once, at the end, for the
devices, the repairs this Keras needs and its thread settings (a broken TensorFlow is
reported there, not raised).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Any

from tfdp.errors import ConfigError

PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "keras-nightly", "tensorflow-datasets", "tfdp", "ray",
            "absl-py", "numpy")
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                    "KERAS_BACKEND", "TF_USE_LEGACY_KERAS")


def versions() -> dict[str, str | None]:
    """Python's and the installed packages' versions (None: not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _cluster(environ: dict[str, str]) -> dict[str, Any]:
    """Which scheduler set this process up, and the roles its cluster gives this task."""
    from tfdp.cluster import TFConfig, kubernetes

    sources = [name for name, present in (
        ("TF_CONFIG", bool(environ.get("TF_CONFIG", "").strip())),
        ("SLURM", "SLURM_JOB_ID" in environ),
        ("Kubernetes", kubernetes.detected(environ)),
        ("Ray", any(key.startswith("RAY_") for key in environ) and "TF_CONFIG" in environ),
        ("tfdp-launch", "TFDP_RESTART_COUNT" in environ),
    ) if present]
    info: dict[str, Any] = {"detected": sources}
    try:
        tf_config = TFConfig.from_env(environ)
    except ConfigError as e:
        info["error"] = str(e)
        return info
    if tf_config is None:
        info["roles"] = "no cluster: one process (create_strategy('auto') picks mirrored or default)"
        return info
    non_local = tf_config.non_loopback_addresses()
    info.update({
        "task": f"{tf_config.task_type} {tf_config.task_index}", "address": tf_config.address,
        "is_chief": tf_config.is_chief, "workers": tf_config.num_workers,
        "jobs": {job: len(addresses) for job, addresses in tf_config.cluster.items()},
        "loopback_only": not non_local, "non_loopback_addresses": non_local,
    })
    return info


def _tensorflow() -> dict[str, Any]:
    """Devices, repairs and threads, as TensorFlow and Keras report them."""
    try:
        from tfdp._requirements import import_tensorflow

        tf = import_tensorflow()
        from tfdp import keras_fixes
    except (ImportError, ConfigError) as e:
        return {"error": str(e)}
    repairs = []
    for fix in keras_fixes.FIXES:
        entry = {"name": fix.name, "needed": keras_fixes.is_needed(fix), "reproduced_on": list(fix.reproduced),
                 "upstream": fix.upstream}
        try:
            fix.check()
            entry["installs"] = True
        except Exception as e:  # noqa: BLE001 -- a missing internal, reported as it is
            entry["installs"], entry["why_not"] = False, str(e)
        repairs.append(entry)
    return {
        "devices": [f"{d.device_type}:{d.name.rsplit(':', 1)[-1]}" for d in tf.config.list_physical_devices()],
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "built_with_cuda": tf.test.is_built_with_cuda(),
        "verified_keras": list(keras_fixes.VERIFIED_KERAS),
        "repairs": repairs,
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads() or "auto (cores)",
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads() or "auto (cores)"},
    }


def collect(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The whole report as a JSON-ready dict."""
    env = dict(os.environ if environ is None else environ)
    return {
        "versions": versions(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python_executable": sys.executable,
        "cores": {"machine": os.cpu_count(), "this_process": len(os.sched_getaffinity(0))},
        "variables": {name: env[name] for name in THREAD_VARIABLES if name in env},
        "cluster": _cluster(env),
        "tensorflow": _tensorflow(),
    }


def render(report: dict[str, Any]) -> str:
    """The report as aligned text lines."""
    lines = ["Versions:"]
    lines += [f"  {name:20} {version}" for name, version in report["versions"].items() if version]
    lines += [f"Platform:              {report['platform']}", f"Python:                {report['python_executable']}",
              f"Cores:                 {report['cores']['this_process']} usable of {report['cores']['machine']}"]
    for name, value in report["variables"].items():
        lines.append(f"  {name}={value}")
    cluster = report["cluster"]
    lines.append(f"Cluster:               detected {', '.join(cluster['detected']) or 'nothing'}")
    if "error" in cluster:
        lines.append(f"  ERROR {cluster['error']}")
    elif "task" in cluster:
        lines.append(f"  this task {cluster['task']} at {cluster['address']}, chief: {cluster['is_chief']}, "
                     f"{cluster['workers']} training task(s), jobs {cluster['jobs']}")
        lines.append("  addresses: loopback only" if cluster["loopback_only"] else
                     f"  addresses beyond loopback (TensorFlow's gRPC is unauthenticated: an isolated network "
                     f"only): {', '.join(cluster['non_loopback_addresses'])}")
    else:
        lines.append(f"  {cluster['roles']}")
    tf_info = report["tensorflow"]
    if "error" in tf_info:
        lines.append(f"TensorFlow:            ERROR {tf_info['error']}")
        return "\n".join(lines)
    lines.append(f"Devices:               {', '.join(tf_info['devices'])} (CUDA build: {tf_info['built_with_cuda']})")
    lines.append(f"Threads:               intra-op {tf_info['threads']['intra_op']}, "
                 f"inter-op {tf_info['threads']['inter_op']}")
    lines.append(f"Keras repairs:         verified on Keras {' to '.join(tf_info['verified_keras'])}")
    for fix in tf_info["repairs"]:
        state = ("installs" if fix["installs"] else f"CANNOT INSTALL: {fix['why_not']}") if fix["needed"] \
            else "not needed (fixed upstream)"
        lines.append(f"  {fix['name']:22} {state}")
    return "\n".join(lines)
