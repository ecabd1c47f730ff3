"""horovod under mpirun and srun with a gloo-only Horovod: the strategy runs Horovod's rendezvous itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from itwinai_lightning.errors import UserError
from itwinai_lightning.launch.where import ClusterInfo
from tests.helpers.childenv import child_env
from tests.helpers.engines import require_executable, require_module
from tests.strategies.conftest import free_port, load_weights, run_launch
from tests.strategies.test_deepspeed_horovod import check_fit_and_resume, check_parity

pytestmark = [pytest.mark.horovod, pytest.mark.timeout(400)]
HINT = "itwinai-lightning build-horovod"
ARGS = ["--strategy", "horovod", "--devices", "1"]


def check_rendezvous(results: list[dict[str, Any]], port: int | None = None) -> None:
    """Both ranks went through our rendezvous: loopback server, one pseudo-host, ranks from the launcher."""
    envs = [res["horovod_env"] for res in results]
    for rank, env in enumerate(envs):
        assert env["HOROVOD_RANK"] == str(rank) and env["HOROVOD_LOCAL_RANK"] == str(rank)
        assert env["HOROVOD_SIZE"] == env["HOROVOD_LOCAL_SIZE"] == "2" and env["HOROVOD_CROSS_SIZE"] == "1"
        assert env["HOROVOD_GLOO_RENDEZVOUS_ADDR"] == "127.0.0.1"  # one node: never all interfaces
        assert env["HOROVOD_CONTROLLER"] == env["HOROVOD_CPU_OPERATIONS"] == "gloo"
        assert env["HOROVOD_HOSTNAME"] == "node0" and env["HOROVOD_GLOO_IFACE"] == "lo"
    ports = {env["HOROVOD_GLOO_RENDEZVOUS_PORT"] for env in envs}
    assert len(ports) == 1
    if port is not None:
        assert ports == {str(port)}


def test_horovod_mpirun_fit_resume_parity(tmp_path: Path, ddp_reference: dict) -> None:
    require_module("horovod", HINT)
    mpirun = require_executable("mpirun", "apt-get install openmpi-bin")
    port = free_port()
    env = child_env({"MASTER_PORT": str(port)})  # the rendezvous port, exported to both ranks
    prefix = [mpirun, "-np", "2", "--bind-to", "none", "-x", "MASTER_PORT"]
    results = run_launch(prefix, ARGS, tmp_path, env)
    check_fit_and_resume(results, "HorovodStrategy")
    check_rendezvous(results, port)
    check_parity(load_weights(tmp_path), ddp_reference)  # plain SGD, averaged gradients == DDP


@pytest.mark.slurm
def test_horovod_srun_fit_resume_parity(slurm_cluster: Any, tmp_path: Path, ddp_reference: dict) -> None:
    require_module("horovod", HINT)
    env = child_env({"SLURM_CONF": slurm_cluster.env["SLURM_CONF"]})
    env.pop("MASTER_PORT", None)  # the port is derived from the job and step ids
    prefix = ["srun", "-N", "1", "--ntasks-per-node=2", "--kill-on-bad-exit=1"]
    results = run_launch(prefix, ARGS, tmp_path, env)
    check_fit_and_resume(results, "HorovodStrategy")
    check_rendezvous(results)
    assert 20000 <= int(results[0]["horovod_env"]["HOROVOD_GLOO_RENDEZVOUS_PORT"]) < 40000
    check_parity(load_weights(tmp_path), ddp_reference)


def test_horovod_rendezvous_plan_and_bad_launches() -> None:
    """Horovod's host plan over node blocks; cyclic placement, uneven nodes, bad ports: one-line errors."""
    require_module("horovod", HINT)
    from itwinai_lightning.strategies import horovod_rendezvous as rdv
    from itwinai_lightning.strategies.horovod import HorovodStrategy

    info = ClusterInfo(
        "srun", rank=3, local_rank=1, world_size=4, local_world_size=2, node_rank=1, num_nodes=2
    )
    plan = rdv.host_plan(info)
    assert [(s.hostname, s.rank, s.local_rank, s.cross_rank, s.cross_size) for s in plan] == [
        ("node0", 0, 0, 0, 2),
        ("node0", 1, 1, 0, 2),
        ("node1", 2, 0, 1, 2),
        ("node1", 3, 1, 1, 2),
    ]
    env = rdv.slot_env(rdv.own_slot(info, plan), "10.0.0.1", 29400, None)
    assert env["HOROVOD_HOSTNAME"] == "node1" and env["HOROVOD_CROSS_RANK"] == "1"
    assert "HOROVOD_GLOO_IFACE" not in env
    assert rdv.needs_rendezvous(info, {}) and not rdv.needs_rendezvous(info, {"HOROVOD_RANK": "3"})
    cyclic = ClusterInfo(
        "srun", rank=1, local_rank=0, world_size=4, local_world_size=2, node_rank=1, num_nodes=2
    )
    with pytest.raises(UserError, match="blocks per node"):
        rdv.own_slot(cyclic, plan)
    with pytest.raises(UserError, match="same number of tasks"):
        rdv.host_plan(ClusterInfo("mpirun", world_size=3, local_world_size=2, num_nodes=2))
    with pytest.raises(UserError, match="rendezvous_port"):
        HorovodStrategy(rendezvous_port=70000)
    assert rdv.gloo_iface("127.0.0.1") == "lo"
    with pytest.raises(UserError, match=r"no gloo rendezvous server at 127\.0\.0\.1"):
        rdv.wait_for_server("127.0.0.1", free_port(), timeout=0.3)
