"""``ray_ddp``: DDP whose processes are Ray actors, on a local Ray or an existing cluster (``address``).

``fit --trainer.strategy ray_ddp --trainer.devices 2`` starts two Ray actors (locally: a private Ray with the
dashboard off, bound to 127.0.0.1; with ``address: auto`` or ``host:port``: the running cluster), ships
the Trainer to them, runs the fit there over gloo/NCCL and brings the final weights, state, best checkpoint
path and ``callback_metrics`` back to the driver (:mod:`.ray_launcher`).

Inside a Ray worker that already is one rank (``RAY_TRAIN_WORKER`` set: the ranks of the ``tune``
subcommand's multi-worker trials, or a Ray Train worker) the strategy launches nothing: ranks come from
the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...) and an existing process group is reused.
Ray is imported only when a fit actually launches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero_only
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from typing_extensions import override

from itwinai_lightning.launch.environment import LauncherEnvironment
from itwinai_lightning.launch.ray_ranks import in_ray_worker
from itwinai_lightning.launch.where import ClusterInfo, detect_as
from itwinai_lightning.strategies.ddp import HPCDDPStrategy
from itwinai_lightning.strategies.ray_launcher import RayLauncher


def worker_info(env: Mapping[str, str] | None = None) -> ClusterInfo:
    """Rank layout a Ray worker was given (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``NODE_RANK``, ...),
    read by the launcher table's ``ray`` reader."""
    return detect_as("ray", env)


class RayDDPStrategy(HPCDDPStrategy):
    """DDP over Ray actors (driver side) or over Ray processes that already are the ranks (worker side).

    Args:
        num_workers: processes to start; default ``trainer.num_nodes * trainer.devices``.
        address: Ray cluster to use (``auto``, ``host:port``); default ``$RAY_ADDRESS`` or a local Ray.
        cpus_per_worker / gpus_per_worker: Ray resources per actor (GPU default: 1 on CUDA, else 0).
        num_cpus: CPUs of a locally started Ray (default: all).
        Other keyword arguments go to ``hpc_ddp`` (``timeout``, ``init_timeout``, ...): the workers share
        its launch-aware mixin (collective timeout, rendezvous window, the lost-peer message).

    Logs nothing itself; ``launcher`` in the RunRecord reads ``ray`` on the workers.
    """

    strategy_name = "ray_ddp"

    def __init__(
        self,
        num_workers: int | None = None,
        address: str | None = None,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float | None = None,
        num_cpus: int | None = None,
        **kwargs: Any,
    ) -> None:
        if in_ray_worker():
            kwargs.setdefault("cluster_environment", LauncherEnvironment(worker_info()))
        super().__init__(**kwargs)
        self.num_workers = num_workers
        self.address = address
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.ray_num_cpus = num_cpus

    @property
    def is_worker(self) -> bool:
        return isinstance(self.cluster_environment, LauncherEnvironment) and in_ray_worker()

    @property
    def total_workers(self) -> int:
        return self.num_workers or self.num_nodes * self.num_processes

    @override
    def _configure_launcher(self) -> None:
        self._launcher = None if self.is_worker else RayLauncher(self)  # type: ignore[assignment]

    @override
    def set_world_ranks(self) -> None:
        if not self.is_worker:
            self._set_driver_ranks()
            return
        rank_zero_only.rank = fabric_rank_zero_only.rank = self.global_rank  # type: ignore[attr-defined]

    def _set_driver_ranks(self) -> None:
        if self.cluster_environment is not None:
            self.cluster_environment.set_global_rank(0)
            self.cluster_environment.set_world_size(self.total_workers)
        rank_zero_only.rank = fabric_rank_zero_only.rank = 0  # type: ignore[attr-defined]

    @property
    @override
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    @property
    @override
    def root_device(self) -> torch.device:
        device = super().root_device if not self.is_worker else self.parallel_devices[0]  # type: ignore[index]
        if device.type == "cuda" and self.is_worker:
            return torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
        return device
