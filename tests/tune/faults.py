"""Fault injection for the tune tests (importable by ``class_path`` in Ray worker processes)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning.pytorch as pl
from typing_extensions import override


class KillRankOnce(pl.Callback):
    """SIGKILLs the process of ``rank`` once per ``marker`` file: ``when`` ``init`` (while the run is built,
    before the DDP rendezvous: rank 0 waits there) or ``train`` (at the first training epoch).
    """

    def __init__(self, marker: str, rank: int = 1, when: str = "train") -> None:
        self.marker = Path(marker)
        self.rank = rank
        self.when = when
        if when == "init" and os.environ.get("RANK") == str(rank):
            self._kill()

    def _kill(self) -> None:
        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.when == "train" and trainer.global_rank == self.rank:
            self._kill()
