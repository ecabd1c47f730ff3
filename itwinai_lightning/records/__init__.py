"""RunRecords: the one JSON file per run and stage that every report reads.

* :mod:`.schema`   the typed shape (``RunRecord``, ``EpochEntry``, ``Summary``, ``RankStats``) and units
* :mod:`.recorder` the one writer of a record (``Recorder``), with or without a Trainer
* :mod:`.writer`   inside a Trainer: ``contribute``, ``recorder_of`` and the ``RecordWriter`` callback
* :mod:`.store`    files: paths per stage, atomic save, ``load``, ``amend`` for tools acting between runs
* :mod:`.derive`   every derived figure (energy per sample, FLOP/s, MFU, epoch time, time to accuracy)
* :mod:`.facts`    what a Trainer can tell (strategy, launcher, placement, versions, CPU, parameters)
* :mod:`.peaks`    peak FLOP/s per device and precision

The run directory is ``trainer.default_root_dir``. Importing this package does not import Lightning;
the recorder (which does) is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from itwinai_lightning.records.schema import (
    FINISHED,
    RECORD_FILENAME,
    SCHEMA_VERSION,
    EpochEntry,
    RankStats,
    RunRecord,
    Summary,
)
from itwinai_lightning.records.store import amend, load, load_or_new, new_record, record_path, save

if TYPE_CHECKING:
    from itwinai_lightning.records.facts import describe_trainer
    from itwinai_lightning.records.recorder import Recorder, contribute_to_run_dir
    from itwinai_lightning.records.writer import RecordWriter, contribute, end_fields, recorder_of

_LAZY = {
    "Recorder": "recorder",
    "RecordWriter": "writer",
    "contribute": "writer",
    "contribute_to_run_dir": "recorder",
    "end_fields": "writer",
    "recorder_of": "writer",
    "describe_trainer": "facts",
}

__all__ = [
    "FINISHED",
    "RECORD_FILENAME",
    "SCHEMA_VERSION",
    "EpochEntry",
    "RankStats",
    "RecordWriter",
    "Recorder",
    "RunRecord",
    "Summary",
    "amend",
    "contribute",
    "contribute_to_run_dir",
    "describe_trainer",
    "end_fields",
    "load",
    "load_or_new",
    "new_record",
    "record_path",
    "recorder_of",
    "run_dir_of",
    "save",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"itwinai_lightning.records.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'itwinai_lightning.records' has no attribute {name!r}")


def run_dir_of(trainer: Any) -> Any:
    """The run directory owned by this run: ``trainer.default_root_dir`` (a Path)."""
    from pathlib import Path

    return Path(trainer.default_root_dir)
