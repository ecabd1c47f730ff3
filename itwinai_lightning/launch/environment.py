"""Lightning ``ClusterEnvironment`` for whatever launched this process, and launch-mistake checks.

:func:`make_cluster_environment` turns :func:`itwinai_lightning.launch.where.detect`'s
:class:`ClusterInfo` into the environment a Lightning strategy needs (``hpc_ddp``, ``hpc_fsdp``,
``hpc_deepspeed`` and ``horovod`` all use it):

==============  =========================================  ==========================================
launcher        environment                                 main address / port
==============  =========================================  ==========================================
``torchrun``    :class:`LauncherEnvironment` (external)     ``MASTER_ADDR`` / ``MASTER_PORT`` from torchrun
``srun``        :class:`LauncherEnvironment` (external)     first node of the step / derived from job+step
``mpirun``      :class:`LauncherEnvironment` (external)     127.0.0.1 on one node, else ``MASTER_ADDR``,
                                                            Open MPI's launch host or mpi4py / derived
``horovodrun``  :class:`LauncherEnvironment` (external)     rendezvous host / derived
``ray``         :class:`LauncherEnvironment` (external)     ``MASTER_ADDR`` / ``MASTER_PORT`` from Ray Train
``local``       Lightning's ``LightningEnvironment``        Lightning starts the other ranks itself
==============  =========================================  ==========================================

A launcher that started a single task (``srun`` inside ``salloc``, ``mpirun -np 1``) counts as ``local``: then
Lightning's own launcher starts ``trainer.devices`` processes, as it would on a laptop.

:func:`validate_launch` turns the classic launch mistakes (``srun -n 2`` without ``--ntasks-per-node``,
``trainer.devices`` different from the tasks per node, a world size the launch cannot have) into one-line
:class:`~itwinai_lightning.errors.UserError` messages that say what to change.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from collections.abc import Mapping
from typing import Any

from lightning.fabric.plugins.environments import ClusterEnvironment, LightningEnvironment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from typing_extensions import override

from itwinai_lightning.errors import UserError
from itwinai_lightning.launch import table as launchers
from itwinai_lightning.launch.where import ClusterInfo, detect

log = logging.getLogger(__name__)

_PORT_BASE, _PORT_SPAN = 20000, 20000


def derived_port(info: ClusterInfo, env: Mapping[str, str] | None = None) -> int:
    """A port every rank of this launch computes identically (``MASTER_PORT`` wins when set)."""
    env = os.environ if env is None else env
    if info.master_port is not None:
        return info.master_port
    parts = [env.get(name, "") for name in launchers.get(info.launcher).launch_keys]
    key = "/".join(parts)
    if not key.strip("/"):
        key = f"{info.launcher}/{info.job_id}/{info.world_size}"
    return _PORT_BASE + zlib.crc32(key.encode()) % _PORT_SPAN


def _openmpi_launch_host(env: Mapping[str, str]) -> str | None:
    """Host of Open MPI's ``mpirun`` (``OMPI_MCA_orte_hnp_uri``): rank 0's host by default."""
    match = re.search(r"tcp://([^;:,\]]+)", env.get("OMPI_MCA_orte_hnp_uri", ""))
    return match.group(1) if match else None


def _mpi4py_rank0_host() -> str | None:
    """Ask rank 0 for its host name through mpi4py, if it is installed (it is optional)."""
    try:
        from mpi4py import MPI  # type: ignore[import-not-found]
    except ImportError:
        return None
    import socket

    return str(MPI.COMM_WORLD.bcast(socket.gethostname(), root=0))


def main_address_for(info: ClusterInfo, env: Mapping[str, str] | None = None) -> str:
    """The address of rank 0 that every rank can reach."""
    env = os.environ if env is None else env
    if env.get("MASTER_ADDR"):
        return env["MASTER_ADDR"]
    if info.num_nodes <= 1:
        return "127.0.0.1"
    if info.launcher == "mpirun":
        host = _openmpi_launch_host(env) or _mpi4py_rank0_host()
        if host is None:
            raise UserError(
                "mpirun over several nodes: cannot tell where rank 0 runs; export it to all ranks, "
                "e.g. mpirun -x MASTER_ADDR=$(hostname) ... (or pip install mpi4py)"
            )
        return host
    return info.master_addr


class LauncherEnvironment(ClusterEnvironment):
    """A ``ClusterEnvironment`` for processes an external launcher started (torchrun, srun, mpirun, ...).

    Ranks and sizes come from the :class:`ClusterInfo` detected at construction; Lightning never starts
    processes itself under it (``creates_processes_externally`` is true).
    """

    def __init__(self, info: ClusterInfo) -> None:
        super().__init__()
        self.info = info
        self._main_address: str | None = None

    @property
    @override
    def creates_processes_externally(self) -> bool:
        return True

    @property
    @override
    def main_address(self) -> str:
        if self._main_address is None:
            self._main_address = main_address_for(self.info)
        return self._main_address

    @property
    @override
    def main_port(self) -> int:
        return derived_port(self.info)

    @staticmethod
    @override
    def detect() -> bool:
        return detect().launcher not in ("local",)

    @override
    def world_size(self) -> int:
        return self.info.world_size

    @override
    def set_world_size(self, size: int) -> None:
        if size != self.info.world_size:
            log.debug(
                "%s launched %d ranks; ignoring world size %d", self.info.launcher, self.info.world_size, size
            )

    @override
    def global_rank(self) -> int:
        return self.info.rank

    @override
    def set_global_rank(self, rank: int) -> None:
        rank_zero_only.rank = self.info.rank  # type: ignore[attr-defined]

    @override
    def local_rank(self) -> int:
        return self.info.local_rank

    @override
    def node_rank(self) -> int:
        return self.info.node_rank

    @override
    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        validate_launch(self.info, num_devices, num_nodes)

    def __repr__(self) -> str:
        i = self.info
        return f"LauncherEnvironment({i.launcher}, rank={i.rank}/{i.world_size}, local_rank={i.local_rank})"


def make_cluster_environment(info: ClusterInfo | None = None) -> ClusterEnvironment:
    """The Lightning ``ClusterEnvironment`` for ``info`` (default: detected from this process's env)."""
    info = detect() if info is None else info
    if info.launcher == "local" or info.world_size <= 1:
        return LightningEnvironment()
    if info.launcher == "srun":
        check_srun_layout()
    return LauncherEnvironment(info)


def check_strategy_launch(strategy: Any) -> None:
    """Under an external launcher, raise a one-line :class:`UserError` when the strategy's layout
    (``num_processes`` per node x ``num_nodes``) does not match what the launcher started; do nothing under
    any other cluster environment. Called from a strategy's ``_configure_launcher``."""
    env = strategy.cluster_environment
    if isinstance(env, LauncherEnvironment):
        env.validate_settings(num_devices=strategy.num_processes, num_nodes=strategy.num_nodes)


def check_srun_layout(env: Mapping[str, str] | None = None) -> None:
    """``srun -n N`` (N > 1) without ``--ntasks-per-node`` leaves tasks per node to SLURM: refuse it."""
    env = os.environ if env is None else env
    tasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1")
    if tasks > 1 and not env.get("SLURM_NTASKS_PER_NODE"):
        nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or "1"
        per_node = max(1, tasks // max(1, int(nodes)))
        raise UserError(
            f"srun started {tasks} tasks with -n/--ntasks but without --ntasks-per-node, so the tasks per "
            f"node are not fixed; launch with: srun --nodes={nodes} --ntasks-per-node={per_node} ... "
            f"and set trainer.devices={per_node}, trainer.num_nodes={nodes}"
        )


def validate_launch(
    info: ClusterInfo, devices: int, num_nodes: int, env: Mapping[str, str] | None = None
) -> None:
    """Raise a one-line :class:`UserError` when the Trainer's layout cannot match what the launcher started.

    ``devices`` and ``num_nodes`` are the Trainer's (processes per node, nodes).
    """
    if info.launcher == "local" or info.world_size <= 1:
        return
    if info.launcher == "srun":
        check_srun_layout(env)
    who = f"{info.launcher} started {info.world_size} processes"
    layout = f"{info.local_world_size} per node on {info.num_nodes} node(s)"
    if devices != info.local_world_size:
        raise UserError(
            f"{who} ({layout}) but trainer.devices={devices}; set --trainer.devices {info.local_world_size} "
            f"(devices = processes per node)"
        )
    if num_nodes != info.num_nodes:
        raise UserError(
            f"{who} ({layout}) but trainer.num_nodes={num_nodes}; set --trainer.num_nodes {info.num_nodes}"
        )
    if devices * num_nodes != info.world_size:
        raise UserError(
            f"{who}, which is not trainer.devices x trainer.num_nodes = {devices} x {num_nodes}; "
            f"start the same number of processes on every node"
        )
    if not (0 <= info.rank < info.world_size and 0 <= info.local_rank < info.local_world_size):
        raise UserError(
            f"{info.launcher} gave this process rank {info.rank} (local {info.local_rank}) outside world "
            f"size {info.world_size} (local {info.local_world_size}); check the launcher's variables"
        )
