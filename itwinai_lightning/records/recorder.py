"""The one writer of a run's record: a :class:`Recorder` holds it in memory and writes it atomically.

Inside a Trainer, :mod:`itwinai_lightning.records.writer` gives each stage its recorder and flushes it
at epoch ends and at the end; the tests' synthetic benchmark records use the same class without a Trainer.

Each stage has its own file: fit writes ``run_record.json``; ``validate``/``test``/``predict`` write
``run_record.<stage>.json`` and never touch the fit's. A recorder starts a new record unless the file
holds an unfinished one (a SLURM requeue resuming, or a benchmark point pre-seeded by the runner), which
it adopts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from itwinai_lightning.records import store
from itwinai_lightning.records.derive import derive
from itwinai_lightning.records.schema import RunRecord

#: The latest recorders per resolved run directory and stage, for contributors without a Trainer (the
#: MultiLogger's summary arrives in ``finalize``, after the callbacks' teardown); only the newest
#: :data:`KEEP_LATEST` are kept, so a warm process that runs trial after trial does not grow.
_LATEST: dict[tuple[str, str], Recorder] = {}
KEEP_LATEST = 8


class Recorder:
    """A run's record in memory; :meth:`flush` writes it (derived figures first) atomically."""

    def __init__(self, run_dir: str | os.PathLike[str], stage: str = "fit") -> None:
        self.run_dir, self.stage = Path(run_dir), stage
        existing = store.record_path(run_dir, stage)
        adopted = store.load(existing) if existing.exists() else None
        if adopted is not None and not store.is_finished(adopted):
            self.record: RunRecord = adopted  # a requeued job, or a point the benchmark runner pre-seeded
        else:
            self.record = store.new_record(run_dir, stage)
        self.dirty = True
        key = (str(self.run_dir.resolve()), stage)
        _LATEST.pop(key, None)  # re-inserted as the newest
        _LATEST[key] = self
        while len(_LATEST) > KEEP_LATEST:
            _LATEST.pop(next(iter(_LATEST)))

    def contribute(self, **contribution: Any) -> None:
        """Merge figures (keys as :func:`records.store.merge`); nothing is written until :meth:`flush`."""
        store.merge(self.record, **contribution)
        self.dirty = True

    def append(self, section: str, key: str, entry: Mapping[str, Any]) -> None:
        """Append ``entry`` to the list ``sections[section][key]`` (e.g. the requeues of a run)."""
        values = self.record.setdefault("sections", {}).setdefault(section, {})
        values[key] = [*values.get(key, []), dict(entry)]
        self.dirty = True

    def flush(self) -> Path | None:
        if not self.dirty:
            return None
        derive(self.record)
        path = store.save(self.record, self.run_dir, self.stage)
        self.dirty = False
        return path


def contribute_to_run_dir(run_dir: str | os.PathLike[str], section: str, values: Mapping[str, Any]) -> None:
    """For a contributor without a Trainer: hand ``section`` to the run's live recorder(s) and write;
    with no live recorder (e.g. a logger used outside a run), amend the fit's record on disk."""
    key = str(Path(run_dir).resolve())
    live = [rec for (where, _), rec in _LATEST.items() if where == key]
    if not live:
        store.amend(run_dir, section=section, section_values=values)
        return
    for recorder in live:
        recorder.contribute(section=section, section_values=values)
        recorder.flush()
