"""Fault injection for the tune tests (importable by ``class_path`` in Ray worker processes)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning.pytorch as pl
from typing_extensions import override


class KillRankOnce(pl.Callback):
    """SIGKILLs the process of ``rank`` at its first training epoch, once per ``marker`` file."""

    def __init__(self, marker: str, rank: int = 1) -> None:
        self.marker = Path(marker)
        self.rank = rank

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank == self.rank and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
