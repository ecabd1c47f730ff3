"""HPC-aware strategies, registered with Lightning's StrategyRegistry under short names.

Registration is lazy: each name maps to a small factory that imports its module only when a Trainer asks
for it, so ``strategy: hpc_deepspeed`` in YAML works without importing DeepSpeed at start-up.
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning.pytorch.strategies import StrategyRegistry

#: short name -> ("module:Class", description)
SHORT_NAMES: dict[str, tuple[str, str]] = {}


def _factory(target: str):  # type: ignore[no-untyped-def]
    module_name, class_name = target.split(":")

    def build(**kwargs: Any):  # type: ignore[no-untyped-def]
        cls = getattr(importlib.import_module(module_name), class_name)
        return cls(**kwargs)

    build.__name__ = class_name
    return build


def register(name: str, target: str, description: str, **init_params: Any) -> None:
    """Register ``name`` -> ``module:Class`` (imported on first use) with Lightning's StrategyRegistry."""
    SHORT_NAMES[name] = (target, description)
    StrategyRegistry.register(name, _factory(target), description=description, override=True, **init_params)


# Each strategy module registers itself here (one line per short name). Keep imports out of this file.
register("hpc_ddp", "itwinai_lightning.strategies.ddp:HPCDDPStrategy", "launcher-aware DDP with timeout")
register(
    "hpc_deepspeed",
    "itwinai_lightning.strategies.deepspeed:HPCDeepSpeedStrategy",
    "DeepSpeed ZeRO on CPU or CUDA",
)
register(
    "hpc_fsdp",
    "itwinai_lightning.strategies.fsdp:HPCFSDPStrategy",
    "launcher-aware fully sharded data parallel (FSDP) on CUDA or CPU",
)
register("horovod", "itwinai_lightning.strategies.horovod:HorovodStrategy", "Horovod data parallelism")
register(
    "ray_ddp", "itwinai_lightning.strategies.ray:RayDDPStrategy", "DDP on Ray actors, local or a cluster"
)
