"""TimingMonitor: epoch wall time, step-time percentiles, global samples/s, time to first step, model
FLOPs and MFU, and the monitored metric per epoch (time to accuracy)."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

from itwinai_lightning import records
from itwinai_lightning.launch import placement
from itwinai_lightning.monitoring import aggregate as agg
from itwinai_lightning.monitoring import timing_figures as figures
from itwinai_lightning.monitoring.flops import FlopCount
from itwinai_lightning.records import derive, peaks


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
    ``flops_per_s``                              FLOP/s  FLOPs per sample x ``samples_per_s`` (all ranks)
    ``mfu_pct``                                  %       ``flops_per_s`` / the devices' peak (when known)
    ===========================================  ======  =====================================================

    Each per-rank figure also goes to the record as ``<key>_ranks`` = {"min","mean","max"} across ranks.
    The record's epochs also carry ``elapsed_s`` (fit time at the epoch's end, across requeues) and
    ``metrics`` (the scalars the module logged, e.g. ``val_loss``); the summary names the ``monitor``ed
    metric (this callback's ``monitor``, else a ModelCheckpoint's or EarlyStopping's, else ``val_loss``),
    so reports can draw time- and energy-to-accuracy.

    **FLOPs** are counted once, on the first training batch (forward and backward, ``torch``'s FLOP
    counter; that step is left out of the step times). The peak per device comes from
    Lightning's ``get_available_flops`` for the NVIDIA GPUs it knows, else
    :mod:`itwinai_lightning.records.peaks` (GH200, MI250X, MI300X, ...), or ``peak_flops_per_s``.

    **Requeue**: ``state_dict`` keeps the finished epochs, the elapsed fit time and the interrupted
    epoch's progress, so a run resumed from a checkpoint reports totals over every epoch.

    Args:
        prefix: prefix of logged metric names.
        log: log the epoch figures to the trainer's loggers.
        record: write to the RunRecord.
        count_flops: count model FLOPs on the first batch (for ``flops_per_s`` and ``mfu_pct``).
        peak_flops_per_s: one device's peak FLOP/s; default: the table for the device and precision.
        monitor: the metric for time to accuracy; ``monitor_mode`` ``min`` (lower is better) or ``max``.
    """

    def __init__(
        self,
        prefix: str = "timing/",
        log: bool = True,
        record: bool = True,
        count_flops: bool = True,
        peak_flops_per_s: float | None = None,
        monitor: str | None = None,
        monitor_mode: str = "min",
    ) -> None:
        super().__init__()
        if monitor_mode not in ("min", "max"):
            raise ValueError(f"TimingMonitor: monitor_mode must be 'min' or 'max', not {monitor_mode!r}")
        self.prefix = prefix
        self.log = log
        self.record = record
        self.count_flops = count_flops
        self.peak_flops_per_s = peak_flops_per_s
        self.monitor, self.monitor_mode = monitor, monitor_mode
        self.epochs: list[dict[str, Any]] = []
        self._flops = FlopCount()
        self._peak_total: float | None = None
        self._setup_t: float | None = None
        self._stage_t = time.perf_counter()
        self._elapsed_before_s = 0.0
        self._first_step_s: float | None = None
        self._reset_epoch(time.perf_counter())

    def _reset_epoch(self, now: float, epoch: int = 0) -> None:
        self._epoch = epoch
        self._epoch_t0 = now
        self._last: float | None = None
        self._durations: list[float] = []
        self._samples = 0
        self._steps = 0
        self._first_batch_size: int | None = None
        self._val_t0: float | None = None
        self._val_pending = 0.0
        self._val_total = 0.0

    # -- hooks (the per-step ones do a perf_counter, an append and a size lookup) ------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stage_t = time.perf_counter()
        if stage == "fit":
            self._setup_t = self._stage_t
            self._first_step_s = None
            self._elapsed_before_s = 0.0
            self.epochs = []
            self._peak_total = self._peak(trainer)
        if self.record:
            placement.of(trainer)  # every rank takes part; contribute() writes what it found
            records.contribute(trainer, fields={"status": "running", "error": None})

    def _end_evaluation(self, trainer: pl.Trainer) -> None:
        """validate/test/predict: the stage's wall time and final metrics go to the stage's own record."""
        if self.record:
            summary = {"wall_time_s": time.perf_counter() - self._stage_t}
            metrics = self._metrics(trainer, pick_monitor=False)
            records.contribute(trainer, summary={**summary, **({"metrics": metrics} if metrics else {})})

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_evaluation(trainer)

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_evaluation(trainer)

    def _peak(self, trainer: pl.Trainer) -> float | None:
        """The peak FLOP/s of all the run's devices, or None when a device's peak is unknown (CPU)."""
        per_device = self.peak_flops_per_s
        root = getattr(trainer.strategy, "root_device", None)
        if per_device is None and root is not None and root.type == "cuda":
            per_device = peaks.device_peak_flops_per_s(root, str(trainer.precision))
        return per_device * trainer.world_size if per_device else None

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_epoch(time.perf_counter(), trainer.current_epoch)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._last is None:
            self._last = time.perf_counter()
        if self.count_flops and self._flops.wanted:
            self._flops.start(_batch_size(batch))
            if self._flops.disabled_reason:
                rank_zero_info(f"TimingMonitor: model FLOPs not counted ({self._flops.disabled_reason})")

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flops.stop()  # the first step's forward and backward are counted, not its optimizer

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        counted = self._flops.end_of_step()
        now = time.perf_counter()
        if self._last is not None and not counted:  # the counted step ran under the FLOP counter
            self._durations.append(now - self._last - self._val_pending)
        self._last = now
        self._val_pending = 0.0
        size = _batch_size(batch)
        self._samples += size
        self._steps += 1
        if self._first_batch_size is None:
            self._first_batch_size = size
        if self._first_step_s is None and self._setup_t is not None:
            self._first_step_s = self._elapsed_before_s + now - self._setup_t

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_t0 = time.perf_counter()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.training and trainer.state.fn == "validate":
            self._end_evaluation(trainer)
        if self._val_t0 is not None:
            spent = time.perf_counter() - self._val_t0
            self._val_pending += spent
            self._val_total += spent
            self._val_t0 = None

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        local = self._local_epoch(time.perf_counter())
        rows = agg.gather_rows(trainer, [local.get(k) for k in figures.GATHERED])
        cols = agg.columns(rows, figures.GATHERED)
        values = figures.combine_ranks(cols, len(rows), int(trainer.accumulate_grad_batches))
        values.update(derive.throughput(self.flops_per_sample, values.get("samples_per_s"), self._peak_total))
        values["elapsed_s"] = self._elapsed()
        metrics = self._metrics(trainer)
        if metrics:
            values["metrics"] = metrics
        self.epochs.append({"epoch": trainer.current_epoch, **values})
        if self.log:
            skip = ("ranks", "steps", "samples", "metrics", "elapsed_s")
            logged = agg.flatten_for_logging(values, self.prefix, skip=skip)
            agg.log_to_loggers(trainer, logged, trainer.global_step, trainer.current_epoch)
        if self.record:
            fields = {}
            if values.get("global_batch_size") is not None and len(self.epochs) == 1:
                fields["global_batch_size"] = values["global_batch_size"]
            records.contribute(
                trainer,
                epoch=trainer.current_epoch,
                epoch_values=values,
                fields=fields,
                summary=self.summary(),
            )

    @property
    def flops_per_sample(self) -> float | None:
        """Model FLOPs of one training sample (forward + backward), once counted."""
        return self._flops.per_sample

    def _elapsed(self) -> float:
        """Fit time so far: this job's since setup plus the jobs before a requeue."""
        since = time.perf_counter() - self._setup_t if self._setup_t is not None else 0.0
        return self._elapsed_before_s + since

    def _metrics(self, trainer: pl.Trainer, pick_monitor: bool = True) -> dict[str, float]:
        """The scalars the module logged for this epoch, without the monitoring callbacks' own figures."""
        callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
        ours = tuple(p for cb in callbacks if isinstance(p := getattr(cb, "prefix", None), str) and p)
        out: dict[str, float] = {}
        for name, value in trainer.callback_metrics.items():
            if name.startswith(ours) or len(out) >= 32:
                continue
            if getattr(value, "numel", lambda: 1)() != 1:
                continue
            number = derive.number(value.item() if hasattr(value, "item") else value)
            if number is not None:
                out[name] = number
        if self.monitor is None and pick_monitor:
            for cb in callbacks:  # ModelCheckpoint / EarlyStopping say what the user watches
                watched = getattr(cb, "monitor", None)
                if isinstance(watched, str) and watched in out:
                    self.monitor, self.monitor_mode = watched, str(getattr(cb, "mode", "min"))
                    break
            else:
                self.monitor = "val_loss" if "val_loss" in out else None
        return out

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.record:
            return
        summary = self.summary()
        summary["fit_wall_time_s"] = self._elapsed()
        records.contribute(trainer, summary=summary)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._flops.stop()
        if self.record:
            records.contribute(trainer, summary={**self.summary(), "fit_wall_time_s": self._elapsed()})

    # -- requeue: a resumed run continues its totals ------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "elapsed_s": self._elapsed(),
            "time_to_first_step_s": self._first_step_s,
            "flops_per_sample": self.flops_per_sample,
            "monitor": self.monitor,
            "monitor_mode": self.monitor_mode,
            "partial": {  # the epoch under way (this rank's view): resumed mid-epoch, it is completed
                "epoch": self._epoch,
                "wall_s": time.perf_counter() - self._epoch_t0,
                "durations": list(self._durations),
                "samples": self._samples,
                "steps": self._steps,
                "val_s": self._val_total,
                "first_batch_size": self._first_batch_size,
            },
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict.get("epochs", []))
        self._elapsed_before_s = float(state_dict.get("elapsed_s", 0.0))
        self._first_step_s = state_dict.get("time_to_first_step_s")
        self._flops.per_sample = state_dict.get("flops_per_sample") or self._flops.per_sample
        self.monitor = state_dict.get("monitor") or self.monitor
        self.monitor_mode = state_dict.get("monitor_mode") or self.monitor_mode
        partial = state_dict.get("partial")
        if partial:  # resumed mid-epoch, Lightning goes on with that epoch (no on_train_epoch_start)
            self._reset_epoch(time.perf_counter() - float(partial.get("wall_s", 0.0)), int(partial["epoch"]))
            self._durations = list(partial.get("durations", []))
            self._samples = int(partial.get("samples", 0))
            self._steps = int(partial.get("steps", 0))
            self._val_total = float(partial.get("val_s", 0.0))
            self._first_batch_size = partial.get("first_batch_size")

    # -- figures -----------------------------------------------------------------------------------
    def _local_epoch(self, now: float) -> dict[str, float | None]:
        return figures.local_epoch(
            wall_s=now - self._epoch_t0,
            val_s=self._val_total,
            durations=self._durations,
            steps=self._steps,
            samples=self._samples,
            first_step_s=self._first_step_s,
            first_batch_size=self._first_batch_size,
        )

    def summary(self) -> dict[str, Any]:
        """Run-level figures from the epochs aggregated so far (no collective)."""
        if not self.epochs:
            return {}
        out = figures.run_summary(self.epochs)
        out["flops_per_sample"] = self.flops_per_sample
        out["peak_flops_per_s"] = self._peak_total
        if self.monitor:
            out["monitor"], out["monitor_mode"] = self.monitor, self.monitor_mode
        return figures.without_missing(out)


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
