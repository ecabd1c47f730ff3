"""TorchProfilerBreakdown: a bounded torch.profiler window -> compute/communication/memcpy/other per rank."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from itwinai_lightning import records
from itwinai_lightning.callbacks.notice import notice
from itwinai_lightning.profiling import breakdown
from itwinai_lightning.profiling.gather import all_gather_object

if TYPE_CHECKING:
    import torch.profiler

SUBDIR = Path("profiling") / "torch"


class TorchProfilerBreakdown(Callback):
    """Profile ``active_steps`` training batches after ``skip_steps`` + ``warmup_steps`` and break them down.

    Uses :func:`torch.profiler.schedule` (one cycle), so outside the window the profiler records nothing.
    CPU activity is always recorded; CUDA activity when the module runs on a CUDA device. Per rank it
    writes ``<run_dir>/profiling/torch/rank<N>.trace.json`` (chrome trace, open in Perfetto or
    chrome://tracing) and ``rank<N>.breakdown.json``; see :mod:`itwinai_lightning.profiling.breakdown`
    for how time is split.

    ======================================  ====================================================
    logged (global rank 0, mean over ranks)  meaning / unit
    ======================================  ====================================================
    ``torch_profiler/compute_frac``         fraction (0..1) of the profiled wall time computing
    ``torch_profiler/communication_frac``   fraction in collectives (gloo / NCCL ...)
    ``torch_profiler/memcpy_frac``          fraction in memory copies
    ``torch_profiler/other_frac``           the rest: Python, data loading, idle
    ``torch_profiler/overlap``              fraction (0..1) of communication hidden by compute
    ======================================  ====================================================

    RunRecord section ``"torch_profiler"``: ``fractions`` {compute, communication, memcpy, other},
    ``overlap``, ``fractions_across_ranks`` / ``overlap_across_ranks`` ({min, mean, max}), ``per_rank``
    (each with ``mode`` "cpu"|"cuda", ``steps``, ``window_s`` in seconds, ``seconds`` per part),
    ``trace_files``.
    """

    def __init__(
        self,
        skip_steps: int = 10,
        warmup_steps: int = 2,
        active_steps: int = 5,
        record_shapes: bool = False,
        with_stack: bool = False,
        profile_memory: bool = False,
        export_trace: bool = True,
    ) -> None:
        super().__init__()
        if skip_steps < 0 or warmup_steps < 0 or active_steps <= 0:
            raise ValueError(
                "TorchProfilerBreakdown needs skip_steps >= 0, warmup_steps >= 0 and active_steps > 0, got "
                f"{skip_steps}, {warmup_steps}, {active_steps}"
            )
        self.skip_steps = skip_steps
        self.warmup_steps = warmup_steps
        self.active_steps = active_steps
        self.record_shapes = record_shapes
        self.with_stack = with_stack
        self.profile_memory = profile_memory
        self.export_trace = export_trace
        self._prof: torch.profiler.profile | None = None
        self._result: dict[str, Any] | None = None
        self._rank = 0
        self._out: Path | None = None
        self.summary: dict[str, Any] | None = None  # merged result (global rank 0)
        self.steps = 0  # training steps seen while profiling

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import torch.profiler as tp

        self._rank = trainer.global_rank
        self.steps = 0
        self._out = records.run_dir_of(trainer) / SUBDIR
        activities = [tp.ProfilerActivity.CPU]
        if pl_module.device.type == "cuda":
            activities.append(tp.ProfilerActivity.CUDA)
        self._prof = tp.profile(
            activities=activities,
            schedule=tp.schedule(
                skip_first=self.skip_steps,
                wait=0,
                warmup=self.warmup_steps,
                active=self.active_steps,
                repeat=1,
            ),
            on_trace_ready=self._on_trace_ready,
            record_shapes=self.record_shapes,
            with_stack=self.with_stack,
            profile_memory=self.profile_memory,
        )
        self._prof.start()

    def _on_trace_ready(self, prof: torch.profiler.profile) -> None:
        assert self._out is not None
        self._out.mkdir(parents=True, exist_ok=True)
        trace_path = self._out / f"rank{self._rank}.trace.json"
        prof.export_chrome_trace(str(trace_path))
        result = breakdown.analyze_file(trace_path)
        if not self.export_trace:
            trace_path.unlink()
        result["trace_file"] = str(SUBDIR / trace_path.name) if self.export_trace else None
        (self._out / f"rank{self._rank}.breakdown.json").write_text(json.dumps(result, indent=1))
        self._result = result

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._prof is None:
            return
        self.steps += 1
        self._prof.step()
        if self._result is not None:  # the window just closed, on every rank at the same step
            self._finish(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._prof is not None:  # fewer steps than the window: report what was recorded
            self._finish(trainer)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close()

    def _close(self) -> None:
        prof, self._prof = self._prof, None
        if prof is not None:
            prof.stop()

    def _finish(self, trainer: pl.Trainer) -> None:
        first = self.skip_steps + self.warmup_steps + 1
        if self.steps < first:  # the active window was never reached: nothing to report, and say so
            self._close()
            self._result = None
            notice(
                f"TorchProfilerBreakdown: the run ended after {self.steps} training steps, before the "
                f"profiling window (steps {first}-{first + self.active_steps - 1}); nothing was profiled. "
                "Lower skip_steps/warmup_steps or train longer."
            )
            return
        self._close()  # flushes a partial active window through _on_trace_ready
        assert self._out is not None
        mine = dict(self._result) if self._result is not None else {"rank": self._rank, "missing": True}
        mine["rank"] = self._rank
        gathered = all_gather_object(trainer, mine, self._out / ".gather")
        if gathered is None or trainer.global_rank != 0:
            return
        ok = {int(r["rank"]): r for r in gathered if r and "fractions" in r}
        summary = breakdown.merge(ok)
        summary["trace_files"] = [r.get("trace_file") for r in ok.values() if r.get("trace_file")]
        summary["window"] = {
            "skip": self.skip_steps,
            "warmup": self.warmup_steps,
            "active": self.active_steps,
        }
        self.summary = summary
        records.contribute(trainer, section="torch_profiler", section_values=summary)
        metrics = {f"torch_profiler/{k}_frac": float(v) for k, v in summary["fractions"].items()}
        metrics["torch_profiler/overlap"] = float(summary["overlap"])
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
