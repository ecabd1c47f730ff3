"""Reading and writing RunRecords on disk: one file per run directory and stage, replaced atomically.

Inside a run only the run's :class:`~itwinai_lightning.records.recorder.Recorder` writes. Tools that
act between runs (the benchmark runner before and after a point, ``benchmark --submit``, ``profile``)
use :func:`amend`, which reads, merges and replaces the file in one step.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from itwinai_lightning.records.schema import (
    FINISHED,
    LATEST_LINK,
    RECORD_FILENAME,
    SCHEMA_VERSION,
    EpochEntry,
    RunRecord,
    Summary,
)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def tagged_name(name: str, tag: str) -> str:
    """``config.yaml`` + ``test`` -> ``config.test.yaml``: a run directory's file of one stage or one run."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.{tag}.{suffix}" if dot else f"{name}.{tag}"


def stage_file(name: str, stage: str) -> str:
    """``name`` for fit, ``tagged_name(name, stage)`` for validate/test/predict (record and config alike)."""
    return name if stage == "fit" else tagged_name(name, stage)


def record_path(run_dir: str | os.PathLike[str], stage: str = "fit") -> Path:
    """``run_record.json`` for fit, ``run_record.<stage>.json`` for validate/test/predict."""
    return Path(run_dir) / stage_file(RECORD_FILENAME, stage)


def new_record(run_dir: str | os.PathLike[str], stage: str = "fit") -> RunRecord:
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": uuid.uuid4().hex[:12],
        "created_at": now(),
        "updated_at": now(),
        "stage": stage,
        "status": "running",
        "error": None,
        "run_dir": str(Path(run_dir).resolve()),
        "config": {},
        "strategy": None,
        "launcher": None,
        "world_size": 1,
        "num_nodes": 1,
        "devices_per_node": 1,
        "accelerator": None,
        "device_names": [],
        "precision": None,
        "global_batch_size": None,
        "hostnames": [platform.node()],
        "versions": {},
        "epochs": [],
        "summary": {},
        "sections": {},
    }


#: the stages a run directory's record may be of, the fit's first
STAGES = ("fit", "validate", "test", "predict")


def run_of(path: str | os.PathLike[str]) -> Path:
    """The run directory a command reads: ``path`` when it holds a run record, else its ``latest`` run
    (``runs/quickstart`` means ``runs/quickstart/latest``, :mod:`itwinai_lightning.runs.run_dir`)."""
    p = Path(path)
    if (p / RECORD_FILENAME).exists() or not (p / LATEST_LINK).is_dir():
        return p
    return (p / LATEST_LINK).resolve()


def load(path: str | os.PathLike[str]) -> RunRecord:
    """Read a RunRecord from a file or a run directory (the fit's, else its one stage's; a root of runs:
    its latest run's); ValueError naming an unreadable file."""
    p = Path(path)
    if p.is_dir():
        run = run_of(p)
        p = next((q for q in map(lambda s: record_path(run, s), STAGES) if q.exists()), record_path(run))
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read RunRecord {p}: {err}") from err
    if not isinstance(data, dict) or "schema_version" not in data:
        raise ValueError(f"{p} is not a RunRecord (no schema_version)")
    if int(data["schema_version"]) > SCHEMA_VERSION:
        raise ValueError(
            f"{p} has RunRecord schema {data['schema_version']}, newer than this itwinai-lightning "
            f"understands ({SCHEMA_VERSION}); upgrade itwinai-lightning"
        )
    return cast(RunRecord, data)


def load_or_new(run_dir: str | os.PathLike[str], stage: str = "fit") -> RunRecord:
    path = record_path(run_dir, stage)
    return load(path) if path.exists() else new_record(run_dir, stage)


def save(record: Mapping[str, Any], run_dir: str | os.PathLike[str], stage: str | None = None) -> Path:
    """Write atomically (temp file + rename), so a reader never sees half a record."""
    path = record_path(run_dir, stage or str(record.get("stage") or "fit"))
    path.parent.mkdir(parents=True, exist_ok=True)
    data = readable({**record, "updated_at": now()})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".run_record.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False, default=_json_default)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


