"""``ray_ddp``: DDP whose processes are Ray actors, on a local Ray or an existing cluster (``address``).

``fit --trainer.strategy ray_ddp --trainer.devices 2`` starts two Ray actors (locally: a private Ray with the
dashboard off, bound to 127.0.0.1; with ``address: auto`` or ``host:port``: the running cluster), ships
the Trainer to them exactly as Lightning's spawn launcher does, runs the fit there over gloo/NCCL and brings
the final weights, state and ``callback_metrics`` back to the driver.

Inside a Ray worker that already is one rank (``RAY_TRAIN_WORKER`` set: the ranks of the ``tune``
subcommand's multi-worker trials, or a Ray Train worker) the strategy launches nothing: ranks come from
the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...) and an existing process group is reused.
Ray is imported only when a fit actually launches.
"""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero_only
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from typing_extensions import override

from itwinai_lightning import compat
from itwinai_lightning.launch.environment import LauncherEnvironment
from itwinai_lightning.launch.where import ClusterInfo, detect_as
from itwinai_lightning.strategies.ddp import HPCDDPStrategy

if TYPE_CHECKING:
    import lightning.pytorch as pl

WORKER_FLAG = "RAY_TRAIN_WORKER"


def in_ray_worker(env: Mapping[str, str] | None = None) -> bool:
    return (os.environ if env is None else env).get(WORKER_FLAG) is not None


def worker_info(env: Mapping[str, str] | None = None) -> ClusterInfo:
    """Rank layout a Ray worker was given (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``NODE_RANK``, ...),
    read by the launcher table's ``ray`` reader."""
    return detect_as("ray", env)


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
        self._launcher = None if self.is_worker else _RayLauncher(self)

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


class _RayLauncher(compat.MultiProcessingLauncher):  # type: ignore[misc,name-defined]
    """Lightning's spawn launcher with Ray actors in place of local processes."""

    def __init__(self, strategy: RayDDPStrategy) -> None:
        super().__init__(strategy, start_method="spawn")
        self._ray_strategy = strategy

    @property
    @override
    def is_interactive_compatible(self) -> bool:
        return True

    @override
    def launch(
        self, function: Callable[..., Any], *args: Any, trainer: pl.Trainer | None = None, **kwargs: Any
    ) -> Any:
        strategy = self._ray_strategy
        ray = init_ray(strategy.address, strategy.ray_num_cpus)
        use_gpu = strategy.root_device.type == "cuda"
        gpus = strategy.gpus_per_worker if strategy.gpus_per_worker is not None else (1.0 if use_gpu else 0.0)
        actor_cls = ray.remote(num_cpus=strategy.cpus_per_worker, num_gpus=gpus)(_RayWorker)
        actors = [actor_cls.remote() for _ in range(strategy.total_workers)]
        try:
            hosts = ray.get([actor.host.remote() for actor in actors])
            main_addr, main_port = ray.get(actors[0].free_port.remote())
            payload = ray.put((trainer, function, args, kwargs, compat.GlobalStateSnapshot.capture()))
            envs = _rank_envs(hosts, main_addr, main_port)
            outputs = ray.get(
                [actor.run.remote(payload, env) for actor, env in zip(actors, envs, strict=True)]
            )
        finally:
            for actor in actors:
                ray.kill(actor)
        worker_output = outputs[0]
        if trainer is None:
            return worker_output
        self._recover_results_in_main_process(worker_output, trainer)
        return worker_output.trainer_results

    def collect_rank_zero_results(self, trainer: pl.Trainer, results: Any) -> Any:
        """What rank 0 ships back to the driver (called in the actor)."""
        return self._collect_rank_zero_results(trainer, results)

    @override
    def _collect_rank_zero_results(self, trainer: pl.Trainer, results: Any) -> Any:
        output = super()._collect_rank_zero_results(trainer, results)
        if output is None or output.weights_path is None:
            return output
        # the driver may be on another node: ship the weights as bytes instead of a local temp path
        with open(output.weights_path, "rb") as handle:
            weights = handle.read()
        self._strategy.checkpoint_io.remove_checkpoint(output.weights_path)
        return output._replace(weights_path=None, extra={**output.extra, "weights_bytes": weights})

    @override
    def _recover_results_in_main_process(self, worker_output: Any, trainer: pl.Trainer) -> None:
        weights = worker_output.extra.get("weights_bytes")
        if weights is not None:
            state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
            trainer.lightning_module.load_state_dict(state, strict=False)
        super()._recover_results_in_main_process(worker_output, trainer)


def _rank_envs(hosts: list[str], main_addr: str, main_port: int) -> list[dict[str, str]]:
    """Ranks in actor order; local ranks and node ranks grouped by the host each actor landed on."""
    nodes = list(dict.fromkeys(hosts))
    seen: dict[str, int] = {}
    envs = []
    for rank, host in enumerate(hosts):
        local_rank = seen.get(host, 0)
        seen[host] = local_rank + 1
        envs.append(
            {
                WORKER_FLAG: "1",
                "RANK": str(rank),
                "LOCAL_RANK": str(local_rank),
                "WORLD_SIZE": str(len(hosts)),
                "LOCAL_WORLD_SIZE": str(hosts.count(host)),
                "NODE_RANK": str(nodes.index(host)),
                "MASTER_ADDR": main_addr,
                "MASTER_PORT": str(main_port),
            }
        )
    return envs


class _RayWorker:
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
        trainer, function, args, kwargs, snapshot = payload
        snapshot.restore()
        strategy = trainer.strategy
        strategy.cluster_environment = LauncherEnvironment(worker_info())
        results = function(*args, **kwargs)
        output = strategy.launcher.collect_rank_zero_results(trainer, results)
        return output if env["RANK"] == "0" else None
