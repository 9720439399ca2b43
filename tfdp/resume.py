"""The line a resumed run starts with, and the shape of the job a checkpoint was written by.

Both checkpoint kinds (the Trainer's model_dir and model.fit's BackupAndRestore) record how
many workers and replicas wrote them; a run resumed on another shape says so:

    resumed from <checkpoint> at epoch 1 step 3 (written by 2 workers, 2 replicas; now 3 workers, 3 replicas)
"""

from __future__ import annotations

from tfdp import roles


def job_shape(strategy) -> dict[str, int]:
    """{"workers": worker processes, "replicas": replicas in sync} of `strategy`'s job."""
    return {"workers": roles.num_workers(strategy), "replicas": int(strategy.num_replicas_in_sync)}


def _describe(shape: dict) -> str:
    return f"{shape['workers']} worker{'s' * (shape['workers'] != 1)}, {shape['replicas']} " \
           f"replica{'s' * (shape['replicas'] != 1)}"


def announce(where: str, *, epoch: int, step: int, written_by: dict | None, now: dict) -> None:
    """Prints where a run resumed (on the chief: the caller decides), and the job's change of shape."""
    line = f"resumed from {where} at epoch {epoch} step {step}"
    if written_by and {k: written_by.get(k) for k in now} != now:
        line += f" (written by {_describe(written_by)}; now {_describe(now)})"
    print(line, flush=True)
