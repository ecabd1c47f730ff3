"""Collect one small object per rank on every rank (for cross-rank profiling summaries)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning.pytorch as pl


def all_gather_object(trainer: pl.Trainer, obj: Any, spool: Path | None = None) -> list[Any] | None:
    """Every rank's ``obj`` in rank order, or ``None`` on ranks that cannot see them all.

    Uses ``torch.distributed`` when it is initialised (DDP, DeepSpeed). Otherwise, with several ranks
    (e.g. Horovod), each rank writes ``spool/rank<N>.json`` and, after a barrier, global rank 0 reads
    them (the run directory is on a shared file system on clusters); other ranks get ``None``.
    """
    import torch.distributed as dist

    world = int(trainer.world_size)
    if world <= 1:
        return [obj]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() == world:
        out: list[Any] = [None] * world
        dist.all_gather_object(out, obj)
        return out
    if spool is None:
        return [obj] if trainer.global_rank == 0 else None
    spool.mkdir(parents=True, exist_ok=True)
    (spool / f"rank{trainer.global_rank}.json").write_text(json.dumps(obj, default=str))
    trainer.strategy.barrier("itwinai_lightning.profiling.gather")
    if trainer.global_rank != 0:
        return None
    found = []
    for rank in range(world):
        path = spool / f"rank{rank}.json"
        found.append(json.loads(path.read_text()) if path.exists() else None)
    return found
