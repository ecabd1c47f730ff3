"""``hpc_ddp``: Lightning's DDP + detected launcher, backend choice, device pinning, collective timeout."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from lightning.fabric.plugins import ClusterEnvironment
from lightning.pytorch.strategies import DDPStrategy
from typing_extensions import override

from itwinai_lightning.strategies.launch_aware import DEFAULT_INIT_TIMEOUT_S, LaunchAware, as_timedelta

__all__ = ["DEFAULT_INIT_TIMEOUT_S", "HPCDDPStrategy", "as_timedelta"]


class HPCDDPStrategy(LaunchAware, DDPStrategy):
    """DDP that works alike under ``torchrun``, ``srun``, ``mpirun``, ``horovodrun``, Ray or Lightning.

    On top of :class:`~lightning.pytorch.strategies.DDPStrategy` it

    * takes its ``ClusterEnvironment`` from :func:`make_cluster_environment` (no ``mpi4py`` needed for MPI);
    * checks the launch before any process group exists (``trainer.devices`` = processes per node, ...)
      and reports a mistake in one line;
    * uses ``nccl`` on CUDA and ``gloo`` on CPU unless ``process_group_backend`` is given;
    * pins each process to ``cuda:<local rank>``, or to its only visible GPU when the launcher already
      restricted ``CUDA_VISIBLE_DEVICES`` per task;
    * bounds every collective by ``timeout`` (seconds): when a rank dies or hangs, the others fail within
      ``timeout`` with a message that says so, and any ranks Lightning itself started are killed.

    Args:
        timeout: collective timeout in seconds (or a ``timedelta``); default 1800 s (torch's default).
        init_timeout: how long the first rendezvous may wait for all ranks to start; default
            ``max(timeout, 300 s)``.
        process_group_backend: ``"nccl"``, ``"gloo"``, ... to override the automatic choice.
        cluster_environment: to override detection.
        **kwargs: anything :class:`DDPStrategy` / ``DistributedDataParallel`` accepts
            (``find_unused_parameters``, ``static_graph``, ``gradient_as_bucket_view``, ...).

    Logs nothing itself.
    """

    label = "hpc_ddp"

    def __init__(
        self,
        timeout: float | timedelta | None = 1800.0,
        init_timeout: float | timedelta | None = None,
        process_group_backend: str | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        **kwargs: Any,
    ) -> None:
        launch = self._launch_aware_kwargs(timeout, init_timeout, cluster_environment)
        super().__init__(process_group_backend=process_group_backend, **launch, **kwargs)

    @override
    def setup_distributed(self) -> None:
        with self.rendezvous_window():
            super().setup_distributed()
