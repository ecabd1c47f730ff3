"""TimingMonitor: epoch wall time, step-time percentiles, global samples/s, time to first step, status."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from itwinai_lightning import placement, records
from itwinai_lightning.monitoring import aggregate as agg

#: Per-rank epoch figures, gathered across ranks with ONE all_gather per epoch.
GATHERED = (
    "wall_time_s",
    "train_time_s",
    "val_time_s",
    "steps",
    "samples",
    "step_time_mean_s",
    "step_time_p50_s",
    "step_time_p90_s",
    "step_time_p99_s",
    "time_to_first_step_s",
    "first_batch_size",
)
STEP_KEYS = ("step_time_mean_s", "step_time_p50_s", "step_time_p90_s", "step_time_p99_s")


class TimingMonitor(Callback):
    """Times the fit with ``time.perf_counter`` in hooks only: no device sync, no collective per step.

    A *step time* is the period between two consecutive training-batch ends (so it includes data
    loading, forward, backward and optimizer; validation that runs in between is subtracted). With
    asynchronous devices, this period is what the step really costs once the queue is full.

    Logged once per training epoch (rank 0), and written to the RunRecord's ``epochs``/``summary``:

    ===========================================  ======  =====================================================
    key (``prefix`` + key)                       unit    meaning
    ===========================================  ======  =====================================================
    ``wall_time_s``                              s       epoch wall time incl. its validation (slowest rank)
    ``train_time_s``                             s       epoch time without validation (slowest rank)
    ``samples_per_s``                            1/s     samples of all ranks / ``train_time_s``
    ``step_time_p50_s`` ``_p90_s`` ``_p99_s``    s       step-time percentiles (slowest rank's)
    ``step_time_mean_s``                         s       mean step time (slowest rank's)
    ``time_to_first_step_s``                     s       ``setup`` to the end of the first step (summary)
    ===========================================  ======  =====================================================

    Each per-rank figure also goes to the record as ``<key>_ranks`` = {"min","mean","max"} across ranks.
    The RunRecord ``status`` becomes ``completed`` at fit end, ``failed`` (with the error, redacted) or
    ``interrupted`` on an exception.

    Args:
        prefix: prefix of logged metric names.
        log: log the epoch figures to the trainer's loggers.
        record: write to the RunRecord.
    """

    def __init__(self, prefix: str = "timing/", log: bool = True, record: bool = True) -> None:
        super().__init__()
        self.prefix = prefix
        self.log = log
        self.record = record
        self.epochs: list[dict[str, Any]] = []
        self._setup_t: float | None = None
        self._first_step_s: float | None = None
        self._reset_epoch(time.perf_counter())

    def _reset_epoch(self, now: float) -> None:
        self._epoch_t0 = now
        self._last: float | None = None
        self._durations: list[float] = []
        self._samples = 0
        self._first_batch_size: int | None = None
        self._val_t0: float | None = None
        self._val_pending = 0.0
        self._val_total = 0.0

    # -- hooks (the per-step ones do a perf_counter, an append and a size lookup) ------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._setup_t = time.perf_counter()
            self._first_step_s = None
            self.epochs = []
            if self.record:
                placement.of(trainer)  # every rank takes part; contribute() writes what it found
                fields = {"status": "running", "error": None}
                records.contribute(trainer, fields=fields)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_epoch(time.perf_counter())

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._last is None:
            self._last = time.perf_counter()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self._durations.append(now - self._last - self._val_pending)
        self._last = now
        self._val_pending = 0.0
        size = _batch_size(batch)
        self._samples += size
        if self._first_batch_size is None:
            self._first_batch_size = size
        if self._first_step_s is None and self._setup_t is not None:
            self._first_step_s = now - self._setup_t

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_t0 = time.perf_counter()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._val_t0 is not None:
            spent = time.perf_counter() - self._val_t0
            self._val_pending += spent
            self._val_total += spent
            self._val_t0 = None

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        local = self._local_epoch(time.perf_counter())
        rows = agg.gather_rows(trainer, [local.get(k) for k in GATHERED])
        values = self._combine(trainer, agg.columns(rows, GATHERED), len(rows))
        self.epochs.append({"epoch": trainer.current_epoch, **values})
        if self.log:
            metrics = agg.flatten_for_logging(values, self.prefix, skip=("ranks", "steps", "samples"))
            agg.log_to_loggers(trainer, metrics, trainer.global_step, trainer.current_epoch)
        if self.record:
            fields = {}
            if values.get("global_batch_size") is not None and len(self.epochs) == 1:
                fields["global_batch_size"] = values["global_batch_size"]
            records.contribute(trainer, epoch=trainer.current_epoch, epoch_values=values, fields=fields)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.record:
            return
        summary = self.summary()
        if self._setup_t is not None:
            summary["fit_wall_time_s"] = time.perf_counter() - self._setup_t
        records.contribute(trainer, summary=summary, fields=records.end_fields())

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not self.record:
            return
        records.contribute(trainer, summary=self.summary(), fields=records.end_fields(exception))

    # -- figures -----------------------------------------------------------------------------------
    def _local_epoch(self, now: float) -> dict[str, float | None]:
        durations = sorted(self._durations)
        wall = now - self._epoch_t0
        out: dict[str, float | None] = {
            "wall_time_s": wall,
            "train_time_s": wall - self._val_total,
            "val_time_s": self._val_total,
            "steps": float(len(durations)),
            "samples": float(self._samples),
            "time_to_first_step_s": self._first_step_s,
            "first_batch_size": None if self._first_batch_size is None else float(self._first_batch_size),
        }
        if durations:
            out["step_time_mean_s"] = sum(durations) / len(durations)
            for q in (50, 90, 99):
                out[f"step_time_p{q}_s"] = agg.percentile(durations, q)
        return out

    @staticmethod
    def _combine(trainer: pl.Trainer, cols: dict[str, list[float]], ranks: int) -> dict[str, Any]:
        out: dict[str, Any] = {"ranks": ranks}
        for key in ("wall_time_s", "train_time_s", "val_time_s", *STEP_KEYS):
            stats = agg.min_mean_max(cols[key])
            if stats is not None:
                out[key] = stats["max"]  # the slowest rank sets the pace of a synchronous run
                out[f"{key}_ranks"] = stats
        steps = agg.min_mean_max(cols["steps"])
        out["steps"] = int(steps["max"]) if steps else 0
        samples = agg.total(cols["samples"]) or 0.0
        out["samples"] = int(samples)
        train_time = out.get("train_time_s")
        out["samples_per_s"] = samples / train_time if train_time else None
        ttfs = agg.min_mean_max(cols["time_to_first_step_s"])
        if ttfs is not None:
            out["time_to_first_step_s"] = ttfs["max"]
        first = agg.total(cols["first_batch_size"])
        if first is not None:
            out["global_batch_size"] = int(first) * int(trainer.accumulate_grad_batches)
        return {k: v for k, v in out.items() if v is not None}

    def summary(self) -> dict[str, Any]:
        """Run-level figures from the epochs aggregated so far (no collective)."""
        out: dict[str, Any] = {}
        if not self.epochs:
            return out
        total = sum(e.get("samples", 0) for e in self.epochs)
        train = sum(e.get("train_time_s", 0.0) for e in self.epochs)
        out["total_samples"] = total
        out["mean_epoch_time_s"] = sum(e.get("wall_time_s", 0.0) for e in self.epochs) / len(self.epochs)
        out["samples_per_s"] = total / train if train > 0 else None
        out["epochs_completed"] = len(self.epochs)
        first = self.epochs[0].get("time_to_first_step_s")
        if first is not None:
            out["time_to_first_step_s"] = first
        p50 = [e["step_time_p50_s"] for e in self.epochs if "step_time_p50_s" in e]
        if p50:
            out["step_time_p50_s"] = sorted(p50)[len(p50) // 2]
        return {
            k: v for k, v in out.items() if v is not None and not (isinstance(v, float) and math.isnan(v))
        }


def _batch_size(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor (1 if it has none)."""
    while isinstance(batch, list | tuple) and batch:
        batch = batch[0]
    if isinstance(batch, dict) and batch:
        return _batch_size(next(iter(batch.values())))
    shape = getattr(batch, "shape", None)
    if shape:
        return int(shape[0])
    return 1
