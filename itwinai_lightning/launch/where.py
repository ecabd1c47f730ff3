"""Where am I running? Detect the launcher and the process's place in the job from the environment.

The launchers, their order and the variables each one sets are defined once, in
:mod:`itwinai_lightning.launch.table` (the launcher table); this module turns the match into a
:class:`ClusterInfo`.

Nothing here imports torch.distributed, MPI or Ray: reading the environment is enough and cheap.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from itwinai_lightning.launch import table as launchers

__all__ = ["ClusterInfo", "Launcher", "default_backend", "detect", "detect_as"]

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


def detect(env: Mapping[str, str] | None = None) -> ClusterInfo:
    """Detect the launcher from ``env`` (default: ``os.environ``) with the launcher table."""
    env = os.environ if env is None else env
    spec = launchers.find(env)
    return ClusterInfo(launcher=spec.name, **spec.read(env))  # type: ignore[arg-type]


def detect_as(name: str, env: Mapping[str, str] | None = None) -> ClusterInfo:
    """Read ``env`` with launcher ``name``'s reader from the table (a Ray worker knows it is one)."""
    env = os.environ if env is None else env
    return ClusterInfo(launcher=name, **launchers.get(name).read(env))  # type: ignore[arg-type]


def default_backend(device_type: str) -> str:
    """nccl on CUDA (and ROCm, where torch calls RCCL "nccl"), gloo on CPU."""
    return "nccl" if device_type == "cuda" else "gloo"


#: torchrun's count of how often it restarted this worker group (``--max-restarts``)
RESTART_ENV = "TORCHELASTIC_RESTART_COUNT"


def restart_number(env: Mapping[str, str] | None = None) -> int:
    """How often this node's torchrun agent restarted its workers after a failure (0: never, or no elastic
    launcher). Per node: an agent whose workers were stopped because another node's failed counts a
    membership change, not a restart; :func:`attempt_number` is the same on every node."""
    value = (os.environ if env is None else env).get(RESTART_ENV, "0")
    return int(value) if value.isdigit() else 0


_attempt: list[int] = []  # this process's attempt number, once asked


def attempt_number() -> int:
    """Which attempt of its torchrun worker group this process belongs to (0: the first), the same on every
    node. Under torchrun with the agent's store (``TORCHELASTIC_USE_AGENT_STORE``, which lives as long as the
    torchrun run), each rank counts its own starts in that store: the agents restart every worker of the
    group together, so the k-th start of any rank belongs to attempt k-1. Without it: :func:`restart_number`.
    Asked once per process (the count is a store increment)."""
    if _attempt:
        return _attempt[0]
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or not env.get("MASTER_ADDR"):
        _attempt.append(restart_number(env))
        return _attempt[0]
    from datetime import timedelta

    import torch.distributed as dist

    store = dist.TCPStore(
        env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timedelta(seconds=120)
    )
    _attempt.append(int(store.add(f"itwinai/starts/rank{env.get('RANK', '0')}", 1)) - 1)
    return _attempt[0]
