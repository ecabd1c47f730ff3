"""A test callback: each rank writes what FSDP wrapped and how training went to ``<out>/probe<rank>.json``."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl


class FSDPProbe(pl.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        modules = list(trainer.strategy.model.modules()) if trainer.strategy.model is not None else []
        got = {
            "classes": sorted({type(m).__name__ for m in modules}),
            "units": sum(type(m).__name__ == "FullyShardedDataParallel" for m in modules),
            "backend": getattr(trainer.strategy, "process_group_backend", None),
            "loss": float(trainer.callback_metrics["train_loss"]),
            "step": trainer.global_step,
        }
        (self.out_dir / f"probe{trainer.global_rank}.json").write_text(json.dumps(got))
