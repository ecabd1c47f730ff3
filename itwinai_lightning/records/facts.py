"""What a Trainer can tell about a run: strategy, launcher, placement, devices, versions, CPU, parameters.

The facts that do not change during a run (versions, CPU model, parameters) are looked up once per
Trainer and kept for it (:mod:`itwinai_lightning.per_trainer`).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from itwinai_lightning import per_trainer

if TYPE_CHECKING:
    import lightning.pytorch as pl


def describe_trainer(trainer: pl.Trainer) -> dict[str, Any]:
    """Top-level fields a Trainer can tell: strategy, launcher, world size, devices, precision, versions."""
    import lightning
    import torch

    from itwinai_lightning import __version__
    from itwinai_lightning.launch.where import detect

    strategy = trainer.strategy
    name = getattr(strategy, "short_name", None) or type(strategy).__name__
    root = getattr(strategy, "root_device", None)
    accelerator = root.type if root is not None else "cpu"
    device_names = []
    if accelerator == "cuda" and torch.cuda.is_available():
        device_names = [torch.cuda.get_device_name(root)]
    where: dict[str, Any] = {
        "launcher": detect().launcher,
        "world_size": int(trainer.world_size),
        "num_nodes": int(trainer.num_nodes),
        "devices_per_node": int(trainer.num_devices),
    }
    placed = per_trainer.get(trainer, per_trainer.PLACEMENT)
    if placed is not None:  # what every rank reported beats the Trainer's arguments
        where = placed.record_fields()
    facts = per_trainer.get(trainer, per_trainer.FACTS)
    if facts is None:  # what does not change during a run is looked up once, not at every contribution
        facts = {
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "lightning": lightning.__version__,
                "itwinai_lightning": __version__,
                **({"cuda": str(torch.version.cuda)} if torch.version.cuda else {}),
                **_strategy_backend_version(name),
            },
            "cpu_model": cpu_model(),
            "threads_per_process": torch.get_num_threads(),  # rank 0's intra-op threads
            "parameters": _parameters(trainer),
        }
        per_trainer.put(trainer, per_trainer.FACTS, facts)
    return {
        "strategy": name,
        **where,
        "accelerator": accelerator,
        "device_names": device_names,
        "precision": str(trainer.precision),
        **facts,
    }


def cpu_model() -> str:
    """This host's CPU model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _parameters(trainer: pl.Trainer) -> int | None:
    """Parameters of the LightningModule (as this rank holds them)."""
    module = getattr(trainer, "lightning_module", None)
    try:
        return int(sum(p.numel() for p in module.parameters())) if module is not None else None
    except (AttributeError, RuntimeError):
        return None


def _strategy_backend_version(strategy: str) -> dict[str, str]:
    """The version of the library behind the strategy (DeepSpeed, Horovod, Ray), read from metadata."""
    from importlib import metadata

    for dist in ("deepspeed", "horovod", "ray"):
        if dist in strategy.lower():
            try:
                return {dist: metadata.version(dist)}
            except metadata.PackageNotFoundError:
                return {}
    return {}
