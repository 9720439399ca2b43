"""Where a recipe run writes (its model_dir), and whether a run there already finished.

The default model_dir is per job, so that two runs of the same command never resume or
overwrite each other, while the workers of one job (and a restarted job) share one:
/tmp/tfdp_runs/<job id> (TFDP_RUNS_DIR/<job id> when set), the job id being tfdp-launch's (stable across its restarts),
SLURM's or Kubernetes' job, or the cluster of TF_CONFIG; a run outside any job gets a
new timestamped directory.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Mapping

from tfdp.cluster import JOB_ID_ENV, TFConfig

ROOT_ENV, DEFAULT_ROOT = "TFDP_RUNS_DIR", "/tmp/tfdp_runs"
RESULTS = "results.json"


def job_id(environ: Mapping[str, str]) -> str:
    """The id every worker of this job computes alike; a fresh one outside a job."""
    if environ.get(JOB_ID_ENV):
        return environ[JOB_ID_ENV]
    if environ.get("SLURM_JOB_ID"):
        return f"slurm-{environ['SLURM_JOB_ID']}"
    tf_config = TFConfig.from_env(environ)
    if tf_config is not None and tf_config.num_tasks > 1:
        return f"cluster-{zlib.crc32(json.dumps(tf_config.cluster, sort_keys=True).encode()):08x}"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def resolve(model_dir: str | None, environ: Mapping[str, str] | None = None) -> str:
    """--model_dir, or the job's default directory under TFDP_RUNS_DIR (default /tmp/tfdp_runs)."""
    env = os.environ if environ is None else environ
    return model_dir or os.path.join(env.get(ROOT_ENV) or DEFAULT_ROOT, job_id(env))


def finished(model_dir: str) -> bool:
    """Whether a run already finished there (it wrote results.json last)."""
    return os.path.exists(os.path.join(model_dir, RESULTS))