#: the record's first keys: what a person opening the file wants to see first
HEAD = ("schema_version", "stage", "status", "error", "run_dir", "summary", "strategy", "launcher")
#: significant digits kept in the file (timings in microseconds, energies in mWh stay exact enough)
DIGITS = 7


def readable(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as written: the summary block first, floats rounded to :data:`DIGITS` significant digits."""
    ordered = {k: record[k] for k in HEAD if k in record}
    ordered.update({k: v for k, v in record.items() if k not in ordered})
    return _rounded(ordered)  # type: ignore[no-any-return]


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{DIGITS}g}") if math.isfinite(value) else value
    if isinstance(value, Mapping):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def merge(
    record: RunRecord,
    *,
    fields: RunRecord | None = None,
    summary: Summary | None = None,
    epoch: int | None = None,
    epoch_values: EpochEntry | None = None,
    section: str | None = None,
    section_values: Mapping[str, Any] | None = None,
) -> None:
    """Merge contributions into ``record`` in memory. Top-level ``fields`` replace, the rest merge.

    ``fields``, ``summary`` and ``epoch_values`` are typed by the schema (:mod:`.schema`): a key it does not
    name fails type-checking; a section's values are the section's own."""
    if fields:
        record.update(fields)
    if summary:
        record.setdefault("summary", {}).update(summary)
    if epoch is not None and epoch_values:
        epochs = record.setdefault("epochs", [])
        for entry in epochs:
            if entry.get("epoch") == epoch:
                entry.update(epoch_values)
                break
        else:
            epochs.append({**epoch_values, "epoch": epoch})
            epochs.sort(key=lambda e: e.get("epoch", 0))
    if section is not None and section_values is not None:
        record.setdefault("sections", {}).setdefault(section, {}).update(section_values)


def amend(
    run_dir: str | os.PathLike[str],
    *,
    stage: str = "fit",
    fields: RunRecord | None = None,
    summary: Summary | None = None,
    epoch: int | None = None,
    epoch_values: EpochEntry | None = None,
    section: str | None = None,
    section_values: Mapping[str, Any] | None = None,
) -> RunRecord:
    """Read-merge-write the record in ``run_dir`` from *outside* a run (keys typed as in :func:`merge`)."""
    from itwinai_lightning.records.derive import derive

    record = load_or_new(run_dir, stage)
    merge(record, fields=fields, summary=summary, epoch=epoch, epoch_values=epoch_values, section=section,
          section_values=section_values)  # fmt: skip
    derive(record)
    save(record, run_dir, stage)
    return record


def is_finished(record: Mapping[str, Any]) -> bool:
    return record.get("status") in FINISHED


def archive_finished_fit(run_dir: str | os.PathLike[str], companions: tuple[str, ...] = ()) -> str | None:
    """Before a new fit writes into ``run_dir``: keep an earlier *finished* fit's record (and companion
    files such as ``config.yaml``) under names of their own, ``run_record.<run_id>.json`` and
    ``config.<run_id>.yaml``, so the new fit replaces nothing. Returns the line that says so, or None.

    An unfinished record is left alone: it is the same run going on (a requeued job) or a benchmark
    point the runner pre-seeded, which the recorder adopts."""
    path = record_path(run_dir)
    if not path.exists():
        return None
    try:
        earlier = load(path)
    except (OSError, ValueError):
        return None
    if not is_finished(earlier):
        return None
    tag = str(earlier.get("run_id") or str(earlier.get("created_at") or "earlier").replace(":", ""))
    kept = []
    for name in (RECORD_FILENAME, *companions):
        earlier_file = Path(run_dir) / name
        if earlier_file.exists():
            kept.append(earlier_file.rename(earlier_file.with_name(tagged_name(name, tag))).name)
    return (
        f"{Path(run_dir)} already held a finished fit ({earlier.get('status')}, "
        f"{earlier.get('created_at')}); its {' and '.join(kept)} are kept; this fit writes its own "
        "record and config there"
    )
