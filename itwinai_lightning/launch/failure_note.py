"""A rank's note for the job script about why the run is ending: which hosts a failure points at.

The SLURM job script (:mod:`itwinai_lightning.slurm.script`) names the note's path in ``ITWINAI_FAILURE_NOTE``
before it starts the ranks. The first rank to see a failure it can place writes it (``O_EXCL``: one note per
attempt): a rank that lost a peer in a collective names the peer's hosts, the hang watchdog names the
stuck rank's host. The script reads it when the launch ends (:mod:`itwinai_lightning.slurm.recovery`): it
knows a node failed before ``srun`` does, and which one to leave out of the requeued job.

A rank whose own code raised writes ``<note>.error`` (cause ``error``, its own host).

The note is JSON: ``cause`` (``lost_peer`` | ``hang`` | ``error``), ``hosts`` (list of host names),
``rank`` and ``host`` of the writer, ``global_step`` (the writer's step when it noticed), ``time`` (UNIX
seconds), ``run_dir`` (the run's directory, whose RunRecord a requeued job continues).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Environment variable that names the note's path (set by the job script; unset: no note is written).
NOTE_ENV = "ITWINAI_FAILURE_NOTE"
CAUSES = ("lost_peer", "hang", "error")
#: A rank whose own code raised leaves its note beside the main one (its own file: the peers' lost-peer
#: note may come first), so the script can tell a bug, which would fail again, from a lost rank.
ERROR_SUFFIX = ".error"


def write(
    cause: str, hosts: Sequence[str], rank: int, global_step: int | None, run_dir: str | None = None
) -> bool:
    """Leave the note when the job script asked for one and no rank has yet; True when this call wrote it.
    Never raises: a run that is ending must not fail on its note."""
    path = os.environ.get(NOTE_ENV)
    if not path or cause not in CAUSES:
        return False
    if cause == "error":
        path += ERROR_SUFFIX
    note = {
        "cause": cause,
        "hosts": sorted(set(hosts)),
        "rank": rank,
        "host": platform.node(),
        "global_step": global_step,
        "time": time.time(),
        "run_dir": run_dir,
    }
    partial = f"{path}.{os.getpid()}.partial"
    try:
        Path(partial).write_text(json.dumps(note))
        os.link(partial, path)  # atomic and exclusive: the first rank's note stands
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(partial)
    return True


def read(path: str | Path) -> dict[str, Any] | None:
    """The note at ``path``, or None when there is none (or it is unreadable)."""
    try:
        note = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) else None
