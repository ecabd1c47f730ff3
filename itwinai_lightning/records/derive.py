"""Every figure computed from other figures, in one place: the recorder, the callbacks and the reports
call these and never redo the arithmetic.

* :func:`rate`: samples/s (or any amount per second) = ``amount / seconds``; every samples/s figure of a
  record (an epoch's, the run's, a prediction pass's) is this.
* :func:`run_figure`: a run's figure from its summary, else the mean of its epochs' values.
* :func:`measured_energy`: the energy of a run or an epoch = GPU energy (``energy_wh``) + CPU energy
  (``cpu_energy_wh``, RAPL), whichever were measured; every energy figure of the reports is this.
* ``energy_per_sample_wh`` = measured energy / ``total_samples``.
* ``flops_per_s`` = ``flops_per_sample x samples_per_s`` (model FLOPs, forward + backward, all ranks).
* ``mfu_pct`` = ``100 x flops_per_s / peak_flops_per_s`` (model FLOPs utilisation; the peak of all the
  run's devices for its precision, see :mod:`itwinai_lightning.records.peaks`).
* ``best_metric``: the best value of the monitored metric over the epochs (``monitor_mode`` min|max).
* :func:`training_epoch_time`: the mean training time per epoch after the warm-up epochs.
* :func:`accuracy_curve`: the monitored metric against elapsed fit time and cumulative energy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from itwinai_lightning.records.schema import RunRecord

#: epochs at the start of a run left out of its epoch time (start-up, compilation, caches)
DEFAULT_WARMUP_EPOCHS = 1


def number(value: Any) -> float | None:
    """A finite float, or None (bools, missing, NaN, text)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def rate(amount: float | None, seconds: float | None) -> float | None:
    """``amount / seconds`` (samples/s when ``amount`` counts samples); None without a positive time."""
    if amount is None or not seconds or seconds <= 0:
        return None
    return float(amount) / float(seconds)


def run_figure(record: Mapping[str, Any], key: str) -> float | None:
    """``summary[key]`` of a record, else the mean of its epochs' ``key`` (records whose summary lacks it);
    a ``{min, mean, max}`` value counts as its mean."""

    def value(node: Any) -> float | None:
        return number(node.get("mean") if isinstance(node, Mapping) else node)

    found = value((record.get("summary") or {}).get(key))
    if found is not None:
        return found
    epochs = [e for e in record.get("epochs") or [] if isinstance(e, Mapping)]
    return mean(value(e.get(key)) for e in epochs)


def measured_energy(values: Mapping[str, Any]) -> float | None:
    """GPU (``energy_wh``) + CPU (``cpu_energy_wh``) energy of a summary or an epoch entry, in Wh; None when
    neither was measured."""
    parts = [number(values.get(key)) for key in ("energy_wh", "cpu_energy_wh")]
    found = [p for p in parts if p is not None]
    return sum(found) if found else None


def throughput(
    flops_per_sample: float | None, samples_per_s: float | None, peak_flops_per_s: float | None
) -> dict[str, float]:
    """``flops_per_s`` and, when the peak is known, ``mfu_pct``."""
    if not flops_per_sample or not samples_per_s:
        return {}
    out = {"flops_per_s": flops_per_sample * samples_per_s}
    if peak_flops_per_s:
        out["mfu_pct"] = 100.0 * out["flops_per_s"] / peak_flops_per_s
    return out


def derive(record: RunRecord) -> RunRecord:
    """Fill in the derived summary figures (in place) and return the record."""
    summary = record.setdefault("summary", {})
    energy, samples = measured_energy(summary), number(summary.get("total_samples"))
    if energy is not None and samples:
        summary["energy_per_sample_wh"] = energy / samples
    figures = throughput(
        number(summary.get("flops_per_sample")),
        number(summary.get("samples_per_s")),
        number(summary.get("peak_flops_per_s")),
    )
    for key in ("flops_per_s", "mfu_pct"):
        if key in figures:
            summary[key] = figures[key]  # type: ignore[literal-required]
    best = best_metric(record)
    if best is not None:
        summary["best_metric"] = best
    return record


def _metric_values(record: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], float]]:
    name = (record.get("summary") or {}).get("monitor")
    if not name:
        return []
    out = []
    for entry in record.get("epochs") or []:
        value = number((entry.get("metrics") or {}).get(name))
        if value is not None:
            out.append((entry, value))
    return out


def best_metric(record: Mapping[str, Any]) -> float | None:
    values = [v for _, v in _metric_values(record)]
    if not values:
        return None
    return max(values) if (record.get("summary") or {}).get("monitor_mode") == "max" else min(values)


@dataclass(frozen=True)
class AccuracyPoint:
    """The monitored metric at the end of one epoch, with the fit time and energy spent to get there."""

    epoch: int
    elapsed_s: float
    energy_wh: float | None
    metric: float


def accuracy_curve(record: Mapping[str, Any]) -> list[AccuracyPoint]:
    """Time (and energy) to accuracy: one point per epoch that logged the monitored metric."""
    out: list[AccuracyPoint] = []
    energy: float | None = 0.0
    elapsed = 0.0
    for entry in record.get("epochs") or []:
        spent = measured_energy(entry)
        energy = None if energy is None or spent is None else energy + spent
        wall = number(entry.get("wall_time_s")) or 0.0
        elapsed = number(entry.get("elapsed_s")) or elapsed + wall
        value = number((entry.get("metrics") or {}).get((record.get("summary") or {}).get("monitor", "")))
        if value is not None:
            out.append(AccuracyPoint(int(entry.get("epoch", len(out))), elapsed, energy, value))
    return out


def time_to_target(curve: Sequence[AccuracyPoint], target: float, mode: str = "min") -> AccuracyPoint | None:
    """The first point at which the metric reached ``target`` (``<=`` for min, ``>=`` for max)."""
    for point in curve:
        if (point.metric <= target) if mode != "max" else (point.metric >= target):
            return point
    return None


@dataclass(frozen=True)
class EpochTime:
    """A run's training time per epoch after the warm-up, and whether the warm-up had to be included."""

    train_s: float | None
    val_s: float | None
    warmup_included: bool


def training_epoch_time(record: Mapping[str, Any], warmup_epochs: int = DEFAULT_WARMUP_EPOCHS) -> EpochTime:
    """Mean ``train_time_s`` (``wall_time_s`` where a record has no split) over the epochs after the
    first ``warmup_epochs``; all epochs (flagged) when none is left; else ``summary.mean_epoch_time_s``."""
    epochs = [e for e in record.get("epochs") or [] if isinstance(e, Mapping)]
    timed = epochs[warmup_epochs:] if len(epochs) > warmup_epochs else epochs
    train = mean(number(e.get("train_time_s", e.get("wall_time_s"))) for e in timed)
    if train is None:
        train = number((record.get("summary") or {}).get("mean_epoch_time_s"))
    val = mean(number(e.get("val_time_s")) for e in timed)
    return EpochTime(train, val, warmup_epochs > 0 and 0 < len(epochs) <= warmup_epochs)


def energy_per_epoch(record: Mapping[str, Any]) -> float | None:
    epochs = [e for e in record.get("epochs") or [] if isinstance(e, Mapping)]
    per_epoch = mean(measured_energy(e) for e in epochs)
    total = measured_energy(record.get("summary") or {})
    if per_epoch is None and total is not None and epochs:
        per_epoch = total / len(epochs)
    return per_epoch
