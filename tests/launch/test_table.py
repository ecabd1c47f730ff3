"""Launcher detection and launch checks on the variables real launchers set (values copied from real runs:
Open MPI 4.1 ``mpirun -np``, SLURM 22.05 ``srun``); the end-to-end runs are in test_launchers.py."""

from __future__ import annotations

import pytest

from itwinai_lightning.errors import UserError
from itwinai_lightning.launch.environment import (
    LauncherEnvironment,
    derived_port,
    main_address_for,
    make_cluster_environment,
    validate_launch,
)
from itwinai_lightning.launch.where import detect


def _openmpi(rank: int, size: int, per_node: int) -> dict[str, str]:
    return {
        "OMPI_COMM_WORLD_RANK": str(rank),
        "OMPI_COMM_WORLD_SIZE": str(size),
        "OMPI_COMM_WORLD_LOCAL_RANK": str(rank % per_node),
        "OMPI_COMM_WORLD_LOCAL_SIZE": str(per_node),
        "OMPI_COMM_WORLD_NODE_RANK": str(rank % per_node),  # Open MPI: rank *within* the node
        "OMPI_MCA_ess_base_jobid": "1164312577",
        "PMIX_NAMESPACE": "1164312577",
        "OMPI_MCA_orte_hnp_uri": "1164312576.0;tcp://10.1.2.3:60043;tcp6://[fd00::2]:40409",
    }


def _srun(rank: int, tasks: int, nodes: int, per_node: str | None, step: str = "0") -> dict[str, str]:
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_ID": step,
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank % max(1, tasks // nodes)),
        "SLURM_NODEID": str(rank // max(1, tasks // nodes)),
        "SLURM_NTASKS": str(tasks),
        "SLURM_STEP_NUM_TASKS": str(tasks),
        "SLURM_STEP_NUM_NODES": str(nodes),
        "SLURM_NNODES": str(nodes),
        "SLURM_STEP_NODELIST": "jwb[0007-0008]" if nodes > 1 else "localhost",
        "SLURM_STEP_TASKS_PER_NODE": f"{tasks // nodes}(x{nodes})" if nodes > 1 else str(tasks),
    }
    if per_node is not None:
        env["SLURM_NTASKS_PER_NODE"] = per_node
    return env


def test_openmpi_two_nodes_ranks_ports_and_address() -> None:
    infos = [detect(_openmpi(rank, 4, 2)) for rank in range(4)]
    assert [i.node_rank for i in infos] == [0, 0, 1, 1]
    assert [i.local_rank for i in infos] == [0, 1, 0, 1]
    assert {i.num_nodes for i in infos} == {2} and {i.launcher for i in infos} == {"mpirun"}
    ports = {derived_port(i, _openmpi(i.rank, 4, 2)) for i in infos}
    assert len(ports) == 1 and 20000 <= ports.pop() < 40000
    assert main_address_for(infos[3], _openmpi(3, 4, 2)) == "10.1.2.3"
    assert main_address_for(infos[0], {**_openmpi(0, 4, 2), "MASTER_ADDR": "jwb0001"}) == "jwb0001"
    validate_launch(infos[3], devices=2, num_nodes=2)
    with pytest.raises(UserError, match=r"trainer.num_nodes=1; set --trainer.num_nodes 2"):
        validate_launch(infos[3], devices=2, num_nodes=1)


def test_srun_layout_and_steps() -> None:
    info = detect(_srun(3, 4, 2, "2"))
    assert (info.launcher, info.rank, info.local_rank, info.node_rank, info.local_world_size) == (
        "srun",
        3,
        1,
        1,
        2,
    )
    assert info.master_addr == "jwb0007"
    step0 = derived_port(info, _srun(3, 4, 2, "2"))
    assert step0 == derived_port(detect(_srun(0, 4, 2, "2")), _srun(0, 4, 2, "2"))  # every rank agrees
    assert step0 != derived_port(info, _srun(3, 4, 2, "2", step="1"))  # the next step gets another port
    with pytest.raises(UserError, match=r"trainer.devices=4; set --trainer.devices 2"):
        validate_launch(info, devices=4, num_nodes=2, env=_srun(3, 4, 2, "2"))
    bad = _srun(0, 2, 1, None)  # srun -n 2
    with pytest.raises(UserError, match=r"without --ntasks-per-node.*srun --nodes=1 --ntasks-per-node=2"):
        validate_launch(detect(bad), devices=2, num_nodes=1, env=bad)


def test_environment_choice() -> None:
    assert type(make_cluster_environment(detect({}))).__name__ == "LightningEnvironment"
    torchrun = {"TORCHELASTIC_RUN_ID": "x", "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}  # fmt: skip
    env = make_cluster_environment(detect(torchrun))
    assert isinstance(env, LauncherEnvironment) and env.creates_processes_externally
    assert (env.global_rank(), env.local_rank(), env.world_size(), env.main_port) == (1, 1, 2, 29511)
    # one task under a launcher: Lightning starts the processes itself
    single = detect(_srun(0, 1, 1, "1"))
    assert type(make_cluster_environment(single)).__name__ == "LightningEnvironment"


def test_launcher_table_order_nested_launchers() -> None:
    """The first launcher of the table that recognises the process wins; nested launches resolve right."""
    from itwinai_lightning.launch import table as launchers

    slurm = _srun(1, 2, 2, "1")
    # a Ray Train worker inside the srun step that started its raylet is a Ray rank
    ray = {**slurm, "RAY_TRAIN_WORKER": "1", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"}
    assert detect(ray).launcher == "ray" and detect(ray).world_size == 2
    # torchrun started by srun (one agent per node): torchrun's ranks
    torch_env = {
        **slurm,
        "TORCHELASTIC_RUN_ID": "4242",
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "2",
    }
    assert (detect(torch_env).launcher, detect(torch_env).num_nodes) == ("torchrun", 2)
    # Horovod variables our own rendezvous exported under srun: still srun, with SLURM's layout
    hvd = {**slurm, "HOROVOD_RANK": "1", "HOROVOD_SIZE": "2", launchers.RENDEZVOUS_MARK: "srun"}
    assert (detect(hvd).launcher, detect(hvd).num_nodes, detect(hvd).node_rank) == ("srun", 2, 1)
    # ... but horovodrun's own variables are horovodrun
    hvd_run = {"HOROVOD_RANK": "1", "HOROVOD_SIZE": "2", "HOROVOD_CROSS_SIZE": "2", "HOROVOD_CROSS_RANK": "1"}
    assert (detect(hvd_run).launcher, detect(hvd_run).num_nodes) == ("horovodrun", 2)
    assert detect({}).launcher == "local"
    # one table: every consumer reads the same names
    assert launchers.NAMES == ("torchrun", "ray", "horovodrun", "mpirun", "srun", "local")
    assert launchers.SLURM_LAUNCHERS == ("torchrun", "ray", "srun")
    with pytest.raises(ValueError, match="choose one of torchrun, ray"):
        launchers.get("pbsrun")


def test_launch_commands_come_from_the_table() -> None:
    from itwinai_lightning.benchmark.launchers import launch_command

    fit = ["fit", "--config", "a.yaml"]
    assert launch_command("srun", 2, fit, python="py")[:4] == ["srun", "-N", "1", "--ntasks-per-node=2"]
    assert launch_command("local", 2, fit, python="py") == ["py", "-m", "itwinai_lightning", *fit]
    assert "--nproc_per_node" in launch_command("torchrun", 2, fit, python="py")
