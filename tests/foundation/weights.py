"""A test callback: each rank saves its final weights and what it detected about its launch."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch
from typing_extensions import override

from itwinai_lightning.demo import SpectrogramDenoiser
from itwinai_lightning.launch.where import detect
from itwinai_lightning.strategies.weights import gathered_state_dict


class SaveFinalWeights(pl.Callback):
    """Writes ``<out_dir>/{initial,weights}_rank<R>.pt`` (state_dicts) and ``launch_rank<R>.json``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.detected: dict[str, object] = {}

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = gathered_state_dict(trainer)
        torch.save(state, self.out_dir / f"initial_rank{trainer.global_rank}.pt")
        self.detected = detect().as_dict()  # as the launch left it (Lightning's teardown edits the env)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        state = gathered_state_dict(trainer)
        torch.save(state, self.out_dir / f"weights_rank{rank}.pt")
        strategy = trainer.strategy
        env = getattr(strategy, "cluster_environment", None)
        info = {
            "detected": self.detected,
            "global_rank": rank,
            "world_size": trainer.world_size,
            "strategy": type(strategy).__name__,
            "environment": type(env).__name__,
            "backend": getattr(strategy, "process_group_backend", None),
            "timeout_s": getattr(strategy, "timeout_s", None),
            "steps": trainer.global_step,
        }
        (self.out_dir / f"launch_rank{rank}.json").write_text(json.dumps(info, indent=1))


class AtRankStep(pl.Callback):
    """Something done in the process of ``rank`` as it starts training step ``at_step`` (:meth:`due`), in
    the subclass's own ``on_train_batch_start``: the frame a hang test names."""

    def __init__(self, rank: int, at_step: int) -> None:
        self.rank = rank
        self.at_step = at_step

    def due(self, trainer: pl.Trainer) -> bool:
        return trainer.global_rank == self.rank and trainer.global_step == self.at_step


class SignalRank(AtRankStep):
    """Sends ``signal_name`` to its own process on ``rank`` at training step ``at_step`` (a dying/hung rank).

    Writes ``<marker>`` with the wall-clock time just before, so a test can measure how long the others take.
    """

    def __init__(self, rank: int, at_step: int, signal_name: str, marker: str) -> None:
        super().__init__(rank, at_step)
        self.signal_name = signal_name
        self.marker = Path(marker)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, idx: int
    ) -> None:
        if not self.due(trainer):
            return
        import os
        import signal
        import time

        self.marker.write_text(f"{time.time()}\n{os.getpid()}\n")
        os.kill(os.getpid(), getattr(signal, self.signal_name))


class HangRank(AtRankStep):
    """Makes ``rank`` hang (sleep for an hour) at training step ``at_step``; writes ``<marker>`` with the
    wall-clock time the hang began."""

    def __init__(self, rank: int, at_step: int, marker: str) -> None:
        super().__init__(rank, at_step)
        self.marker = Path(marker)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, idx: int
    ) -> None:
        if not self.due(trainer):
            return
        import time

        self.marker.write_text(f"{time.time()}\n")
        time.sleep(3600)


class KillOnFirstAttempt(AtRankStep):
    """SIGKILLs ``rank`` at training step ``at_step``, on torchrun's first attempt only (a crashed worker)."""

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, idx: int
    ) -> None:
        if not self.due(trainer):
            return
        import os
        import signal

        if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
            os.kill(os.getpid(), signal.SIGKILL)


class NoTestStep(SpectrogramDenoiser):
    """The demo model without a ``test_step`` (as many users' modules are)."""

    test_step = pl.LightningModule.test_step


class RaiseOnRank(AtRankStep):
    """``rank`` raises a RuntimeError (a bug in the run) at training step ``at_step``."""

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, idx: int
    ) -> None:
        if self.due(trainer):
            raise RuntimeError(f"a bug on rank {self.rank}")
