"""What makes a Lightning strategy launcher-aware: one mixin shared by hpc_ddp, hpc_fsdp, hpc_deepspeed,
horovod and ray_ddp (through hpc_ddp).

:class:`LaunchAware` goes in front of a Lightning ``ParallelStrategy`` subclass (``DDPStrategy``,
``FSDPStrategy``, ``DeepSpeedStrategy``) and adds

* the ``ClusterEnvironment`` of whatever launched the process (:func:`make_cluster_environment`);
* the launch checks (``trainer.devices`` = processes per node, ...) before any process group exists;
* ``nccl`` on CUDA and ``gloo`` on CPU unless ``process_group_backend`` is given;
* pinning to ``cuda:<local rank>``, or to the only visible GPU when the launcher restricted
  ``CUDA_VISIBLE_DEVICES`` per task;
* a rendezvous window (``init_timeout``) separate from the collective timeout (``timeout``), and a one-line
  message naming the lost peer when a collective fails because a rank died or hung.
"""

from __future__ import annotations

import os
import platform
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch

from itwinai_lightning import compat, per_trainer
from itwinai_lightning.errors import UserError
from itwinai_lightning.launch import failure_note
from itwinai_lightning.launch.environment import check_strategy_launch, make_cluster_environment
from itwinai_lightning.launch.placement import known, lost_peer, lost_places
from itwinai_lightning.launch.where import attempt_number, default_backend, detect, restart_number
from itwinai_lightning.strategies import process_group

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
    "horovod has been shut down",  # Horovod, after a rank failed or left
)


def as_timedelta(timeout: float | timedelta | None) -> timedelta | None:
    """Seconds (as YAML gives them) or a ``timedelta`` -> ``timedelta``; ``None`` keeps torch's default."""
    if timeout is None or isinstance(timeout, timedelta):
        return timeout
    if timeout <= 0:
        raise UserError(f"trainer.strategy.init_args.timeout must be > 0 seconds, got {timeout}")
    return timedelta(seconds=float(timeout))


def is_peer_failure(exception: BaseException) -> bool:
    """True for the errors torch.distributed raises when another rank died or stopped answering."""
    dist_error = getattr(torch.distributed, "DistError", RuntimeError)
    if not isinstance(exception, (RuntimeError, dist_error, ConnectionError, TimeoutError)):
        return False
    text = str(exception).lower()
    return any(fragment in text for fragment in _PEER_FAILURE)


def _restart_note() -> str:
    """What happens next under torchrun with restarts left (``--max-restarts``)."""
    restart, most = restart_number(), os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")
    if most.isdigit() and restart < int(most):
        return (
            f" torchrun restarts the group (restart {restart + 1} of {most}); it resumes from the run's "
            "newest complete checkpoint."
        )
    return ""


