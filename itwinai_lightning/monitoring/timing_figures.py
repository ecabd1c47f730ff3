"""The figures of :class:`~itwinai_lightning.callbacks.timing.TimingMonitor`, as pure functions: one rank's
epoch, the epoch across ranks, and the run summary over epochs. Times in s, rates in samples/s."""

from __future__ import annotations

import math
from typing import Any

from itwinai_lightning.monitoring import aggregate as agg
from itwinai_lightning.records.derive import rate

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


def local_epoch(
    wall_s: float,
    val_s: float,
    durations: list[float],
    steps: int,
    samples: int,
    first_step_s: float | None,
    first_batch_size: int | None,
) -> dict[str, float | None]:
    """One rank's figures for an epoch: the :data:`GATHERED` keys (step times: percentiles of
    ``durations``)."""
    out: dict[str, float | None] = {
        "wall_time_s": wall_s,
        "train_time_s": wall_s - val_s,
        "val_time_s": val_s,
        "steps": float(steps),
        "samples": float(samples),
        "time_to_first_step_s": first_step_s,
        "first_batch_size": None if first_batch_size is None else float(first_batch_size),
    }
    ordered = sorted(durations)
    if ordered:
        out["step_time_mean_s"] = sum(ordered) / len(ordered)
        for q in (50, 90, 99):
            out[f"step_time_p{q}_s"] = agg.percentile(ordered, q)
    return out


def combine_ranks(cols: dict[str, list[float]], ranks: int, accumulate_grad_batches: int) -> dict[str, Any]:
    """The epoch across ranks from the gathered columns: times are the slowest rank's (it sets the pace of
    a synchronous run), with ``<key>_ranks`` = min/mean/max; samples and samples/s are summed over ranks."""
    out: dict[str, Any] = {"ranks": ranks}
    for key in ("wall_time_s", "train_time_s", "val_time_s", *STEP_KEYS):
        stats = agg.min_mean_max(cols[key])
        if stats is not None:
            out[key] = stats["max"]
            out[f"{key}_ranks"] = stats
    steps = agg.min_mean_max(cols["steps"])
    out["steps"] = int(steps["max"]) if steps else 0
    samples = agg.total(cols["samples"]) or 0.0
    out["samples"] = int(samples)
    train_time = out.get("train_time_s")
    out["samples_per_s"] = rate(samples, train_time)
    ttfs = agg.min_mean_max(cols["time_to_first_step_s"])
    if ttfs is not None:
        out["time_to_first_step_s"] = ttfs["max"]
    first = agg.total(cols["first_batch_size"])
    if first is not None:
        out["global_batch_size"] = int(first) * int(accumulate_grad_batches)
    return {k: v for k, v in out.items() if v is not None}


def run_summary(epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """Run-level figures over the combined epochs: total samples, mean epoch time, samples/s over the
    training time, epochs completed, time to first step, median of the epochs' p50 step times."""
    out: dict[str, Any] = {}
    if not epochs:
        return out
    total = sum(e.get("samples", 0) for e in epochs)
    train = sum(e.get("train_time_s", 0.0) for e in epochs)
    out["total_samples"] = total
    out["mean_epoch_time_s"] = sum(e.get("wall_time_s", 0.0) for e in epochs) / len(epochs)
    out["samples_per_s"] = rate(total, train)
    out["epochs_completed"] = len(epochs)
    first = epochs[0].get("time_to_first_step_s")
    if first is not None:
        out["time_to_first_step_s"] = first
    p50 = [e["step_time_p50_s"] for e in epochs if "step_time_p50_s" in e]
    if p50:
        out["step_time_p50_s"] = sorted(p50)[len(p50) // 2]
    return out


def without_missing(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without ``None`` and NaN entries."""
    return {k: v for k, v in values.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
