"""The SLURM nodelist, read in one place: its first host (rank 0's node under block distribution) and its
host names in order (``scontrol show hostnames``), and the host each rank of an ``srun`` step runs on."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping


def first_host(nodelist: str) -> str:
    """First host name of a SLURM nodelist such as ``jwb[0001-0004,0010],jwc0001`` -> ``jwb0001``."""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist
    if "[" not in head:
        return head.strip()
    prefix, rest = head.split("[", 1)
    first = rest.split("]", 1)[0].split(",")[0].split("-")[0]
    return prefix + first


def step_nodelist(env: Mapping[str, str] | None = None) -> str | None:
    """The nodes of this job step (or, outside a step, of the job)."""
    env = os.environ if env is None else env
    return env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")


def hostnames(nodelist: str) -> list[str]:
    """Every host of ``nodelist`` in order, expanded by ``scontrol show hostnames`` ([] without SLURM)."""
    if shutil.which("scontrol") is None:
        return []
    done = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=False
    )
    return done.stdout.split()


def rank_hosts(world_size: int, per_node: int, env: Mapping[str, str] | None = None) -> list[str]:
    """The host SLURM places each rank of this step on (block distribution: ``per_node`` ranks a node);
    [] outside a SLURM step. A rank beyond the nodelist gets ``?``."""
    nodelist = step_nodelist(env)
    hosts = hostnames(nodelist) if nodelist else []
    if not hosts:
        return []
    per_node = max(1, per_node)
    return [hosts[r // per_node] if r // per_node < len(hosts) else "?" for r in range(world_size)]
