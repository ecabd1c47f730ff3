"""``hpc_ddp``: Lightning's DDP + detected launcher, backend choice, device pinning, collective timeout."""

from __future__ import annotations

import logging
import signal
import sys
from datetime import timedelta
from typing import Any

import torch
from lightning.fabric.plugins import ClusterEnvironment
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from typing_extensions import override

from itwinai_lightning.cluster import default_backend
from itwinai_lightning.errors import UserError
from itwinai_lightning.placement import known, lost_peer
from itwinai_lightning.strategies import process_group
from itwinai_lightning.strategies.environment import LauncherEnvironment, make_cluster_environment

log = logging.getLogger(__name__)

DEFAULT_INIT_TIMEOUT_S = 300.0

#: Fragments of the errors torch.distributed raises when a peer died or stopped answering.
_PEER_FAILURE = (
    "connection closed by peer",
    "connection reset by peer",
    "timed out",
    "timeout",
    "broken pipe",
    "socket closed",
    "nccl communicator was aborted",
    "watchdog caught collective operation timeout",
    "has already been aborted",
)


def as_timedelta(timeout: float | timedelta | None) -> timedelta | None:
    """Seconds (as YAML gives them) or a ``timedelta`` -> ``timedelta``; ``None`` keeps torch's default."""
    if timeout is None or isinstance(timeout, timedelta):
        return timeout
    if timeout <= 0:
        raise UserError(f"trainer.strategy.init_args.timeout must be > 0 seconds, got {timeout}")
    return timedelta(seconds=float(timeout))


class HPCDDPStrategy(DDPStrategy):
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

    def __init__(
        self,
        timeout: float | timedelta | None = 1800.0,
        init_timeout: float | timedelta | None = None,
        process_group_backend: str | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        **kwargs: Any,
    ) -> None:
        env = cluster_environment if cluster_environment is not None else make_cluster_environment()
        super().__init__(
            cluster_environment=env,
            process_group_backend=process_group_backend,
            timeout=as_timedelta(timeout),
            **kwargs,
        )
        self._init_timeout = as_timedelta(init_timeout)

    @override
    def setup_distributed(self) -> None:
        # Rendezvous waits for the slowest rank to start (imports, a busy node): give it `init_timeout`
        # (default: the larger of `timeout` and 5 minutes), then bound every collective by `timeout`.
        collective = self._timeout
        floor = timedelta(seconds=DEFAULT_INIT_TIMEOUT_S)
        rendezvous = self._init_timeout or (max(collective, floor) if collective is not None else None)
        self._timeout = rendezvous
        try:
            super().setup_distributed()
        finally:
            self._timeout = collective
        process_group.close_at_exit()
        if collective is not None and collective != rendezvous and torch.distributed.is_initialized():
            set_timeout = getattr(torch.distributed.distributed_c10d, "_set_pg_timeout", None)
            if set_timeout is not None:
                set_timeout(collective)

    @property
    def timeout_s(self) -> float | None:
        return None if self._timeout is None else self._timeout.total_seconds()

    @property
    @override
    def root_device(self) -> torch.device:
        assert self.parallel_devices is not None
        device = self.parallel_devices[self.local_rank % len(self.parallel_devices)]
        if device.type == "cuda":
            visible = torch.cuda.device_count()
            if visible == 1:  # the launcher gave this task exactly one GPU (e.g. srun --gpus-per-task=1)
                return torch.device("cuda", 0)
            if self.local_rank >= visible:
                raise UserError(
                    f"local rank {self.local_rank} has no GPU: only {visible} visible on this node; "
                    f"start at most {visible} processes per node or set trainer.devices accordingly"
                )
            return torch.device("cuda", self.local_rank)
        return device

    @override
    def _configure_launcher(self) -> None:
        env = self.cluster_environment
        if isinstance(env, LauncherEnvironment):
            env.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        super()._configure_launcher()

    @override
    def _get_process_group_backend(self) -> str:
        return self._process_group_backend or default_backend(self.root_device.type)

    @override
    def on_exception(self, exception: BaseException) -> None:
        super().on_exception(exception)
        if not self._is_peer_failure(exception):
            return
        info = getattr(self.cluster_environment, "info", None)
        source = info.launcher if info is not None else "lightning"
        limit = "torch's default" if self.timeout_s is None else f"{self.timeout_s:g} s"
        trainer = getattr(self._lightning_module, "_trainer", None)
        peer = lost_peer(str(exception), known(trainer), self.global_rank)
        message = (
            f"hpc_ddp: rank {self.global_rank} of {self.world_size} ({source}) lost a peer in a collective: "
            f"{peer} died or stopped responding (collective timeout {limit}). "
            f"Check the other ranks' logs for the first error. Original error: {exception}"
        )
        print(f"itwinai-lightning: error: {message.splitlines()[0]}", file=sys.stderr, flush=True)
        if exception.args and isinstance(exception.args[0], str):
            exception.args = (message, *exception.args[1:])
        if isinstance(self.launcher, _SubprocessScriptLauncher) and self.launcher.procs:
            self.launcher.kill(signal.SIGKILL)  # ranks Lightning started would otherwise outlive us

    @staticmethod
    def _is_peer_failure(exception: BaseException) -> bool:
        dist_error = getattr(torch.distributed, "DistError", RuntimeError)
        if not isinstance(exception, (RuntimeError, dist_error, ConnectionError, TimeoutError)):
            return False
        text = str(exception).lower()
        return any(fragment in text for fragment in _PEER_FAILURE)
