"""How ``ray_ddp`` starts its ranks: one Ray actor per rank, the Trainer shipped to each, rank 0's results
shipped back to the driver.

It fills the strategy's public ``launcher`` contract (``launch``, ``kill``, ``is_interactive_compatible``:
what ``Trainer`` calls) with this package's own code, so no private Lightning launcher is subclassed. What
comes back from rank 0, and is put on the driver's Trainer, is what Lightning's own spawn launcher brings
back: the final weights (as bytes: the driver may be on another node), ``trainer.state``, the best
checkpoint's path, ``callback_metrics`` and the function's result (e.g. ``predict``'s predictions of rank 0).
"""

from __future__ import annotations

import io
import os
import random
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn, TrainerState
from lightning.pytorch.utilities import move_data_to_device

from itwinai_lightning.launch.environment import LauncherEnvironment
from itwinai_lightning.launch.ray_ranks import rank_envs
from itwinai_lightning.launch.where import detect_as

if TYPE_CHECKING:
    import lightning.pytorch as pl


class RayResources(Protocol):
    """What the launcher reads of its strategy (``ray_ddp``)."""

    address: str | None
    ray_num_cpus: int | None
    cpus_per_worker: float
    gpus_per_worker: float | None

    @property
    def root_device(self) -> torch.device: ...

    @property
    def total_workers(self) -> int: ...


@dataclass
class GlobalState:
    """The driver's random generators and determinism flags, restored in every actor before it runs."""

    python_rng: Any
    numpy_rng: Any
    torch_rng: torch.Tensor
    deterministic: bool
    warn_only: bool
    cudnn_benchmark: bool

    @classmethod
    def capture(cls) -> GlobalState:
        return cls(
            python_rng=random.getstate(),
            numpy_rng=np.random.get_state(),
            torch_rng=torch.get_rng_state(),
            deterministic=torch.are_deterministic_algorithms_enabled(),
            warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )

    def restore(self) -> None:
        random.setstate(self.python_rng)
        np.random.set_state(self.numpy_rng)
        torch.set_rng_state(self.torch_rng)
        torch.use_deterministic_algorithms(self.deterministic, warn_only=self.warn_only)
        torch.backends.cudnn.benchmark = self.cudnn_benchmark


class RankZeroOutput(NamedTuple):
    """What rank 0 sends back to the driver."""

    best_model_path: str | None
    weights: bytes | None  # the module's state dict after a fit, saved with torch.save
    state: TrainerState
    results: Any
    callback_metrics: dict[str, Any]


def collect(trainer: pl.Trainer, results: Any) -> RankZeroOutput | None:
    """Rank 0's output (None on the other ranks); called on every rank, since a state dict may sync."""
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", None) if callback is not None else None
    state_dict = trainer.lightning_module.state_dict()
    if trainer.global_rank != 0:
        return None
    weights = None
    if trainer.state.fn == TrainerFn.FITTING:
        buffer = io.BytesIO()
        torch.save(move_data_to_device(state_dict, "cpu"), buffer)
        weights = buffer.getvalue()
    metrics = {key: value.detach().cpu() for key, value in trainer.callback_metrics.items()}
    return RankZeroOutput(best or None, weights, trainer.state, move_data_to_device(results, "cpu"), metrics)


def recover(trainer: pl.Trainer, output: RankZeroOutput) -> None:
    """Put rank 0's output on the driver's Trainer."""
    callback = trainer.checkpoint_callback
    if callback is not None and hasattr(callback, "best_model_path"):
        callback.best_model_path = output.best_model_path or ""
    if output.weights is not None:
        state = torch.load(io.BytesIO(output.weights), map_location="cpu", weights_only=True)
        trainer.lightning_module.load_state_dict(state, strict=False)
    trainer.state = output.state
    trainer.callback_metrics.update(output.callback_metrics)


def init_ray(address: str | None = None, num_cpus: int | None = None, temp_dir: str | None = None) -> Any:
    """Connect to ``address`` (or ``$RAY_ADDRESS``), else start a private local Ray with the dashboard off.

    Ray itself replaces a loopback node address by the host's reachable IP (``resolve_ip_for_localhost``),
    so a local Ray listens on the host address; with the dashboard off no HTTP server is started.
    """
    import sys

    if not sys.stderr.isatty():  # workers' lines forwarded into a file or pipe: no ANSI colour codes
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # its "[repeated Nx]" suffix is always coloured
    import ray

    if ray.is_initialized():
        return ray
    # a stopped multi-worker trial winds its ranks down together before Tune reuses its process (s)
    env_vars = {
        "RAY_CHDIR_TO_TRIAL_DIR": "0",
        "TUNE_FUNCTION_THREAD_TIMEOUT_S": os.environ.get("TUNE_FUNCTION_THREAD_TIMEOUT_S", "30"),
    }
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=True)
        return ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.update(env_vars)
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        _temp_dir=temp_dir,
    )
    return ray


class RayLauncher:
    """Starts ``strategy.total_workers`` Ray actors, runs the Trainer's function in each, returns rank 0's."""

    is_interactive_compatible = True

    def __init__(self, strategy: RayResources) -> None:
        self._strategy = strategy
        self._actors: list[Any] = []

    def launch(
        self, function: Callable[..., Any], *args: Any, trainer: pl.Trainer | None = None, **kwargs: Any
    ) -> Any:
        strategy = self._strategy
        ray = init_ray(strategy.address, strategy.ray_num_cpus)
        use_gpu = strategy.root_device.type == "cuda"
        gpus = strategy.gpus_per_worker if strategy.gpus_per_worker is not None else (1.0 if use_gpu else 0.0)
        actor_cls = ray.remote(num_cpus=strategy.cpus_per_worker, num_gpus=gpus)(RankActor)
        self._actors = [actor_cls.remote() for _ in range(strategy.total_workers)]
        try:
            hosts = ray.get([actor.host.remote() for actor in self._actors])
            main_addr, main_port = ray.get(self._actors[0].free_port.remote())
            payload = ray.put((trainer, function, args, kwargs, GlobalState.capture()))
            envs = rank_envs(hosts, main_addr, main_port, os.environ)
            outputs = ray.get(
                [actor.run.remote(payload, env) for actor, env in zip(self._actors, envs, strict=True)]
            )
        finally:
            self.kill(signal.SIGKILL)
        if trainer is None:
            return outputs[0]
        recover(trainer, outputs[0])
        return outputs[0].results

    def kill(self, signum: int) -> None:
        """End every actor (Ray kills the process; the signal number is not used)."""
        if not self._actors:
            return
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []


class RankActor:
    """Actor body: one DDP rank."""

    def host(self) -> str:
        import ray

        return str(ray.util.get_node_ip_address())

    def free_port(self) -> tuple[str, int]:
        with socket.socket() as sock:
            sock.bind(("", 0))
            return self.host(), int(sock.getsockname()[1])

    def run(self, payload: Any, env: dict[str, str]) -> Any:
        os.environ.update(env)
        trainer, function, args, kwargs, state = payload
        state.restore()
        if trainer is None:
            results = function(*args, **kwargs)
            return results if env["RANK"] == "0" else None
        trainer.strategy.cluster_environment = LauncherEnvironment(detect_as("ray"))
        return collect(trainer, function(*args, **kwargs))
