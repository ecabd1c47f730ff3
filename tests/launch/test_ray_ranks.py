"""The rank environments of Ray actors that are DDP ranks (``ray_ddp``, ``tune``'s multi-worker trials)."""

from __future__ import annotations

from itwinai_lightning.launch.ray_ranks import rank_envs
from itwinai_lightning.launch.where import detect_as


def test_ray_rank_environments_group_local_ranks_by_host() -> None:
    envs = rank_envs(
        ["10.0.0.2", "10.0.0.3", "10.0.0.2"], "10.0.0.2", 29500, {"PL_GLOBAL_SEED": "7", "HOME": "/x"}
    )
    assert [(e["RANK"], e["LOCAL_RANK"], e["NODE_RANK"], e["LOCAL_WORLD_SIZE"]) for e in envs] == [
        ("0", "0", "0", "2"), ("1", "0", "1", "1"), ("2", "1", "0", "2"),
    ]  # fmt: skip
    assert all(e["PL_GLOBAL_SEED"] == "7" and "HOME" not in e for e in envs)  # the seed, nothing else
    info = detect_as("ray", envs[2])
    assert (info.launcher, info.rank, info.local_rank, info.world_size, info.num_nodes) == ("ray", 2, 1, 3, 2)
