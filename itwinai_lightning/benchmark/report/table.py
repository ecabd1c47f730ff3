"""RunRecords -> one row per run -> one row per configuration (median over repetitions), for findings.py.

Definitions (per series = one strategy x launcher x scaling mode; ``N0`` = its smallest worker count):

* ``launcher`` / ``nodes``: what the run's ranks reported (the RunRecord's ``launcher`` and ``num_nodes``).
* ``epoch_time_s``: median over repetitions of the run's mean *training* time per epoch: the mean of
  ``epochs[].train_time_s`` (validation excluded; ``wall_time_s`` where a record has no split) over the
  epochs after the first ``warmup_epochs`` (``sections.benchmark.warmup_epochs``, default 1). A run with no
  epoch beyond the warm-up uses all its epochs and its row is flagged. Records without per-epoch figures
  fall back to ``summary.mean_epoch_time_s``.
* ``val_time_s``: the same for the validation time per epoch.
* ``speedup = epoch_time(N0) / epoch_time(N)`` -- relative to the series' own baseline.
* ``efficiency_pct = 100 * speedup / (N / N0)`` -- 100 % is ideal scaling.
* ``energy_per_epoch_wh``, ``energy_per_sample_wh``, ``samples_per_s``, ``gpu_util_pct``,
  ``cpu_util_pct``: medians over repetitions of the RunRecord figures; empty when no run measured them.
* ``compute_s`` / ``communication_s`` / ``memcpy_s`` / ``other_s``: the torch-profiler fractions times the
  epoch time (only when the profiling callback ran).
* ``speedup_min`` / ``speedup_max``: the speedup's spread, from the epoch time's min and max over the
  repetitions (against the baseline's median); ``efficiency_pct`` scales the same way.
* ``flops_per_s`` / ``mfu_pct``: medians of the runs' model FLOP/s and model FLOPs utilisation
  (TimingMonitor; MFU only where the devices' peak is known).
* ``time_to_target_s`` / ``energy_to_target_wh``: median fit time (and energy) until the monitored metric
  first reached the *target*: the worst of the configurations' best values, so every configuration
  reached it (see :func:`accuracy_target`).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from itwinai_lightning import records
from itwinai_lightning.records import derive
from itwinai_lightning.records.derive import DEFAULT_WARMUP_EPOCHS

FRACTIONS = ("compute", "communication", "memcpy", "other")
RUN_COLUMNS = (
    "strategy", "launcher", "scaling", "workers", "nodes", "repetition", "status", "epoch_time_s",
    "samples_per_s",
    "energy_per_epoch_wh", "energy_per_sample_wh", "gpu_util_pct", "cpu_util_pct", "global_batch_size",
    "run_dir", "error",
)  # fmt: skip
SUMMARY_COLUMNS = (
    "strategy", "launcher", "scaling", "workers", "nodes", "repetitions", "failed", "epoch_time_s",
    "epoch_time_min_s",
    "epoch_time_max_s", "val_time_s", "speedup", "efficiency_pct", "samples_per_s", "energy_per_epoch_wh",
    "energy_per_sample_wh", "gpu_util_pct", "cpu_util_pct", "compute_s", "communication_s", "memcpy_s",
    "other_s", "speedup_min", "speedup_max", "flops_per_s", "mfu_pct", "time_to_target_s",
    "energy_to_target_wh", "flags",
)  # fmt: skip
#: a configuration whose epoch times spread more than this share of their median is flagged as noisy
SPREAD_LIMIT = 0.2


def _num(value: Any) -> float | None:
    """A record figure as a number; records written before one shape per figure may hold {min,mean,max}."""
    return derive.number(value.get("mean") if isinstance(value, Mapping) else value)


_mean = derive.mean


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


@dataclass
class Run:
    """The figures of one RunRecord that the report uses."""

    strategy: str
    launcher: str
    scaling: str
    workers: int
    repetition: int
    status: str
    run_dir: str
    error: str | None = None
    nodes: int = 1
    epoch_time_s: float | None = None
    samples_per_s: float | None = None
    energy_per_epoch_wh: float | None = None
    energy_per_sample_wh: float | None = None
    gpu_util_pct: float | None = None
    cpu_util_pct: float | None = None
    global_batch_size: int | None = None
    fractions: dict[str, float] = field(default_factory=dict)
    val_time_s: float | None = None
    warmup_included: bool = False  # no epoch beyond the warm-up: the epoch time includes it
    provenance: dict[str, Any] = field(default_factory=dict)  # what ran where (see provenance_of)
    flops_per_s: float | None = None
    mfu_pct: float | None = None
    monitor: str | None = None  # the metric of the time-to-accuracy curve, and its mode (min|max)
    monitor_mode: str = "min"
    accuracy: list[derive.AccuracyPoint] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "completed" and self.epoch_time_s is not None

    def as_row(self) -> dict[str, Any]:
        return {col: getattr(self, col) for col in RUN_COLUMNS}


def run_from_record(rec: Mapping[str, Any]) -> Run:
    """Extract one :class:`Run` from a RunRecord dict (schema in records/schema.py)."""
    bench = (rec.get("sections") or {}).get("benchmark") or {}
    summary = rec.get("summary") or {}
    timing = derive.training_epoch_time(rec, int(bench.get("warmup_epochs", DEFAULT_WARMUP_EPOCHS) or 0))
    energy_epoch = derive.energy_per_epoch(rec)
    per_sample = _num(summary.get("energy_per_sample_wh"))  # derived by the recorder (records.derive)
    samples_per_s = derive.run_figure(rec, "samples_per_s")
    gpu = derive.run_figure(rec, "gpu_util_mean_pct")
    cpu = derive.run_figure(rec, "cpu_util_mean_pct")
    prof = ((rec.get("sections") or {}).get("torch_profiler") or {}).get("fractions") or {}
    fractions = {k: v for k in FRACTIONS if (v := _num(prof.get(k))) is not None}
    workers = bench.get("workers") or rec.get("world_size") or 1
    batch = rec.get("global_batch_size")
    return Run(
        strategy=str(bench.get("strategy") or rec.get("strategy") or "unknown"),
        # what the ranks reported (placement) beats what the grid asked for
        launcher=str(rec.get("launcher") or bench.get("launcher") or "unknown"),
        nodes=int(rec.get("num_nodes") or bench.get("nodes") or 1),
        scaling=str(bench.get("scaling") or "strong"),
        workers=int(workers),
        repetition=int(bench.get("repetition") or 0),
        status=str(rec.get("status") or "unknown"),
        run_dir=str(rec.get("run_dir") or ""),
        error=rec.get("error"),
        epoch_time_s=timing.train_s,
        samples_per_s=samples_per_s,
        energy_per_epoch_wh=energy_epoch,
        energy_per_sample_wh=per_sample,
        gpu_util_pct=gpu,
        cpu_util_pct=cpu,
        global_batch_size=int(batch) if isinstance(batch, int | float) else None,
        fractions=fractions,
        val_time_s=timing.val_s,
        warmup_included=timing.warmup_included,
        provenance=provenance_of(rec),
        flops_per_s=_num(summary.get("flops_per_s")),
        mfu_pct=_num(summary.get("mfu_pct")),
        monitor=summary.get("monitor"),
        monitor_mode=str(summary.get("monitor_mode") or "min"),
        accuracy=derive.accuracy_curve(rec),
    )


def provenance_of(rec: Mapping[str, Any]) -> dict[str, Any]:
    """What ran where, from one RunRecord: hosts, hardware, software and workload, and the command."""
    bench = (rec.get("sections") or {}).get("benchmark") or {}
    versions = rec.get("versions") or {}
    epochs = [e for e in rec.get("epochs") or [] if isinstance(e, Mapping)]
    devices = rec.get("device_names") or []
    accelerator = str(rec.get("accelerator") or "")
    return {
        "hosts": ", ".join(rec.get("hostnames") or []),
        "nodes": rec.get("num_nodes"),
        "cpu": rec.get("cpu_model") or "",
        "devices": (f"{len(devices)} x {devices[0]}" if devices else accelerator)
        + f" per rank, {rec.get('world_size')} rank(s)",
        "software": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "parameters": rec.get("parameters"),
        "global_batch": rec.get("global_batch_size"),
        "per_worker_batch": bench.get("per_worker_batch_size"),
        "samples_per_epoch": epochs[0].get("samples") if epochs else None,
        "epochs": len(epochs),
        "warmup_epochs": bench.get("warmup_epochs", DEFAULT_WARMUP_EPOCHS),
        "mode": bench.get("mode", "fit"),  # predict: an "epoch" is one pass over the predict set
        "command": bench.get("command") or "",
    }


def collect(dirs: Sequence[str | Path]) -> tuple[list[Run], list[str]]:
    """All RunRecords under ``dirs`` (recursively); unreadable files are returned as warnings."""
    runs: list[Run] = []
    warnings: list[str] = []
    seen: set[Path] = set()
    for directory in dirs:
        for path in sorted(Path(directory).rglob(records.RECORD_FILENAME)):
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            try:
                run = run_from_record(records.load(path))
            except (ValueError, TypeError) as err:
                warnings.append(str(err))
                continue
            if not run.run_dir:
                run.run_dir = str(path.parent)
            runs.append(run)
    return runs, warnings


@dataclass
class Row:
    """One configuration (series x worker count), aggregated over its completed repetitions."""

    strategy: str
    launcher: str
    scaling: str
    workers: int
    repetitions: int
    failed: int
    epoch_time_s: float | None
    epoch_time_min_s: float | None
    epoch_time_max_s: float | None
    val_time_s: float | None = None
    speedup: float | None = None
    efficiency_pct: float | None = None
    samples_per_s: float | None = None
    energy_per_epoch_wh: float | None = None
    energy_per_sample_wh: float | None = None
    gpu_util_pct: float | None = None
    cpu_util_pct: float | None = None
    compute_s: float | None = None
    communication_s: float | None = None
    memcpy_s: float | None = None
    other_s: float | None = None
    nodes: int = 1
    speedup_min: float | None = None
    speedup_max: float | None = None
    flops_per_s: float | None = None
    mfu_pct: float | None = None
    time_to_target_s: float | None = None
    energy_to_target_wh: float | None = None
    flags: str = ""  # why a reader should distrust this row ("; "-separated), empty when nothing stands out

    @property
    def series(self) -> tuple[str, str, str]:
        return (self.strategy, self.launcher, self.scaling)

    def as_row(self) -> dict[str, Any]:
        return {col: getattr(self, col) for col in SUMMARY_COLUMNS}


def aggregate(runs: Sequence[Run]) -> list[Row]:
    """Median over repetitions per configuration; speedup and efficiency against each series' smallest N."""
    groups: dict[tuple[str, str, str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.strategy, run.launcher, run.scaling, run.workers), []).append(run)
    rows: list[Row] = []
    for (strategy, launcher, scaling, workers), members in sorted(groups.items()):
        ok = [r for r in members if r.ok]
        times = [r.epoch_time_s for r in ok if r.epoch_time_s is not None]
        row = Row(
            strategy=strategy,
            launcher=launcher,
            scaling=scaling,
            workers=workers,
            repetitions=len(ok),
            failed=len(members) - len(ok),
            nodes=max((r.nodes for r in ok), default=max(r.nodes for r in members)),
            epoch_time_s=_median(times),
            epoch_time_min_s=min(times) if times else None,
            epoch_time_max_s=max(times) if times else None,
            val_time_s=_median(r.val_time_s for r in ok),
            samples_per_s=_median(r.samples_per_s for r in ok),
            energy_per_epoch_wh=_median(r.energy_per_epoch_wh for r in ok),
            energy_per_sample_wh=_median(r.energy_per_sample_wh for r in ok),
            gpu_util_pct=_median(r.gpu_util_pct for r in ok),
            cpu_util_pct=_median(r.cpu_util_pct for r in ok),
            flops_per_s=_median(r.flops_per_s for r in ok),
            mfu_pct=_median(r.mfu_pct for r in ok),
        )
        if row.epoch_time_s is not None:
            for name in FRACTIONS:
                frac = _median(r.fractions.get(name) for r in ok)
                if frac is not None:
                    setattr(row, f"{name}_s", frac * row.epoch_time_s)
        rows.append(row)
    base: dict[tuple[str, str, str], Row] = {}
    for row in rows:  # sorted by workers within a series: the first timed row is the baseline
        if row.epoch_time_s is not None and row.series not in base:
            base[row.series] = row
    for row in rows:
        ref = base.get(row.series)
        if ref is None or row.epoch_time_s is None or ref.epoch_time_s is None or row.epoch_time_s <= 0:
            continue
        row.speedup = ref.epoch_time_s / row.epoch_time_s
        row.efficiency_pct = 100.0 * row.speedup / (row.workers / ref.workers)
        if row.epoch_time_min_s and row.epoch_time_max_s:
            row.speedup_min = ref.epoch_time_s / row.epoch_time_max_s
            row.speedup_max = ref.epoch_time_s / row.epoch_time_min_s
    target = accuracy_target([r for r in runs if r.ok])
    if target is not None:
        value, mode = target
        for row in rows:
            reached = [
                hit
                for r in groups[(row.strategy, row.launcher, row.scaling, row.workers)]
                if r.ok and (hit := derive.time_to_target(r.accuracy, value, mode)) is not None
            ]
            row.time_to_target_s = _median(p.elapsed_s for p in reached)
            row.energy_to_target_wh = _median(p.energy_wh for p in reached)
    warm = {key for key, members in groups.items() if any(r.warmup_included for r in members if r.ok)}
    for row in rows:
        found = flags(row, base.get(row.series))
        if (row.strategy, row.launcher, row.scaling, row.workers) in warm:
            found.append("the warm-up epoch is included (no epoch after it): run more epochs")
        row.flags = "; ".join(found)
    return rows


