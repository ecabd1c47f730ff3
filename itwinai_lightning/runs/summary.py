"""The few lines printed after a ``fit``: where this run's outputs went and its key figures.

Everything named is this run's own: its checkpoints as its ModelCheckpoint callbacks recorded them
(``run_record.json`` ``checkpoints``), never a count of the files another run left in the same directory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from itwinai_lightning import records

#: tracking outputs a run directory may hold (MultiLogger's backends)
LOG_NAMES = ("tensorboard", "csv", "metrics.csv", "mlflow.db", "wandb", "prov")
#: record sections written by the profiling callbacks
PROFILING_SECTIONS = ("pyspy", "torch_profiler")


def _where(path: Path, run_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(run_dir))
    except ValueError:
        return str(path)


def _checkpoint_line(written: dict[str, Any]) -> str:
    files = [str(f) for f in written.get("files") or []]
    if not files:
        return "  checkpoints: none written by this run"
    folders = sorted({str(Path(f).parent) for f in files})
    names = ", ".join(Path(f).name for f in files)
    line = f"  checkpoints: {len(files)} written by this run under {', '.join(folders)} ({names})"
    if written.get("best"):
        line += f"; best ({written.get('monitor')}): {Path(str(written['best'])).name}"
    return line


def _figures(rec: dict[str, Any]) -> list[str]:
    summary: dict[str, Any] = dict(rec.get("summary") or {})
    figures = [f"status {rec.get('status')}"]
    if summary.get("epochs_completed") is not None:
        figures.append(f"{summary['epochs_completed']} epochs")
    if summary.get("fit_wall_time_s") is not None:
        figures.append(f"{summary['fit_wall_time_s']:.1f} s")
    if summary.get("samples_per_s") is not None:
        figures.append(f"{summary['samples_per_s']:.4g} samples/s")
    if summary.get("mfu_pct") is not None:
        figures.append(f"MFU {summary['mfu_pct']:.3g} %")
    if summary.get("energy_wh") is not None:
        figures.append(f"GPU {summary['energy_wh']:.3g} Wh")
    if summary.get("cpu_energy_wh") is not None:
        figures.append(f"CPU {summary['cpu_energy_wh']:.3g} Wh")
    monitor = summary.get("monitor")
    final = _final_metric(rec, monitor)
    if final is not None:
        figures.append(f"final {monitor} {final:.4g}")
    if summary.get("best_metric") is not None:
        figures.append(f"best {monitor} {summary['best_metric']:.4g}")
    return figures


def _final_metric(rec: dict[str, Any], monitor: str | None) -> float | None:
    if not monitor:
        return None
    for epoch in reversed(rec.get("epochs") or []):
        value = (epoch.get("metrics") or {}).get(monitor)
        if isinstance(value, int | float) and not math.isnan(value):
            return float(value)
    return None


def lines(run_dir: Path, log_dir: str | None = None) -> list[str]:
    """Run directory, this run's checkpoints, logs, profiling outputs and record with its figures."""
    run_dir = run_dir.resolve()
    out = [f"run directory: {run_dir}"]
    path = records.record_path(run_dir)
    rec: dict[str, Any] = dict(records.load(path)) if path.exists() else {}
    out.append(_checkpoint_line(dict(rec.get("checkpoints") or {})))
    logs = [name for name in LOG_NAMES if (run_dir / name).exists()]
    where = _where(Path(log_dir), run_dir) if log_dir and Path(log_dir).resolve() != run_dir else None
    if where is not None and where not in logs:
        logs.append(where)
    if logs:
        out.append(f"  logs: {', '.join(logs)}")
    profiled = [name for name in PROFILING_SECTIONS if name in (rec.get("sections") or {})]
    if profiled and (run_dir / "profiling").is_dir():
        out.append(f"  profiling: profiling/ ({', '.join(profiled)})")
    if rec:
        out.append(f"  record: {path.name} ({', '.join(_figures(rec))})")
    return out
