"""THE launcher table: how each launcher is recognised, which variables carry rank/size/address, and how
to start ``N`` processes with it. Everything else reads this table:

* :mod:`itwinai_lightning.launch.where` (``detect``) walks :data:`TABLE` in order; the first launcher whose
  ``detect`` matches reads the process's place with its ``read``;
* :mod:`itwinai_lightning.launch.environment` derives a launch's port from ``launch_keys``;
* :mod:`itwinai_lightning.benchmark` starts grid points with ``command`` (:func:`launch_command`);
* ``itwinai-lightning env`` lists the ``executable`` of each; ``slurm`` accepts the names in
  :data:`SLURM_LAUNCHERS`.

Order matters because launchers nest (torchrun inside an sbatch job, mpirun inside an allocation, Ray
workers inside the ``srun`` step that started their raylet):

==============  ===================================================  ===================================
launcher        recognised by                                        rank / size / main address from
==============  ===================================================  ===================================
``torchrun``    ``TORCHELASTIC_RUN_ID`` + ``RANK``                   ``RANK``, ``WORLD_SIZE``,
                                                                     ``MASTER_ADDR``
``ray``         ``RAY_TRAIN_WORKER`` (set by our Ray strategy)       ``RANK``, ``WORLD_SIZE``,
                                                                     ``MASTER_ADDR``
``horovodrun``  ``HOROVOD_RANK`` + ``HOROVOD_SIZE`` (not ours)       ``HOROVOD_*``
``mpirun``      Open MPI ``OMPI_COMM_WORLD_*``, MPICH/Hydra          ``*_RANK``, ``*_SIZE``,
                ``PMI_*``, PMIx ``PMIX_RANK`` (not in a SLURM step)  ``MASTER_ADDR``
``srun``        a SLURM job step: ``SLURM_STEP_ID`` +                ``SLURM_PROCID``,
                ``SLURM_PROCID``                                     ``SLURM_STEP_NUM_TASKS``, first node
``local``       anything else (Lightning's own launcher sets         ``RANK``, ``LOCAL_RANK``,
                ``LOCAL_RANK``/``NODE_RANK``/``WORLD_SIZE``)         ``NODE_RANK``
==============  ===================================================  ===================================

Horovod's gloo rendezvous under ``srun``/``mpirun`` (:mod:`itwinai_lightning.strategies.horovod_rendezvous`)
exports ``HOROVOD_*`` itself and marks it with :data:`RENDEZVOUS_MARK`; such a process still reports the
launcher that really started it. Adding a launcher is one :class:`Launcher` entry plus its tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from itwinai_lightning.launch.nodelist import first_host
from itwinai_lightning.launch.ray_ranks import in_ray_worker

Env = Mapping[str, str]
#: Set (to the real launcher's name) by our Horovod rendezvous when it exports ``HOROVOD_*`` itself.
RENDEZVOUS_MARK = "ITWINAI_HOROVOD_RENDEZVOUS"


def env_int(env: Env, *names: str, default: int | None = None) -> int | None:
    """The first of ``names`` that holds an integer (``4(x2)`` and ``4,4`` count as 4)."""
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(str(value).split("(")[0].split(",")[0])
            except ValueError:
                continue
    return default


def _i(env: Env, *names: str, default: int = 0) -> int:
    value = env_int(env, *names, default=default)
    return default if value is None else value


def _common(env: Env) -> dict[str, Any]:
    return {"master_port": env_int(env, "MASTER_PORT"), "job_id": env.get("SLURM_JOB_ID")}


# -- readers: env -> ClusterInfo fields -----------------------------------------------------------------
def _read_torchrun(env: Env) -> dict[str, Any]:
    world = _i(env, "WORLD_SIZE", default=1) or 1
    local_world = _i(env, "LOCAL_WORLD_SIZE", default=world) or world
    return {
        "rank": _i(env, "RANK"),
        "local_rank": _i(env, "LOCAL_RANK"),
        "world_size": world,
        "local_world_size": local_world,
        "node_rank": _i(env, "GROUP_RANK", "NODE_RANK"),
        "num_nodes": max(1, world // max(1, local_world)),
        "master_addr": env.get("MASTER_ADDR", "127.0.0.1"),
        **_common(env),
    }


def _read_horovodrun(env: Env) -> dict[str, Any]:
    world = _i(env, "HOROVOD_SIZE", default=1) or 1
    return {
        "rank": _i(env, "HOROVOD_RANK"),
        "local_rank": _i(env, "HOROVOD_LOCAL_RANK"),
        "world_size": world,
        "local_world_size": _i(env, "HOROVOD_LOCAL_SIZE", default=world) or world,
        "node_rank": _i(env, "HOROVOD_CROSS_RANK"),
        "num_nodes": _i(env, "HOROVOD_CROSS_SIZE", default=1) or 1,
        "master_addr": env.get("HOROVOD_GLOO_RENDEZVOUS_ADDR", "127.0.0.1"),
        **_common(env),
    }


#: MPI flavours: (name, recognised by, rank, size, local rank, local size) variables.
_Keys = tuple[str, ...]
_MPI_FLAVOURS: tuple[tuple[str, str, _Keys, _Keys, _Keys, _Keys], ...] = (
    ("openmpi", "OMPI_COMM_WORLD_RANK", ("OMPI_COMM_WORLD_RANK",), ("OMPI_COMM_WORLD_SIZE",),
     ("OMPI_COMM_WORLD_LOCAL_RANK",), ("OMPI_COMM_WORLD_LOCAL_SIZE",)),
    ("mpich", "PMI_RANK", ("PMI_RANK",), ("PMI_SIZE",),
     ("MPI_LOCALRANKID", "PALS_LOCAL_RANKID"), ("MPI_LOCALNRANKS", "PALS_LOCAL_SIZE")),
    ("pmix", "PMIX_RANK", ("PMIX_RANK",), ("PMIX_SIZE", "OMPI_UNIVERSE_SIZE"),
     ("PMIX_LOCAL_RANK",), ("PMIX_LOCAL_SIZE",)),
)  # fmt: skip


def _mpi_flavour(
    env: Env,
) -> tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None:
    for name, key, rank, size, local_rank, local_size in _MPI_FLAVOURS:
        if key not in env:
            continue
        if name == "mpich" and "PMI_SIZE" not in env:
            continue
        if name == "pmix" and env.get("SLURM_STEP_ID") is not None:
            continue  # srun --mpi=pmix: SLURM started the ranks
        return name, rank, size, local_rank, local_size
    return None


def _read_mpirun(env: Env) -> dict[str, Any]:
    found = _mpi_flavour(env)
    assert found is not None
    flavour, rank_keys, size_keys, local_rank_keys, local_size_keys = found
    rank = _i(env, *rank_keys)
    world = _i(env, *size_keys, default=1) or 1
    local_world = _i(env, *local_size_keys, default=world) or world
    # OMPI_COMM_WORLD_NODE_RANK is the rank *within* the node; ranks are placed in blocks by default
    return {
        "rank": rank,
        "local_rank": _i(env, *local_rank_keys),
        "world_size": world,
        "local_world_size": local_world,
        "node_rank": rank // max(1, local_world),
        "num_nodes": max(1, world // max(1, local_world)),
        "master_addr": env.get("MASTER_ADDR", "127.0.0.1"),
        "mpi_flavour": flavour,
        **_common(env),
    }


def _read_srun(env: Env) -> dict[str, Any]:
    world = _i(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", default=1) or 1
    nodes = _i(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES", default=1) or 1
    per_node = env_int(env, "SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE")
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
    return {
        "rank": _i(env, "SLURM_PROCID"),
        "local_rank": _i(env, "SLURM_LOCALID"),
        "world_size": world,
        "local_world_size": per_node or max(1, world // nodes),
        "node_rank": _i(env, "SLURM_NODEID"),
        "num_nodes": nodes,
        "master_addr": env.get("MASTER_ADDR") or first_host(nodelist),
        **_common(env),
    }


def _read_ray(env: Env) -> dict[str, Any]:
    """Ray Train sets torch's variables; its node index is ``NODE_RANK`` only. The node count is torchrun's
    ``GROUP_WORLD_SIZE`` where set (our ranks, which may be spread unevenly over the hosts)."""
    read = {**_read_torchrun(env), "node_rank": _i(env, "NODE_RANK")}
    return {**read, "num_nodes": _i(env, "GROUP_WORLD_SIZE", default=read["num_nodes"])}


def _read_local(env: Env) -> dict[str, Any]:
    world = _i(env, "WORLD_SIZE", default=1) or 1
    local_rank = _i(env, "LOCAL_RANK")
    local_world = _i(env, "LOCAL_WORLD_SIZE", default=world) or world
    node_rank = _i(env, "NODE_RANK", "GROUP_RANK")
    return {
        "rank": _i(env, "RANK", default=node_rank * local_world + local_rank),
        "local_rank": local_rank,
        "world_size": world,
        "local_world_size": local_world,
        "node_rank": node_rank,
        "num_nodes": max(1, world // max(1, local_world)),
        "master_addr": env.get("MASTER_ADDR", "127.0.0.1"),
        **_common(env),
    }


# -- commands: N processes on this node (the benchmark's grid points) ---------------------------------
def _cmd_module(py: str, n: int, fit: Sequence[str], extra: Sequence[str]) -> list[str]:
    return [py, "-m", "itwinai_lightning", *fit]


def _cmd_torchrun(py: str, n: int, fit: Sequence[str], extra: Sequence[str]) -> list[str]:
    return [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), *extra,
            "-m", "itwinai_lightning", *fit]  # fmt: skip


def _cmd_mpirun(py: str, n: int, fit: Sequence[str], extra: Sequence[str]) -> list[str]:
    return ["mpirun", "-np", str(n), *extra, py, "-m", "itwinai_lightning", *fit]


def _cmd_srun(py: str, n: int, fit: Sequence[str], extra: Sequence[str]) -> list[str]:
    return ["srun", "-N", "1", f"--ntasks-per-node={n}", *extra, py, "-m", "itwinai_lightning", *fit]


def _cmd_horovodrun(py: str, n: int, fit: Sequence[str], extra: Sequence[str]) -> list[str]:
    return ["horovodrun", "-np", str(n), "-H", f"localhost:{n}", "--gloo", *extra,
            py, "-m", "itwinai_lightning", *fit]  # fmt: skip


@dataclass(frozen=True)
class Launcher:
    """One launcher: how a process it started is recognised and read, and how to start N processes."""

    name: str
    summary: str
    executable: str | None
    detect: Callable[[Env], bool]
    read: Callable[[Env], dict[str, Any]]
    command: Callable[[str, int, Sequence[str], Sequence[str]], list[str]]
    #: variables that identify one launch (the same on every rank, different for the next launch)
    launch_keys: tuple[str, ...] = ()
    #: whether ``slurm`` can use it inside an allocation (``slurm.launcher``)
    in_slurm_job: bool = False
    #: whether a gloo-only Horovod needs our rendezvous to find the ranks it starts (no ``HOROVOD_*``)
    horovod_rendezvous: bool = False


def _is_horovodrun(env: Env) -> bool:
    return "HOROVOD_RANK" in env and "HOROVOD_SIZE" in env and RENDEZVOUS_MARK not in env


TABLE: tuple[Launcher, ...] = (
    Launcher("torchrun", "torch.distributed.run (elastic agent per node)", "torchrun",
             lambda env: env.get("TORCHELASTIC_RUN_ID") is not None and "RANK" in env,
             _read_torchrun, _cmd_torchrun, ("TORCHELASTIC_RUN_ID",), in_slurm_job=True),
    Launcher("ray", "a Ray Train worker", "ray", in_ray_worker,
             _read_ray, _cmd_module, in_slurm_job=True),
    Launcher("horovodrun", "Horovod's launcher (gloo controller)", "horovodrun", _is_horovodrun,
             _read_horovodrun, _cmd_horovodrun,
             ("HOROVOD_GLOO_RENDEZVOUS_PORT", "HOROVOD_GLOO_RENDEZVOUS_ADDR")),
    Launcher("mpirun", "Open MPI, MPICH/Hydra, Intel MPI or PMIx", "mpirun",
             lambda env: _mpi_flavour(env) is not None, _read_mpirun, _cmd_mpirun,
             ("PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "PMI_KVSNAME", "PMI_JOBID", "PALS_APID"),
             horovod_rendezvous=True),
    Launcher("srun", "a SLURM job step", "srun",
             lambda env: env.get("SLURM_STEP_ID") is not None and env.get("SLURM_PROCID") is not None,
             _read_srun, _cmd_srun, ("SLURM_JOB_ID", "SLURM_STEP_ID"), in_slurm_job=True,
             horovod_rendezvous=True),
    Launcher("local", "a plain process, or Lightning's own launcher", None, lambda env: True,
             _read_local, _cmd_module),
)  # fmt: skip
BY_NAME: dict[str, Launcher] = {spec.name: spec for spec in TABLE}
NAMES: tuple[str, ...] = tuple(BY_NAME)
SLURM_LAUNCHERS: tuple[str, ...] = tuple(spec.name for spec in TABLE if spec.in_slurm_job)
HOROVOD_RENDEZVOUS: tuple[str, ...] = tuple(spec.name for spec in TABLE if spec.horovod_rendezvous)


def get(name: str) -> Launcher:
    """The table entry for ``name``; ValueError naming the choices when there is none."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown launcher {name!r}; choose one of {', '.join(NAMES)}") from None


def find(env: Env) -> Launcher:
    """The first launcher of the table that recognises ``env`` (``local`` at the latest)."""
    return next(spec for spec in TABLE if spec.detect(env))


def launch_command(
    name: str, workers: int, fit: Sequence[str], python: str, extra: Sequence[str] = ()
) -> list[str]:
    """The argv that runs ``itwinai_lightning <fit...>`` on ``workers`` processes of this node."""
    return get(name).command(python, workers, fit, extra)