def accuracy_target(runs: Sequence[Run]) -> tuple[float, str] | None:
    """The metric value every configuration reached (the worst of their best values), with its mode;
    None when the runs did not all follow the same metric."""
    monitored = {(r.monitor, r.monitor_mode) for r in runs if r.accuracy}
    if len(monitored) != 1 or any(not r.accuracy for r in runs):
        return None
    ((_name, mode),) = monitored
    best = [(max if mode == "max" else min)(p.metric for p in r.accuracy) for r in runs]
    return ((min if mode == "max" else max)(best), mode)


def flags(row: Row, baseline: Row | None) -> list[str]:
    """What makes a configuration's figures doubtful, each with its likely cause."""
    out = []
    if row.efficiency_pct is not None and row.efficiency_pct > 100.0 + 1e-9:
        base = f"{baseline.workers} worker(s)" if baseline else "the baseline"
        out.append(
            f"efficiency {row.efficiency_pct:.0f} % is above 100 %: likely a slow baseline ({base}: warm-up, "
            "other load or a single noisy repetition) or data that fit a cache only when split; run more "
            "repetitions"
        )
    t, lo, hi = row.epoch_time_s, row.epoch_time_min_s, row.epoch_time_max_s
    if row.repetitions >= 2 and t and lo is not None and hi is not None and (hi - lo) / t > SPREAD_LIMIT:
        out.append(
            f"spread {100 * (hi - lo) / t:.0f} % of the median over {row.repetitions} repetitions (limit "
            f"{100 * SPREAD_LIMIT:.0f} %): a noisy measurement, likely other load on the machine; rerun"
        )
    return out


def series_label(series: tuple[str, str, str], all_series: Sequence[tuple[str, str, str]]) -> str:
    """Readable legend label: the strategy, plus launcher/scaling only where they differ across series."""
    strategy, launcher, scaling = series
    extra = []
    if len({s[1] for s in all_series}) > 1:
        extra.append(launcher)
    if len({s[2] for s in all_series}) > 1:
        extra.append(f"{scaling} scaling")
    return f"{strategy} ({', '.join(extra)})" if extra else strategy
