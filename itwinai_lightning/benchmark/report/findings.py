"""The report's findings from the configuration table: the fastest configuration, the least energy per
sample, the fastest to the accuracy target, and where parallel efficiency drops below the threshold (with
the worker counts where the repetitions make that verdict uncertain)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from itwinai_lightning.benchmark.report.table import Row, Run, accuracy_target


def efficiency_band(row: Row) -> tuple[float, float] | None:
    """The efficiency's min-max over the repetitions (from the epoch time's), or None with one repetition."""
    if row.repetitions < 2 or row.speedup_min is None or row.speedup_max is None or not row.speedup:
        return None
    scale = (row.efficiency_pct or 0.0) / row.speedup
    return row.speedup_min * scale, row.speedup_max * scale


def _configuration(row: Row) -> dict[str, Any]:
    return {
        "strategy": row.strategy,
        "launcher": row.launcher,
        "scaling": row.scaling,
        "workers": row.workers,
    }


def _lowest(rows: Sequence[Row], figure: str) -> Row | None:
    """The row with the lowest ``figure`` (the fewest workers on a tie), or None when no row has it."""
    having = [r for r in rows if getattr(r, figure) is not None]
    return min(having, key=lambda r: (getattr(r, figure), r.workers)) if having else None


#: efficiency above this (percent) is reported as suspect, not as scaling well
SUPERLINEAR_PCT = 105.0
#: with one repetition there is no spread: epoch times closer than this (percent) are not told apart
SINGLE_RUN_NOISE_PCT = 10.0


def within_noise(best: Row, other: Row) -> bool:
    """Whether ``other``'s epoch time cannot be told from ``best``'s: their repetitions' ranges overlap, or
    (one repetition, no spread) it is within :data:`SINGLE_RUN_NOISE_PCT` of it."""
    if best.epoch_time_s is None or other.epoch_time_s is None:
        return False
    if min(best.repetitions, other.repetitions) >= 2 and best.epoch_time_max_s and other.epoch_time_min_s:
        return other.epoch_time_min_s <= best.epoch_time_max_s
    return other.epoch_time_s <= best.epoch_time_s * (1 + SINGLE_RUN_NOISE_PCT / 100)


def _fastest(rows: Sequence[Row]) -> dict[str, Any] | None:
    """The fastest configuration, or the ones the noise cannot tell apart (``tied``: no winner named)."""
    best = _lowest(rows, "epoch_time_s")
    if best is None:
        return None
    tied = [r for r in rows if r is not best and within_noise(best, r)]
    return {
        **_configuration(best),
        "epoch_time_s": best.epoch_time_s,
        "single_repetition": min(r.repetitions for r in rows if r.epoch_time_s is not None) < 2,
        "tied": [{**_configuration(r), "epoch_time_s": r.epoch_time_s} for r in tied],
    }


def recommend(rows: Sequence[Row], threshold_pct: float = 70.0, runs: Sequence[Run] = ()) -> dict[str, Any]:
    """Fastest configuration (or those the noise cannot separate), least energy per sample, fastest to the
    accuracy target (with ``runs``), and where efficiency first drops below threshold (or rises above
    100 %, which is never good news: the baseline was slow or the work differs)."""
    out: dict[str, Any] = {"threshold_pct": threshold_pct, "fastest": None, "least_energy": None}
    out["fastest"] = _fastest(rows)
    if best := _lowest(rows, "energy_per_sample_wh"):
        out["least_energy"] = {**_configuration(best), "energy_per_sample_wh": best.energy_per_sample_wh}
    target = accuracy_target(runs) if runs else None
    if target is not None and (best := _lowest(rows, "time_to_target_s")):
        out["fastest_to_target"] = {
            **_configuration(best),
            "time_to_target_s": best.time_to_target_s,
            "energy_to_target_wh": best.energy_to_target_wh,
            "metric": next(r.monitor for r in runs if r.accuracy),
            "target": target[0],
        }
    drops: list[dict[str, Any]] = []
    for series in sorted({r.series for r in rows}):
        mine = [r for r in rows if r.series == series and r.efficiency_pct is not None]
        below = next(
            (r for r in mine if r.efficiency_pct is not None and r.efficiency_pct < threshold_pct), None
        )
        drops.append(
            {
                "strategy": series[0],
                "launcher": series[1],
                "scaling": series[2],
                "below_at_workers": below.workers if below else None,
                "efficiency_pct": below.efficiency_pct if below else None,
                "max_measured": max((r.workers for r in mine), default=None),
                # above 100 %: N workers more than N times faster than the baseline -- a suspect baseline
                "superlinear_at": [
                    {"workers": r.workers, "efficiency_pct": r.efficiency_pct}
                    for r in mine
                    if r.efficiency_pct is not None and r.efficiency_pct > SUPERLINEAR_PCT
                ],
                # worker counts whose repetitions fall on both sides of the threshold: the verdict could flip
                "uncertain_at": [
                    {"workers": r.workers, "low_pct": band[0], "high_pct": band[1]}
                    for r in mine
                    if (band := efficiency_band(r)) is not None and band[0] < threshold_pct <= band[1]
                ],
            }
        )
    out["efficiency_drop"] = drops
    return out
