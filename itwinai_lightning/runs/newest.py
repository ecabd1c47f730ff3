"""The newest complete checkpoint under a directory: what a (re)started SLURM job resumes from and what
``--ckpt_path`` takes from a directory no run record describes.

Kept free of torch/Lightning imports: the job script calls it before launching the ranks
(``python -m itwinai_lightning slurm latest-checkpoint RUN_DIR --since MARKER``) and passes the result as
``--ckpt_path``. The job creates ``MARKER`` (``RUN_DIR/.job-$SLURM_JOB_ID``) on its first start; only
checkpoints written after it count, so a job never resumes from an unrelated earlier run's checkpoint
that sits in the same directory (a laptop test, another job). No checkpoint (first start) prints nothing,
and the run starts from scratch (or from the ``--ckpt_path`` the user named).
"""

from __future__ import annotations

import os
from pathlib import Path

from itwinai_lightning.state_files import PARTIAL_SUFFIX

#: what a directory checkpoint holds once complete: torch's distributed checkpoint (FSDP's sharded state)
#: writes ``.metadata`` after every shard, DeepSpeed writes ``latest`` after its files
COMPLETE_MARKERS = (".metadata", "latest")


def latest_checkpoint(run_dir: str | os.PathLike[str], since: float | None = None) -> Path | None:
    """The most recently modified ``*.ckpt`` (file, or DeepSpeed directory) below ``run_dir``, or None;
    with ``since`` (a time stamp), only those modified after it.

    Every checkpoint under a run directory belongs to that run (epoch-end ``last.ckpt``, top-k, and the
    requeue checkpoint), so the newest one is the furthest the run got. Half-written files (``.partial``),
    empty files and directories without their completion marker (:data:`COMPLETE_MARKERS`) are skipped.
    """
    root = Path(run_dir)
    if not root.is_dir():
        return None
    best: tuple[float, str] | None = None
    for path in root.rglob("*.ckpt"):
        if path.is_file() and path.stat().st_size == 0:
            continue
        if path.is_dir() and not any((path / marker).exists() for marker in COMPLETE_MARKERS):
            continue  # a sharded checkpoint whose writing never finished
        if any(part.endswith(PARTIAL_SUFFIX) for part in path.parts):
            continue
        # within a DeepSpeed checkpoint directory, only the directory itself counts
        if any(parent.suffix == ".ckpt" for parent in path.relative_to(root).parents if parent != Path(".")):
            continue
        key = (path.stat().st_mtime, str(path))
        if since is not None and key[0] <= since:
            continue
        if best is None or key > best:
            best = key
    return Path(best[1]) if best else None
