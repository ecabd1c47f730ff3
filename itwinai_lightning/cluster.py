"""Where am I running? Detect the launcher and the process's place in the job from the environment.

Detection order (first match wins, because launchers nest: torchrun inside an sbatch job, mpirun inside
an allocation):

1. ``torchrun``   -- ``TORCHELASTIC_RUN_ID`` + ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``
2. ``horovodrun`` -- ``HOROVOD_RANK``/``HOROVOD_SIZE`` (gloo controller)
3. ``mpirun``     -- Open MPI (``OMPI_COMM_WORLD_*``), MPICH/Hydra and Intel MPI (``PMI_RANK``/``PMI_SIZE``),
                     PMIx (``PMIX_RANK``)
4. ``srun``       -- a SLURM job *step* (``SLURM_STEP_ID`` and ``SLURM_PROCID``), not the batch script itself
5. ``ray``        -- a Ray Train worker (``RAY_TRAIN_WORKER`` set by our Ray strategy / ``ray.train`` context)
6. ``local``      -- a plain process; Lightning's own launcher may spawn more ranks later (those ranks see
                     ``LOCAL_RANK``/``NODE_RANK``/``WORLD_SIZE`` set by Lightning and report them here)

Nothing here imports torch.distributed, MPI or Ray: reading the environment is enough and cheap.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Launcher = Literal["torchrun", "horovodrun", "mpirun", "srun", "ray", "local"]


@dataclass(frozen=True)
class ClusterInfo:
    """The detected launch context of this process."""

    launcher: Launcher
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    num_nodes: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    hostname: str = field(default_factory=socket.gethostname)
    job_id: str | None = None
    mpi_flavour: str | None = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(env: Mapping[str, str], *names: str, default: int | None = None) -> int | None:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(str(value).split("(")[0].split(",")[0])
            except ValueError:
                continue
    return default


def slurm_first_host(nodelist: str) -> str:
    """First host name of a SLURM nodelist such as ``jwb[0001-0004,0010],jwc0001`` -> ``jwb0001``."""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist
    if "[" not in head:
        return head.strip()
    prefix, rest = head.split("[", 1)
    first = rest.split("]", 1)[0].split(",")[0].split("-")[0]
    return prefix + first


def detect(env: Mapping[str, str] | None = None) -> ClusterInfo:
    """Detect the launcher from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    job_id = env.get("SLURM_JOB_ID")

    if env.get("TORCHELASTIC_RUN_ID") is not None and "RANK" in env:
        world = _int(env, "WORLD_SIZE", default=1) or 1
        local_world = _int(env, "LOCAL_WORLD_SIZE", default=world) or world
        return ClusterInfo(
            launcher="torchrun",
            rank=_int(env, "RANK", default=0) or 0,
            local_rank=_int(env, "LOCAL_RANK", default=0) or 0,
            world_size=world,
            local_world_size=local_world,
            node_rank=_int(env, "GROUP_RANK", "NODE_RANK", default=0) or 0,
            num_nodes=max(1, world // max(1, local_world)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int(env, "MASTER_PORT"),
            job_id=job_id,
        )

    if "HOROVOD_RANK" in env and "HOROVOD_SIZE" in env:
        world = _int(env, "HOROVOD_SIZE", default=1) or 1
        local_world = _int(env, "HOROVOD_LOCAL_SIZE", default=world) or world
        return ClusterInfo(
            launcher="horovodrun",
            rank=_int(env, "HOROVOD_RANK", default=0) or 0,
            local_rank=_int(env, "HOROVOD_LOCAL_RANK", default=0) or 0,
            world_size=world,
            local_world_size=local_world,
            node_rank=_int(env, "HOROVOD_CROSS_RANK", default=0) or 0,
            num_nodes=_int(env, "HOROVOD_CROSS_SIZE", default=1) or 1,
            master_addr=env.get("HOROVOD_GLOO_RENDEZVOUS_ADDR", "127.0.0.1"),
            master_port=_int(env, "MASTER_PORT"),
            job_id=job_id,
        )

    mpi = _detect_mpi(env, job_id)
    if mpi is not None:
        return mpi

    if env.get("SLURM_STEP_ID") is not None and env.get("SLURM_PROCID") is not None:
        world = _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", default=1) or 1
        nodes = _int(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES", default=1) or 1
        per_node = _int(env, "SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE")
        local_world = per_node or max(1, world // nodes)
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
        return ClusterInfo(
            launcher="srun",
            rank=_int(env, "SLURM_PROCID", default=0) or 0,
            local_rank=_int(env, "SLURM_LOCALID", default=0) or 0,
            world_size=world,
            local_world_size=local_world,
            node_rank=_int(env, "SLURM_NODEID", default=0) or 0,
            num_nodes=nodes,
            master_addr=env.get("MASTER_ADDR") or slurm_first_host(nodelist),
            master_port=_int(env, "MASTER_PORT"),
            job_id=job_id,
        )

    if env.get("RAY_TRAIN_WORKER") is not None:
        world = _int(env, "WORLD_SIZE", default=1) or 1
        return ClusterInfo(
            launcher="ray",
            rank=_int(env, "RANK", default=0) or 0,
            local_rank=_int(env, "LOCAL_RANK", default=0) or 0,
            world_size=world,
            local_world_size=_int(env, "LOCAL_WORLD_SIZE", default=world) or world,
            node_rank=_int(env, "NODE_RANK", default=0) or 0,
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int(env, "MASTER_PORT"),
            job_id=job_id,
        )

    # A plain process, or a rank that Lightning's own launcher started (it sets LOCAL_RANK, NODE_RANK and
    # WORLD_SIZE for the processes it creates; Lightning's LightningEnvironment then takes over).
    world = _int(env, "WORLD_SIZE", default=1) or 1
    local_rank = _int(env, "LOCAL_RANK", default=0) or 0
    local_world = _int(env, "LOCAL_WORLD_SIZE", default=world) or world
    node_rank = _int(env, "NODE_RANK", "GROUP_RANK", default=0) or 0
    return ClusterInfo(
        launcher="local",
        rank=_int(env, "RANK", default=node_rank * local_world + local_rank) or 0,
        local_rank=local_rank,
        world_size=world,
        local_world_size=local_world,
        node_rank=node_rank,
        num_nodes=max(1, world // max(1, local_world)),
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int(env, "MASTER_PORT"),
        job_id=job_id,
    )


def _detect_mpi(env: Mapping[str, str], job_id: str | None) -> ClusterInfo | None:
    if "OMPI_COMM_WORLD_RANK" in env:
        flavour = "openmpi"
        rank = _int(env, "OMPI_COMM_WORLD_RANK", default=0) or 0
        world = _int(env, "OMPI_COMM_WORLD_SIZE", default=1) or 1
        local_rank = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", default=0) or 0
        local_world = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", default=world) or world
        # OMPI_COMM_WORLD_NODE_RANK is the rank *within* the node (like the local rank), not the node's index
        node_rank = rank // max(1, local_world)
    elif "PMI_RANK" in env and "PMI_SIZE" in env:
        flavour = "mpich"
        rank = _int(env, "PMI_RANK", default=0) or 0
        world = _int(env, "PMI_SIZE", default=1) or 1
        local_rank = _int(env, "MPI_LOCALRANKID", "PALS_LOCAL_RANKID", default=0) or 0
        local_world = _int(env, "MPI_LOCALNRANKS", "PALS_LOCAL_SIZE", default=world) or world
        node_rank = rank // max(1, local_world)
    elif "PMIX_RANK" in env and env.get("SLURM_STEP_ID") is None:
        flavour = "pmix"
        rank = _int(env, "PMIX_RANK", default=0) or 0
        world = _int(env, "PMIX_SIZE", "OMPI_UNIVERSE_SIZE", default=1) or 1
        local_rank = _int(env, "PMIX_LOCAL_RANK", default=0) or 0
        local_world = _int(env, "PMIX_LOCAL_SIZE", default=world) or world
        node_rank = rank // max(1, local_world)
    else:
        return None
    return ClusterInfo(
        launcher="mpirun",
        rank=rank,
        local_rank=local_rank,
        world_size=world,
        local_world_size=local_world,
        node_rank=node_rank,
        num_nodes=max(1, world // max(1, local_world)),
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int(env, "MASTER_PORT"),
        job_id=job_id,
        mpi_flavour=flavour,
    )


def default_backend(device_type: str) -> str:
    """nccl on CUDA (and ROCm, where torch calls RCCL "nccl"), gloo on CPU."""
    return "nccl" if device_type == "cuda" else "gloo"