class LaunchAware:
    """Mixin for a Lightning ParallelStrategy subclass: ``class S(LaunchAware, DDPStrategy)``.

    It overrides ``root_device``, ``_configure_launcher``, ``_get_process_group_backend`` and
    ``on_exception`` for the strategy behind it. Call :meth:`_launch_aware_kwargs` in ``__init__`` and wrap
    the process-group creation in :meth:`rendezvous_window`. ``label`` names the strategy in messages.
    """

    label = "hpc"
    _timeout: timedelta | None
    _init_timeout: timedelta | None
    _process_group_backend: str | None

    def _launch_aware_kwargs(
        self,
        timeout: float | timedelta | None,
        init_timeout: float | timedelta | None,
        cluster_environment: Any,
    ) -> dict[str, Any]:
        """The ``cluster_environment`` / ``timeout`` keywords for the Lightning base ``__init__``."""
        self._init_timeout = as_timedelta(init_timeout)
        env = cluster_environment if cluster_environment is not None else make_cluster_environment()
        return {"cluster_environment": env, "timeout": as_timedelta(timeout)}

    @contextmanager
    def rendezvous_window(self) -> Iterator[None]:
        """Create the process group inside: the first rendezvous waits ``init_timeout`` (default: the larger
        of ``timeout`` and 5 minutes) for the slowest rank to start; every later collective is bounded by
        ``timeout``."""
        collective = self._timeout
        floor = timedelta(seconds=DEFAULT_INIT_TIMEOUT_S)
        rendezvous = self._init_timeout or (max(collective, floor) if collective is not None else None)
        self._timeout = rendezvous
        try:
            self._join_a_restarted_group(rendezvous)
            yield
        finally:
            self._timeout = collective
        process_group.close_at_exit()
        if collective is not None and collective != rendezvous and torch.distributed.is_initialized():
            compat.set_collective_timeout(collective)

    def _join_a_restarted_group(self, timeout: timedelta | None) -> None:
        """A worker torchrun restarted (``--max-restarts``) creates its process group on keys of its own
        attempt: torch's rendezvous store is shared across attempts (pytorch/pytorch#135712), and a rank
        reading the previous attempt's address of a peer would wait for a process that is gone."""
        env = os.environ
        if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
            return
        restart = attempt_number()
        if not restart:
            return
        dist = torch.distributed
        if dist.is_initialized():
            return
        limit = timeout or timedelta(seconds=DEFAULT_INIT_TIMEOUT_S)
        store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=limit)
        own_keys = dist.PrefixStore(f"itwinai/attempt_{restart}", store)
        dist.init_process_group(
            self._get_process_group_backend(), store=own_keys, rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]), timeout=limit,
        )  # fmt: skip

    @property
    def timeout_s(self) -> float | None:
        return None if self._timeout is None else self._timeout.total_seconds()

    @property
    def root_device(self) -> torch.device:
        """This rank's device, pinned to the GPU the launcher meant for it."""
        strategy: Any = self
        devices = strategy.parallel_devices
        assert devices is not None
        device = devices[strategy.local_rank % len(devices)]
        if device.type != "cuda":
            return device
        visible = torch.cuda.device_count()
        if visible == 1:  # the launcher gave this task exactly one GPU (e.g. srun --gpus-per-task=1)
            return torch.device("cuda", 0)
        local_rank = strategy.local_rank
        if local_rank >= visible:
            raise UserError(
                f"local rank {local_rank} has no GPU: only {visible} visible on this node; "
                f"start at most {visible} processes per node or set trainer.devices accordingly"
            )
        return torch.device("cuda", local_rank)

    def _configure_launcher(self) -> None:
        """Under an external launcher the launch layout must match ``trainer.devices`` / ``num_nodes``."""
        check_strategy_launch(self)
        super()._configure_launcher()  # type: ignore[misc]

    def _get_process_group_backend(self) -> str:
        return self._process_group_backend or default_backend(self.root_device.type)

    def on_exception(self, exception: BaseException) -> None:
        super().on_exception(exception)  # type: ignore[misc]
        if (
            isinstance(exception, Exception)
            and not is_peer_failure(exception)
            and not isinstance(exception, UserError)
        ):  # this rank's own code raised: a job script does not restart what would fail again
            strategy: Any = self
            failure_note.write("error", [platform.node()], strategy.global_rank, None)
        self.report_lost_peer(exception)

    def report_lost_peer(self, exception: BaseException) -> None:
        """When ``exception`` says a peer died: one line naming it, and kill ranks Lightning started."""
        if not is_peer_failure(exception):
            return
        strategy: Any = self
        trainer = compat.attached_trainer(compat.strategy_module(strategy))
        if per_trainer.get(trainer, per_trainer.HANG_REPORTED):
            return  # the hang watchdog ended the run and said why; peers leaving is its consequence
        info = getattr(strategy.cluster_environment, "info", None)
        source = info.launcher if info is not None else detect().launcher
        limit = "torch's default" if self.timeout_s is None else f"{self.timeout_s:g} s"
        rank, world = strategy.global_rank, strategy.world_size
        placed = known(trainer)
        peer = lost_peer(str(exception), placed, rank)
        places = lost_places(str(exception), placed, rank)
        if places:
            step = int(trainer.global_step) if trainer is not None else None
            where = str(trainer.default_root_dir) if trainer is not None else None
            failure_note.write("lost_peer", [p.hostname for p in places], rank, step, where)
        message = (
            f"{self.label}: rank {rank} of {world} ({source}) lost a peer in a collective: "
            f"{peer} died or stopped responding (collective timeout {limit}). "
            f"Check the other ranks' logs for the first error.{_restart_note()} Original error: {exception}"
        )
        print(f"itwinai-lightning: error: {message.splitlines()[0]}", file=sys.stderr, flush=True)
        if exception.args and isinstance(exception.args[0], str):
            exception.args = (message, *exception.args[1:])
        launcher = strategy.launcher
        if isinstance(launcher, compat.SubprocessScriptLauncher) and launcher.procs:
            launcher.kill(signal.SIGKILL)  # ranks Lightning started would otherwise outlive us
