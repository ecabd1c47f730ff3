"""Which checkpoints a fit wrote: read from its ModelCheckpoint callbacks (and any callback that lists the
files it keeps as ``kept_files``, e.g. ``TimedCheckpoint``), never from the directory.

A run directory can hold other runs' files (an earlier fit into the same ``default_root_dir``, Lightning's
``version_N`` folders, ``last-v1.ckpt`` beside ``last.ckpt``); globbing it would count and name them as
this run's. The callbacks know exactly which files they saved and still keep.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _relative(path: str | None, run_dir: Path) -> str | None:
    if not path:
        return None
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(run_dir))
    except ValueError:
        return str(resolved)


def written_checkpoints(trainer: Any) -> dict[str, Any]:
    """``{"best", "last", "monitor", "files"}`` of this trainer's checkpoint callbacks (see
    :class:`~itwinai_lightning.records.schema.Checkpoints`); empty when it has none."""
    run_dir = Path(trainer.default_root_dir).resolve()
    files: list[str] = []
    best = last = monitor = None
    for callback in getattr(trainer, "checkpoint_callbacks", []) or []:
        kept = list((getattr(callback, "best_k_models", None) or {}).keys())
        newest = getattr(callback, "last_model_path", "") or ""
        watched = getattr(callback, "monitor", None)
        top = getattr(callback, "best_model_path", "") or ""
        for path in [*kept, newest]:
            if path and path not in files and os.path.exists(path):
                files.append(path)
        if watched and top and best is None:
            best, monitor = top, watched
        if last is None:
            last = newest or (top if not watched else None)
    for callback in getattr(trainer, "callbacks", []) or []:  # e.g. TimedCheckpoint: ``kept_files``
        for path in map(str, getattr(callback, "kept_files", None) or []):
            if path not in files and os.path.exists(path):
                files.append(path)
    if not files:
        return {}
    files.sort(key=lambda p: (os.path.getmtime(p), p))
    return {
        "best": _relative(best, run_dir),
        "last": _relative(last or files[-1], run_dir),
        "monitor": monitor,
        "files": [_relative(p, run_dir) for p in files],
    }
