"""What became of one grid point: the runner's and the SLURM submitter's shared result type."""

from __future__ import annotations

from dataclasses import dataclass

from itwinai_lightning.benchmark.launchers import GridPoint


@dataclass
class PointResult:
    """One point's outcome; ``seconds`` is its wall time in s, ``epoch_time_s`` its training epoch time."""

    point: GridPoint
    status: str  # completed | failed | skipped | submitted | dry-run
    seconds: float = 0.0
    error: str | None = None
    epoch_time_s: float | None = None
    job_id: str | None = None
