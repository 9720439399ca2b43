"""SLURM's job environment -> the cluster of one worker per task.

SLURM describes a job step by its node list (a compressed host list such as
"gpu[01-02]-ib,cpu7"), tasks per node ("2(x3),1") and a distribution of task ranks
over the nodes (block, cyclic, plane=N). Every task computes the same cluster from
them, and checks that the place it gives this task is where SLURM put it
(SLURMD_NODENAME, SLURM_NODEID, SLURM_LOCALID), so a placement tfdp got wrong is an
error, not a TF_CONFIG naming another task's address.

Host lists are expanded as `scontrol show hostnames` does, by a parser of their
grammar below: python-hostlist (the maintained parser) is GPL-2.0+, which an
Apache-2.0 package cannot depend on.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping

from tfdp.cluster.scheduler_env import DEFAULT_PORT, required
from tfdp.errors import ConfigError


def _hostlist_error(hostlist: str, problem: str) -> ConfigError:
    return ConfigError(f"SLURM host list {hostlist!r}: {problem}. Fix: pass SLURM's own SLURM_JOB_NODELIST "
                       "(or check it with `scontrol show hostnames`).")


def _split_names(hostlist: str) -> list[str]:
    """The comma-separated names of a host list (commas inside brackets belong to ranges)."""
    names, depth, start = [], 0, 0
    for i, char in enumerate(hostlist):
        if char == "[":
            depth += 1
            if depth > 1:
                raise _hostlist_error(hostlist, f"a bracket inside a bracket at position {i}")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise _hostlist_error(hostlist, f"a ']' without its '[' at position {i}")
        elif char == "," and depth == 0:
            names.append(hostlist[start:i])
            start = i + 1
    if depth:
        raise _hostlist_error(hostlist, "a '[' is never closed")
    names.append(hostlist[start:])
    return names


def _expand_ranges(hostlist: str, body: str) -> list[str]:
    """ "01-03,07" -> ["01", "02", "03", "07"]: the width of a range's first number pads it."""
    if not body.strip():
        raise _hostlist_error(hostlist, "empty brackets '[]'")
    values = []
    for part in body.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise _hostlist_error(hostlist, f"cannot read the range {part!r} (numbers, 'a-b', separated by commas)")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise _hostlist_error(hostlist, f"the range {part!r} runs backwards")
        values += [f"{i:0{len(first)}d}" for i in range(low, high + 1)]
    return values


def expand_hostlist(hostlist: str) -> list[str]:
    """SLURM's compressed host list as host names, in order, as `scontrol show hostnames` gives them.

    "node[01-03,07]-ib,gpu5" -> node01-ib, node02-ib, node03-ib, node07-ib, gpu5; several
    bracket groups in one name give every combination, the last varying fastest
    ("a[1-2]b[3-4]" -> a1b3, a1b4, a2b3, a2b4).

    Raises:
        ConfigError: an unclosed, nested or empty bracket, a bad range, an empty name.
    """
    hosts = []
    for name in _split_names(hostlist.strip()):
        name = name.strip()
        if not name:
            raise _hostlist_error(hostlist, "an empty host name (two commas in a row, or one at an end)")
        groups = re.split(r"(\[[^\[\]]*\])", name)
        choices = [_expand_ranges(hostlist, part[1:-1]) if part.startswith("[") else [part] for part in groups]
        hosts += ["".join(combination) for combination in itertools.product(*choices)]
    return hosts


