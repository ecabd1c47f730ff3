"""``TimedCheckpoint``: a checkpoint every ``every_min`` minutes of training, written in the background.

A failure then costs at most ``every_min`` of training (plus the restart) instead of everything since the
last epoch end. Saving blocks training only while the state is gathered and copied to CPU memory; a writer
thread serialises it and writes ``<run dir>/checkpoints/timed-step=<global step>.ckpt`` atomically (via
``.partial`` and a rename: a killed write is never resumed from), keeping the newest ``keep`` of them.
``hpc_fsdp``'s sharded state is copied by every rank and written by the same writer thread (torch's
distributed checkpoint, :meth:`HPCFSDPStrategy.save_checkpoint`), as are ``hpc_deepspeed``'s files
(:meth:`HPCDeepSpeedStrategy.save_checkpoint`). Strategies that write checkpoints their own way otherwise
save synchronously, and the run says so once. Removing the oldest kept checkpoint is queued behind the write.

When to save is decided without a collective on most steps: every ``check_every_n_steps`` optimizer steps
the ranks take the max of "my clock says it is time" (one all-reduce of one number), so all ranks save at
the same step.

Logs nothing to the loggers. The RunRecord's ``timed_checkpoints`` section: ``every_min`` (min),
``saves``, ``background`` (bool), ``blocked_s_median`` / ``blocked_s_max`` (s training waited per save, on
rank 0: gathering the state, the copy, the removal of the oldest queued), ``copy_s_median`` (s of that
spent copying the state to CPU memory), ``written_s_median`` (s the writer took per file), ``waited_s_max``
(the longest a save waited for the previous file to be written, s: saves closer together than a write
takes), ``kept`` (file names).
"""

from __future__ import annotations

import contextlib
import re
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from itwinai_lightning import compat, records
from itwinai_lightning.callbacks.notice import notice
from itwinai_lightning.errors import UserError
from itwinai_lightning.runs.checkpoint_io import BackgroundCheckpointIO

PREFIX = "timed-step="
_STEP = re.compile(rf"^{re.escape(PREFIX)}(\d+)\.ckpt$")


class TimedCheckpoint(Callback):
    """Save every ``every_min`` minutes (see the module docstring).

    Args:
        every_min: minutes of training between checkpoints.
        keep: how many of the newest timed checkpoints stay on disk.
        check_every_n_steps: optimizer steps between two looks at the clock (one small all-reduce each).
        background: write in a background thread (training waits only for the copy of the state).
    """

    def __init__(
        self, every_min: float = 30.0, keep: int = 2, check_every_n_steps: int = 10, background: bool = True
    ) -> None:
        if every_min <= 0:
            raise UserError(f"TimedCheckpoint.every_min must be > 0 minutes, got {every_min!r}")
        if keep < 1 or check_every_n_steps < 1:
            raise UserError(
                "TimedCheckpoint.keep and check_every_n_steps must be >= 1, "
                f"got {keep!r} and {check_every_n_steps!r}"
            )
        self.every_min = float(every_min)
        self.keep = int(keep)
        self.check_every_n_steps = int(check_every_n_steps)
        self.background = background
        self._io: BackgroundCheckpointIO | None = None
        self._last = time.monotonic()
        self._checked_step = -1
        self._files: list[Path] = []
        self._blocked: list[float] = []
        self._own_way = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        strategy = trainer.strategy
        if not isinstance(strategy.checkpoint_io, BackgroundCheckpointIO):
            strategy.checkpoint_io = BackgroundCheckpointIO(strategy.checkpoint_io)
        self._io = strategy.checkpoint_io  # type: ignore[assignment]
        self._files = sorted(
            self._directory(trainer).glob(f"{PREFIX}*.ckpt"), key=_step_of
        )  # after a restart

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = time.monotonic()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == 0 or step == self._checked_step or step % self.check_every_n_steps:
            return
        self._checked_step = step
        due = time.monotonic() - self._last >= self.every_min * 60
        if trainer.world_size > 1:
            flag = torch.tensor(float(due), device=trainer.strategy.root_device)
            due = bool(trainer.strategy.reduce(flag, reduce_op="max") > 0)
        if due:
            self._save(trainer)

    def _save(self, trainer: pl.Trainer) -> None:
        path = self._directory(trainer) / f"{PREFIX}{trainer.global_step}.ckpt"
        io = self._io
        saves_before = io.saves if io is not None else 0
        started = time.perf_counter()
        if io is not None and self.background:
            # Trainer.save_checkpoint's closing barrier waits for the file; here no rank reads a file that is
            # still being written, and the ranks already agreed on this step (the vote): the same content,
            # without the barrier
            with io.in_background(True):
                trainer.strategy.save_checkpoint(compat.dump_checkpoint(trainer), path)
        else:
            with io.in_background(False) if io is not None else contextlib.nullcontext():
                trainer.save_checkpoint(path)
        self._files.append(path)
        while len(self._files) > self.keep:
            trainer.strategy.remove_checkpoint(self._files.pop(0))  # rank 0; queued behind the write
        self._blocked.append(time.perf_counter() - started)
        self._last = time.monotonic()
        own_way = io is not None and io.saves == saves_before
        if self.background and own_way and trainer.is_global_zero and not self._own_way:
            self._own_way = True
            notice(
                f"TimedCheckpoint: {type(trainer.strategy).__name__} writes its checkpoints its own way; "
                "they are written synchronously (training waits for the write)"
            )

    @property
    def kept_files(self) -> list[Path]:
        """The timed checkpoints of this run still on disk, oldest first (the run's summary lists them)."""
        return list(self._files)

    def _directory(self, trainer: pl.Trainer) -> Path:
        return Path(records.run_dir_of(trainer)) / "checkpoints"

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        io = self._io
        if io is not None:
            io.wait()
        written = io.written_s if io is not None else []
        copies = io.blocked_s if io is not None else []
        records.contribute(
            trainer,
            section="timed_checkpoints",
            section_values={
                "every_min": self.every_min,
                "saves": len(self._blocked),
                "background": self.background and not self._own_way,
                "blocked_s_median": statistics.median(self._blocked) if self._blocked else None,
                "blocked_s_max": max(self._blocked) if self._blocked else None,
                "copy_s_median": statistics.median(copies) if copies else None,
                "written_s_median": statistics.median(written) if written else None,
                "waited_s_max": max(io.waited_s) if io is not None and io.waited_s else None,
                "kept": [p.name for p in self._files],
            },
        )


def _step_of(path: Path) -> int:
    match = _STEP.match(path.name)
    return int(match.group(1)) if match else -1
