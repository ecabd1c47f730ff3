"""A restarted attempt of the same run continues from the run's newest complete checkpoint.

torchrun's ``--max-restarts`` restarts every worker of a group when one fails; the restarted workers see
``TORCHELASTIC_RESTART_COUNT`` > 0 and, with a run id (``--rdzv-id``, or ``--standalone``), land in the
same run directory (:mod:`.run_dir`). A ``fit`` there without its own ``--ckpt_path`` resumes from
:func:`~itwinai_lightning.runs.newest.latest_checkpoint` of that directory, says so in one line, and the
RunRecord's ``restarts`` section counts the attempts (``count``; ``attempts``: each restart's number,
cause, the checkpoint resumed from or None, and when, ISO-8601 UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from itwinai_lightning import records
from itwinai_lightning.launch.where import attempt_number
from itwinai_lightning.runs.newest import latest_checkpoint

__all__ = ["attempt_number", "record_restart", "resume_point"]


def resume_point(run_dir: Path, restart: int) -> tuple[Path | None, str]:
    """The checkpoint a restarted attempt resumes from, and the line that says so."""
    newest = latest_checkpoint(run_dir)
    if newest is None:
        return (
            None,
            f"torchrun restart {restart}: no complete checkpoint in {run_dir} yet; training starts over",
        )
    return newest, f"torchrun restart {restart}: resuming from {newest}, the run's newest complete checkpoint"


def record_restart(run_dir: Path, restart: int, checkpoint: Path | None) -> None:
    """Add this attempt to the record of ``run_dir`` (rank 0 only) and mark the run running again."""
    try:
        earlier = records.load(records.record_path(run_dir, "fit"))
        attempts = list(earlier.get("sections", {}).get("restarts", {}).get("attempts", []))
    except ValueError:
        attempts = []
    attempts.append(
        {
            "restart": restart,
            "cause": "a worker of the group failed (torchrun restarted the group)",
            "checkpoint": str(checkpoint) if checkpoint is not None else None,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    records.amend(
        run_dir, fields={"status": "running", "error": None}, section="restarts",
        section_values={"count": len(attempts), "attempts": attempts},
    )  # fmt: skip
