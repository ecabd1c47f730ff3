"""The rank environment of each Ray actor that is one DDP rank (``ray_ddp`` and ``tune``'s multi-worker
trials): ranks in actor order, local and node ranks grouped by the host each actor landed on.

The launcher table's ``ray`` reader (:mod:`.table`) reads these variables back inside the actor.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: set in every rank's environment; its presence is how a process knows it already is one rank
WORKER_FLAG = "RAY_TRAIN_WORKER"

#: driver settings a rank needs as well (Lightning's global seed and worker seeding)
PASSED_ON = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")


def in_ray_worker(env: Mapping[str, str] | None = None) -> bool:
    """True inside a process that already is one rank of a Ray-launched group."""
    return (os.environ if env is None else env).get(WORKER_FLAG) is not None


def rank_envs(
    hosts: list[str], main_addr: str, main_port: int, driver_env: Mapping[str, str] | None = None
) -> list[dict[str, str]]:
    """One environment per actor (``hosts[i]``: where actor ``i`` runs); rank 0 hosts the rendezvous."""
    passed = {key: value for key, value in (driver_env or {}).items() if key in PASSED_ON}
    nodes = list(dict.fromkeys(hosts))
    seen: dict[str, int] = {}
    envs = []
    for rank, host in enumerate(hosts):
        local_rank = seen.get(host, 0)
        seen[host] = local_rank + 1
        envs.append(
            {
                **passed,
                WORKER_FLAG: "1",
                "RANK": str(rank),
                "LOCAL_RANK": str(local_rank),
                "WORLD_SIZE": str(len(hosts)),
                "LOCAL_WORLD_SIZE": str(hosts.count(host)),
                "NODE_RANK": str(nodes.index(host)),
                "GROUP_WORLD_SIZE": str(len(nodes)),
                "MASTER_ADDR": main_addr,
                "MASTER_PORT": str(main_port),
            }
        )
    return envs
