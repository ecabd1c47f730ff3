"""What a grid point ran: its fit arguments, the content of its config files and the software versions.

The runner stores these inputs in the point's RunRecord (``sections.benchmark.inputs``) when it starts the
point. On the next invocation a completed point is reused only when its stored inputs equal the current
ones; otherwise it runs again and the progress line names the first difference (e.g.
``--trainer.max_epochs: '1' -> '3'``), so a result is never silently reused for a different workload.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from itwinai_lightning.sections import config_positions

#: distributions whose versions decide whether a result can be reused
VERSIONED = ("torch", "lightning", "itwinai-lightning", "deepspeed", "horovod", "ray")
OUTPUT_FLAG = "--run_dir"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return "missing"


def point_inputs(fit_argv: Sequence[str], launcher: str, launcher_args: Sequence[str]) -> dict[str, Any]:
    """The inputs of one point: argv, a digest of each ``--config`` file, launcher and versions."""
    argv = [str(a) for a in fit_argv]
    if OUTPUT_FLAG in argv:  # where the point writes is not what it runs (a moved grid is still reusable)
        at = argv.index(OUTPUT_FLAG)
        del argv[at : at + 2]
    # config files by content: the grid copies them under its output_dir, so their paths move with it
    configs: dict[str, list[str]] = {}
    for at, path, inline in config_positions(argv):
        slot = f"<config {len(configs)}>"
        configs[slot] = [path, _digest(path)]
        argv[at] = f"--config={slot}" if inline else slot
    versions = {"python": platform.python_version()}
    versions.update({name: v for name in VERSIONED if (v := _version(name)) is not None})
    return {
        "argv": argv,
        "configs": configs,
        "launcher": launcher,
        "launcher_args": [str(a) for a in launcher_args],
        "versions": versions,
    }


def difference(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str | None:
    """The first difference between stored and current inputs, in words; None when they are equal."""
    if not old:
        return "its record holds no inputs (made by an older itwinai-lightning)"
    old_argv, new_argv = list(old.get("argv") or []), list(new["argv"])
    if old_argv != new_argv:
        return _argv_difference(old_argv, new_argv)
    for slot, (path, digest) in new["configs"].items():
        before = (old.get("configs") or {}).get(slot)
        if not before or before[1] != digest:
            return f"config file {path} changed"
    for key in ("launcher", "launcher_args"):
        if old.get(key) != new[key]:
            return f"{key}: {old.get(key)!r} -> {new[key]!r}"
    for name, version in new["versions"].items():
        before = (old.get("versions") or {}).get(name)
        if before != version:
            return f"{name} {before} -> {version}"
    return None


def _argv_difference(old: list[str], new: list[str]) -> str:
    """The first changed stretch of two argument lists, e.g. ``--trainer.max_epochs: '1' -> '3'``."""
    import difflib

    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if tag == "insert":
            return f"arguments added: {' '.join(new[j1:j2])}"
        if tag == "delete":
            return f"arguments dropped: {' '.join(old[i1:i2])}"
        if tag == "replace":
            flag = old[i1 - 1] if i1 and old[i1 - 1].startswith("-") else "arguments"
            return f"{flag}: {' '.join(old[i1:i2])!r} -> {' '.join(new[j1:j2])!r}"
    return "arguments differ"
