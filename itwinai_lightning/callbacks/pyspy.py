"""PySpyProfiler: py-spy flame graphs per rank for a window of steps or epochs, plus a hotspot summary."""

from __future__ import annotations

import json
import math
import os
import platform
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from itwinai_lightning import records
from itwinai_lightning.callbacks.notice import notice
from itwinai_lightning.profiling import hotspots, stacks
from itwinai_lightning.profiling.gather import all_gather_object
from itwinai_lightning.profiling.recorder import PySpyRecorder
from itwinai_lightning.profiling.report import SUBDIR, build_report


class PySpyUnavailableWarning(UserWarning):
    """py-spy could not attach (no ptrace permission, not installed...): the run goes on without it."""


class PySpyProfiler(Callback):
    """Attach ``py-spy record`` to every rank (and its DataLoader workers) for a window of the training.

    The window is ``num_steps`` training batches from batch ``start_step`` (counted from the start of
    ``fit``), kept open until about ``min_samples`` samples were taken (``min_samples / rate_hz``
    seconds: fast steps would otherwise leave too few samples for the category fractions, whose binomial
    error is about ±1.5 percentage points at 1000 samples), or the end of training; or, when ``epochs``
    is given, the training epochs from ``min(epochs)`` to ``max(epochs)`` (validation inside them
    included). Sampling runs at ``rate_hz`` samples per second: the default 40 Hz costs about 3 % of the
    step time on a 2-core machine (100 Hz: about 8 %; ``benchmarks/bench_profiling.py --paired``).
    Written per rank under ``<run_dir>/profiling/pyspy/``:

    ==============================  ==========================================================
    file                            content
    ==============================  ==========================================================
    ``rank<N>.raw.txt``             py-spy's collapsed stacks as recorded (may include other ranks)
    ``rank<N>.collapsed.txt``       collapsed stacks of this rank and its DataLoader workers
    ``rank<N>.speedscope.json``     the same for https://www.speedscope.app
    ``rank<N>.svg``                 flame graph
    ``rank<N>.summary.json``        per-rank sample counts per category
    ``hotspots.md`` / ``.json``     merged summary with top functions and remedies (global rank 0)
    ==============================  ==========================================================

    Logged to the trainer's loggers at the end of the window (global rank 0), all fractions (0..1) of
    the classified samples: ``pyspy/<category>_frac`` for each category of
    :data:`itwinai_lightning.profiling.hotspots.CATEGORIES`. RunRecord section ``"pyspy"``:
    ``categories`` (fractions), ``counts`` (samples), ``per_rank``, ``groups``, ``bottleneck``,
    ``remedies``, ``top_functions``, ``rate_hz`` (Hz), ``window`` (``batches``, ``seconds`` the window
    was open on rank 0, ``closed_after_batch`` per rank), ``files``, ``errors`` (per rank).

    If py-spy cannot attach (e.g. a container without ``SYS_PTRACE``), one
    :class:`PySpyUnavailableWarning` per process says why and how to fix it; training continues.
    """

    def __init__(
        self,
        rate_hz: int = 40,
        start_step: int = 5,
        num_steps: int | None = 50,
        min_samples: int | None = 1000,
        epochs: list[int] | None = None,
        subprocesses: bool | None = None,
        native: bool = False,
        nonblocking: bool = True,
        idle: bool = True,
        executable: str = "py-spy",
        top_functions: int = 5,
    ) -> None:
        super().__init__()
        if rate_hz <= 0:
            raise ValueError(f"PySpyProfiler rate_hz must be > 0, got {rate_hz}")
        if start_step < 0 or (num_steps is not None and num_steps <= 0):
            raise ValueError("PySpyProfiler needs start_step >= 0 and num_steps > 0 (or null: to the end)")
        if min_samples is not None and min_samples < 0:
            raise ValueError(f"PySpyProfiler min_samples must be >= 0 (or null), got {min_samples}")
        self.rate_hz = rate_hz
        self.min_samples = min_samples
        self.start_step = start_step
        self.num_steps = num_steps
        self.epochs = sorted(set(epochs)) if epochs else None
        self.subprocesses = subprocesses
        self.native = native
        self.nonblocking = nonblocking
        self.idle = idle
        self.executable = executable
        self.top_functions = top_functions
        self._batches = 0
        self._opened_at = 0.0
        self._end: int | None = None  # the batch the step window closes after, once decided
        self._window_start = 0
        self._recorder: PySpyRecorder | None = None
        self._other_pids: list[int] = []
        self._error: str | None = None
        self._done = False
        self.summary: dict[str, Any] | None = None  # merged summary (global rank 0), for callers

    # ---------------------------------------------------------------- window
    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        window = self.epochs is not None and self.epochs[0] <= trainer.current_epoch <= self.epochs[-1]
        if window and not self._active and not self._done:
            self._start(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.epochs is not None and self._active and trainer.current_epoch >= self.epochs[-1]:
            self._stop(trainer)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.epochs is None and not self._active and not self._done and self._batches == self.start_step:
            self._start(trainer)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches += 1
        if self.epochs is not None or not self._active or self.num_steps is None:
            return
        if self._end is None and self._batches >= self.start_step + self.num_steps:
            self._end = self._window_end(trainer)
        if self._end is not None and self._batches >= self._end:
            self._stop(trainer)

    def _window_end(self, trainer: pl.Trainer) -> int:
        """The batch the window closes after: now, or later until about ``min_samples`` samples were taken
        at the step time seen so far. Rank 0 decides and every rank follows (one broadcast), so all ranks
        close the window at the same batch."""
        elapsed = time.monotonic() - self._opened_at
        wanted = (self.min_samples or 0) / self.rate_hz
        steps = self._batches - self.start_step
        extra = math.ceil((wanted - elapsed) * steps / elapsed) if 0 < elapsed < wanted else 0
        end = self._batches + extra
        if trainer.world_size > 1:
            end = int(trainer.strategy.broadcast(end, src=0))
        return end

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active:
            self._stop(trainer)
        elif not self._done:  # the window was never reached: nothing recorded, and the user is told
            where = f"epochs {self.epochs}" if self.epochs is not None else f"batch {self.start_step}"
            notice(
                f"PySpyProfiler: the run ended after {self._batches} training batches, before the profiling "
                f"window ({where}); nothing was profiled. Lower start_step or train longer."
            )

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._recorder is not None:
            self._stop(trainer, gather=False)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._recorder is not None:
            self._recorder.kill()
            self._recorder = None

    def recorder_options(self, subprocesses: bool) -> dict[str, Any]:
        """The :class:`PySpyRecorder` options this profiler records with."""
        return {
            "rate_hz": self.rate_hz,
            "subprocesses": subprocesses,
            "native": self.native,
            "nonblocking": self.nonblocking,
            "idle": self.idle,
            "executable": self.executable,
        }

    @property
    def _active(self) -> bool:
        return self._recorder is not None or (self._error is not None and not self._done)

    # ---------------------------------------------------------------- start / stop
    def _out_dir(self, trainer: pl.Trainer) -> Path:
        return records.run_dir_of(trainer) / SUBDIR

    def _start(self, trainer: pl.Trainer) -> None:
        out = self._out_dir(trainer)
        me = [os.getpid(), platform.node()]
        everyone = all_gather_object(trainer, me, out / ".pids") or [me]
        self._other_pids = [int(p) for p, host in everyone if host == me[1] and int(p) != me[0]]
        rank = trainer.global_rank
        workers = _uses_worker_processes(trainer) if self.subprocesses is None else self.subprocesses
        self._recorder = PySpyRecorder(
            os.getpid(), out / f"rank{rank}.raw.txt", **self.recorder_options(subprocesses=workers)
        )
        self._error = self._recorder.start()
        self._opened_at = time.monotonic()
        self._window_start = self._batches
        if self._error is not None:
            self._recorder = None
            warnings.warn(
                f"PySpyProfiler (rank {rank}): {self._error}", PySpyUnavailableWarning, stacklevel=2
            )

    def _stop(self, trainer: pl.Trainer, gather: bool = True) -> None:
        rank = trainer.global_rank
        out = self._out_dir(trainer)
        text = self._recorder.stop() if self._recorder is not None else None
        self._recorder = None
        self._done = True
        per_rank: dict[str, Any] = {"rank": rank, "error": self._error, "closed_after_batch": self._batches}
        if text is not None:
            samples = stacks.filter_own(stacks.parse_collapsed(text), self._other_pids)
            stacks.write_collapsed(samples, out / f"rank{rank}.collapsed.txt")
            stacks.write_speedscope(samples, out / f"rank{rank}.speedscope.json", f"rank {rank}")
            stacks.write_svg(samples, out / f"rank{rank}.svg", f"py-spy rank {rank}")
            per_rank.update(hotspots.summarize_rank(samples, self.top_functions))
        elif self._error is None:
            per_rank["error"] = "py-spy wrote no output"
        (out / f"rank{rank}.summary.json").parent.mkdir(parents=True, exist_ok=True)
        (out / f"rank{rank}.summary.json").write_text(json.dumps(per_rank, indent=1))
        if not gather:
            return
        gathered = all_gather_object(trainer, per_rank, out / ".summaries")
        if gathered is None or trainer.global_rank != 0:
            return
        self.summary = build_report(out, gathered, self.top_functions, rate_hz=self.rate_hz)
        self.summary["window"] = {
            "batches": self._batches - self._window_start,
            "seconds": round(time.monotonic() - self._opened_at, 3),
            "closed_after_batch": {str(s["rank"]): s.get("closed_after_batch") for s in gathered if s},
        }
        records.contribute(trainer, section="pyspy", section_values=self.summary)
        metrics = {f"pyspy/{cat}_frac": float(v) for cat, v in self.summary["categories"].items()}
        if self.summary["samples"]:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
                logger.save()


def _uses_worker_processes(trainer: pl.Trainer) -> bool:
    """True when a training DataLoader runs worker processes, which py-spy must then follow.

    ``--subprocesses`` makes py-spy walk the process tree at every sample: measured on the quickstart
    (no workers) at 100 Hz, 35 % lost throughput with it against 7 % without, so it is on only when needed.
    """
    loaders: Any = trainer.train_dataloader
    stack = [loaders]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif getattr(item, "num_workers", 0):
            return True
    return False