def expand_tasks_per_node(value: str, *, field: str = "SLURM_TASKS_PER_NODE") -> list[int]:
    """SLURM's "2(x3),1" as [2, 2, 2, 1]."""
    counts = []
    for part in value.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise ConfigError(f"{field}={value!r}: cannot read {part!r}. Fix: run through srun, which sets it.")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def place_tasks(per_node: list[int], distribution: str, *, plane_size: int = 1) -> list[tuple[int, int]]:
    """(node index, local id) of every task rank, for SLURM's node-level distribution.

    block: ranks fill a node before the next; cyclic: one rank per node in turn; plane:
    `plane_size` ranks per node in turn. Tasks of a node get local ids in rank order.
    """
    size = {"block": max(per_node, default=1), "cyclic": 1, "plane": plane_size}[distribution]
    used, placed = [0] * len(per_node), []
    while len(placed) < sum(per_node):
        for node, count in enumerate(per_node):
            take = min(size, count - used[node])
            placed += [(node, used[node] + i) for i in range(take)]
            used[node] += take
    return placed


def _distribution(env: Mapping[str, str]) -> tuple[str, int]:
    """The node-level part of SLURM_DISTRIBUTION ("cyclic:block,Pack" -> "cyclic"), and the plane size."""
    value = env.get("SLURM_DISTRIBUTION", "").strip() or "block"
    kind = re.split(r"[:,=]", value, maxsplit=1)[0]
    if kind not in ("block", "cyclic", "plane"):
        raise ConfigError(f"SLURM_DISTRIBUTION={value!r}: tfdp can place block, cyclic and plane "
                          "distributions only. Fix: srun --distribution=block (or cyclic).")
    plane = env.get("SLURM_DIST_PLANESIZE", "").strip() or (value.split("=", 1)[1] if "=" in value else "1")
    if not plane.isdigit() or int(plane) < 1:
        raise ConfigError(f"SLURM_DIST_PLANESIZE={plane!r} is not a plane size. Fix: srun --distribution=plane=N.")
    return kind, int(plane)


def cluster_from_slurm(env: Mapping[str, str], *, port: int = DEFAULT_PORT) -> tuple[list[str], int]:
    """(every worker's address in rank order, this task's rank) from SLURM's environment.

    Tasks on a node listen on `port`, `port + 1`, ... by their local id.

    Raises:
        ConfigError: naming the SLURM variable that is missing, malformed, or disagrees
            with the placement.
    """
    def need(name: str) -> str:
        return required(env, name, why="tfdp.cluster reads SLURM's job environment",
                        fix="run inside a SLURM allocation through srun (one task per worker).")

    nodes_var = "SLURM_STEP_NODELIST" if env.get("SLURM_STEP_NODELIST") else "SLURM_JOB_NODELIST"
    nodes = expand_hostlist(need(nodes_var))
    tasks_var = "SLURM_STEP_TASKS_PER_NODE" if env.get("SLURM_STEP_TASKS_PER_NODE") else "SLURM_TASKS_PER_NODE"
    per_node = expand_tasks_per_node(need(tasks_var), field=tasks_var)
    if len(per_node) != len(nodes):
        raise ConfigError(f"{tasks_var}={env[tasks_var]!r} describes {len(per_node)} node(s) but {nodes_var} "
                          f"has {len(nodes)}. Fix: run through srun, which sets both.")
    rank = need("SLURM_PROCID")
    if not rank.isdigit() or int(rank) >= sum(per_node):
        raise ConfigError(f"SLURM_PROCID={rank!r} is not a task of this step ({sum(per_node)} tasks). "
                          "Fix: run through srun.")
    kind, plane = _distribution(env)
    placed = place_tasks(per_node, kind, plane_size=plane)
    node, local = placed[int(rank)]
    said = {"SLURMD_NODENAME": nodes[node], "SLURM_NODEID": str(node), "SLURM_LOCALID": str(local)}
    for name, expected in said.items():
        actual = env.get(name, "").strip()
        if actual and actual != expected:
            raise ConfigError(f"{name}={actual!r}, but a {kind} distribution of {tasks_var}={env[tasks_var]!r} "
                              f"over {nodes_var}={env[nodes_var]!r} puts task {rank} at {expected!r}. Fix: "
                              "srun --distribution=block or cyclic (so every task can compute the "
                              "others' places), one task per worker.")
    return [f"{nodes[n]}:{port + l}" for n, l in placed], int(rank)
