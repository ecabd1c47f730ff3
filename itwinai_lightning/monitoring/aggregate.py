"""Cross-rank aggregation: one ``all_gather`` of a small float tensor per call, and the min/mean/max math.

Missing values travel as NaN and are ignored by the statistics, so a rank without a GPU (or without a
power reading) does not drag the others' figures to zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import lightning.pytorch as pl

Stats = dict[str, float]


def gather_rows(trainer: pl.Trainer, values: Sequence[float | None]) -> list[list[float]]:
    """All ranks' ``values`` as one row per rank (NaN for None), with a single collective call."""
    import torch

    row = [math.nan if v is None else float(v) for v in values]
    if trainer.world_size <= 1:
        return [row]
    tensor = torch.tensor(row, dtype=torch.float64, device=trainer.strategy.root_device)
    gathered = trainer.strategy.all_gather(tensor)
    return gathered.reshape(-1, len(row)).cpu().tolist()


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def min_mean_max(values: Sequence[float]) -> Stats | None:
    """``{"min", "mean", "max"}`` over the finite values, or None when there are none."""
    vals = _finite(values)
    if not vals:
        return None
    return {"min": min(vals), "mean": sum(vals) / len(vals), "max": max(vals)}


def total(values: Sequence[float]) -> float | None:
    vals = _finite(values)
    return sum(vals) if vals else None


def columns(rows: Sequence[Sequence[float]], names: Sequence[str]) -> dict[str, list[float]]:
    """Rows (one per rank) of values named ``names`` -> name -> the values of all ranks."""
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` (0..100) of an already sorted, non-empty sequence."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def flatten_for_logging(
    values: Mapping[str, object], prefix: str, skip: Sequence[str] = ("ranks", "samples", "steps")
) -> dict[str, float]:
    """A record entry -> the few scalars worth logging.

    Numbers are logged under their name. A ``<name>_ranks`` = {"min","mean","max"} dict is logged as
    ``<name>`` (the mean, unless ``<name>`` is already a number) plus ``<name>/min`` and ``<name>/max``
    when more than one rank contributed. Everything else (and ``skip``) is left out.
    """
    many = int(values.get("ranks", 1) or 1) > 1  # type: ignore[call-overload]
    out: dict[str, float] = {}
    for name, value in values.items():
        if name in skip or name.removesuffix("_ranks") in skip:
            continue
        if isinstance(value, Mapping) and {"min", "mean", "max"} <= set(value):
            base = name.removesuffix("_ranks")
            if not isinstance(values.get(base), int | float) or base == name:
                out[f"{prefix}{base}"] = float(value["mean"])
            if many:
                out[f"{prefix}{base}/min"] = float(value["min"])
                out[f"{prefix}{base}/max"] = float(value["max"])
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{name}"] = float(value)
    return out


def log_to_loggers(
    trainer: pl.Trainer, metrics: Mapping[str, float], step: int, epoch: int | None = None
) -> None:
    """Send already-aggregated metrics straight to every logger (rank 0 only; not per step)."""
    if trainer.global_rank != 0 or not metrics:
        return
    payload = dict(metrics)
    if epoch is not None:
        payload["epoch"] = float(epoch)
    for logger in trainer.loggers:
        logger.log_metrics(payload, step=step)
