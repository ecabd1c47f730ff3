"""The few lines printed after a ``fit``: where everything went and the run's key figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from itwinai_lightning import records


def _where(path: Path, run_dir: Path) -> str:
    try:
        return str(path.relative_to(run_dir))
    except ValueError:
        return str(path)


def lines(run_dir: Path, best_checkpoint: str | None = None) -> list[str]:
    """Run directory, checkpoints, logs, record; epochs, time, throughput, energy and best metric."""
    run_dir = run_dir.resolve()
    out = [f"run directory: {run_dir}"]
    checkpoints = sorted(run_dir.rglob("*.ckpt"))
    if checkpoints:
        best = f"; best: {_where(Path(best_checkpoint).resolve(), run_dir)}" if best_checkpoint else ""
        out.append(f"  checkpoints: {len(checkpoints)} under {_where(checkpoints[0].parent, run_dir)}{best}")
    logs = [name for name in ("tensorboard", "metrics.csv", "mlflow.db", "wandb", "prov", "lightning_logs")
            if (run_dir / name).exists()]  # fmt: skip
    if logs:
        out.append(f"  logs: {', '.join(logs)}")
    path = records.record_path(run_dir)
    if not path.exists():
        return out
    rec = records.load(path)
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
        figures.append(f"{summary['energy_wh']:.3g} Wh")
    if summary.get("best_metric") is not None:
        figures.append(f"best {summary.get('monitor')} {summary['best_metric']:.4g}")
    out.append(f"  record: {path.name} ({', '.join(figures)})")
    return out
