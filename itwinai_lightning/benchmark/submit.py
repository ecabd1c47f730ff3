"""SLURM: submit each grid point as its own sbatch job (multi-node) instead of running it in place."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol, TextIO

from itwinai_lightning import records
from itwinai_lightning.benchmark import launchers
from itwinai_lightning.benchmark.launchers import GridPoint
from itwinai_lightning.benchmark.outcome import PointResult
from itwinai_lightning.benchmark.settings import Settings
from itwinai_lightning.errors import UserError
from itwinai_lightning.launch.sbatch import split_into_nodes


class GridRunner(Protocol):
    """What submitting a point needs of the grid runner (``benchmark.runner.GridRunner``)."""

    settings: Settings
    stream: TextIO

    def fit_args(
        self, point: GridPoint, run_dir: Path, nodes: int = 1, devices: int | None = None
    ) -> list[str]: ...

    def prepare(
        self, point: GridPoint, run_dir: Path, command: Sequence[str], launcher: str | None = None
    ) -> None: ...


def job_pending(job_id: str) -> bool:
    """Whether ``job_id`` is still queued or running (``squeue`` lists it)."""
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, check=False
    )
    return out.returncode == 0 and bool(out.stdout.strip())


def submit_point(runner: GridRunner, point: GridPoint, run_dir: Path) -> PointResult:
    """Render ``<run_dir>/job.sbatch`` and submit it; a still-queued earlier submission is not repeated."""
    settings = runner.settings
    opts = settings.sbatch
    try:
        nodes, per_node = split_into_nodes(point.workers, opts.ntasks_per_node)
    except ValueError as err:
        raise UserError(f"benchmark.slurm.ntasks_per_node: {err}") from err
    fit = runner.fit_args(point, run_dir, nodes=nodes, devices=per_node)
    opts = replace(opts, nodes=nodes, ntasks_per_node=per_node)
    script = launchers.render_sbatch(point, str(run_dir), fit, opts=opts)
    if settings.dry_run:
        runner.stream.write(script + "\n")
        return PointResult(point, "dry-run")
    previous = records.load_or_new(run_dir) if records.record_path(run_dir).exists() else {}
    job_id = ((previous.get("sections") or {}).get("benchmark") or {}).get("job_id")
    if job_id and previous.get("status") == "running" and job_pending(str(job_id)):
        return PointResult(point, "submitted", job_id=str(job_id))
    if shutil.which("sbatch") is None:
        raise UserError("benchmark.submit is true but 'sbatch' is not on PATH; run on a SLURM login node")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "job.sbatch"
    path.write_text(script)
    runner.prepare(point, run_dir, ["sbatch", str(path)], launcher="srun")  # the job's step is an srun
    out = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        why = out.stderr.strip() or f"sbatch exit code {out.returncode}"
        records.amend(run_dir, fields={"status": "failed", "error": f"sbatch: {why}"})
        return PointResult(point, "failed", error=f"sbatch: {why}")
    new_id = out.stdout.strip().split(";")[0]
    records.amend(run_dir, section="benchmark", section_values={"job_id": new_id, "nodes": nodes})
    return PointResult(point, "submitted", job_id=new_id)


def wait_for(results: list[PointResult], stream: TextIO, poll_s: float = 2.0) -> None:
    """Block until every submitted job has left the queue (``benchmark.slurm.wait: true``)."""
    jobs = [r.job_id for r in results if r.status == "submitted" and r.job_id]
    stream.write(f"waiting for {len(jobs)} SLURM job(s) ...\n")
    while jobs:
        time.sleep(poll_s)
        jobs = [j for j in jobs if job_pending(j)]
