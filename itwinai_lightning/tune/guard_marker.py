"""The marker a sweep stopped on a user error leaves in its directory (no Ray import here).

A sweep that the guard stopped (``tune.metric`` not logged, ...) trained nothing worth keeping: the corrected
command replaces it (saying so), and ``--tune.resume true`` on it is refused, since resuming would only
continue the mistake and report a "best" trial from a sweep that never measured its metric.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from itwinai_lightning.errors import UserError

#: file in ``<output_dir>/<name>/`` holding the one-line reason the sweep was stopped
ABORTED_FILE = "ABORTED"


def mark_aborted(experiment_dir: Path, reason: str) -> None:
    """Write the reason next to the sweep's state (best effort: the directory may not exist yet)."""
    experiment_dir.mkdir(parents=True, exist_ok=True)
    (experiment_dir / ABORTED_FILE).write_text(reason.strip() + "\n")


def aborted_reason(experiment_dir: Path) -> str | None:
    path = experiment_dir / ABORTED_FILE
    return path.read_text().strip() if path.is_file() else None


def check_aborted(experiment_dir: Path, resume: bool) -> bool:
    """Whether ``experiment_dir`` holds a sweep stopped on a user error; resuming one is refused."""
    reason = aborted_reason(experiment_dir)
    if reason is None:
        return False
    if resume:
        raise UserError(
            f"tune: the sweep in {experiment_dir} was stopped on a user error "
            f"({reason.splitlines()[0][:160]}); "
            "there is nothing to resume: run the corrected command without --tune.resume"
        )
    return True


def replace_aborted(experiment_dir: Path) -> None:
    """After every check passed: remove an aborted sweep so the new one starts clean (said on stderr)."""
    if aborted_reason(experiment_dir) is None:
        return
    shutil.rmtree(experiment_dir)
    print(
        f"tune: replacing the sweep in {experiment_dir}, which was stopped on a user error", file=sys.stderr
    )
