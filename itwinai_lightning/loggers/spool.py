"""A per-backend spool on disk: records a backend could not take (yet), as JSON lines, in the run dir.

Layout (``<run_dir>/tracking_spool/``)::

    <backend>.jsonl          records waiting for delivery, oldest first (one JSON object per line)
    <backend>.meta.json      how to rebuild the backend for ``logs replay``: spec, run context, state
    <backend>.rejected.jsonl records the backend refused for good (HTTP 4xx); kept, never retried

Appends come from the training thread (queue overflow) and the worker thread (backend down); a lock
serialises them. :meth:`Spool.drain` hands the records to a delivery function in chunks and keeps,
in order, whatever was not delivered.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

SPOOL_DIRNAME = "tracking_spool"


def spool_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / SPOOL_DIRNAME


def _dumps(record: Any) -> str:
    return json.dumps(record, default=str, separators=(",", ":"))


class Spool:
    """JSONL spool for one backend. Thread-safe."""

    def __init__(self, directory: str | os.PathLike[str], name: str) -> None:
        self.directory = Path(directory)
        self.name = name
        self.path = self.directory / f"{name}.jsonl"
        self.meta_path = self.directory / f"{name}.meta.json"
        self.rejected_path = self.directory / f"{name}.rejected.jsonl"
        self._lock = threading.Lock()
        self._count = self._count_lines(self.path)
        self.total_spooled = 0

    @staticmethod
    def _count_lines(path: Path) -> int:
        if not path.exists():
            return 0
        with path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())

    def __len__(self) -> int:
        return self._count

    @property
    def lock(self) -> threading.Lock:
        """Held while appending or swapping the file; callers may hold it around :meth:`append_locked`."""
        return self._lock

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        with self._lock:
            return self.append_locked(records)

    def append_locked(self, records: Iterable[dict[str, Any]]) -> int:
        lines = [_dumps(r) for r in records]
        if not lines:
            return 0
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write("\n".join(lines) + "\n")
        self._count += len(lines)
        self.total_spooled += len(lines)
        return len(lines)

    def reject(self, records: Sequence[dict[str, Any]], reason: str) -> None:
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            with self.rejected_path.open("a") as fh:
                for record in records:
                    fh.write(_dumps({**record, "rejected": reason}) + "\n")

    def read(self) -> list[dict[str, Any]]:
        with self._lock:
            return self._read(self.path)

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash: skip it, keep the rest
        return out

    def drain(self, deliver: Callable[[list[dict[str, Any]]], None], chunk: int = 500) -> int:
        """Deliver the spooled records in order, ``chunk`` at a time. Returns how many were delivered.

        If ``deliver`` raises, the undelivered records (and anything appended meanwhile) stay spooled
        and the exception propagates.
        """
        with self._lock:
            pending = self._read(self.path)
            if self.path.exists():
                self.path.unlink()
            self._count = 0
        done = 0
        try:
            for start in range(0, len(pending), chunk):
                deliver(pending[start : start + chunk])
                done = start + len(pending[start : start + chunk])
        finally:
            if done < len(pending):
                self._put_back(pending[done:])
        return done

    def clear(self) -> None:
        """Forget the spooled records (after they were handed over elsewhere)."""
        with self._lock:
            if self.path.exists():
                self.path.unlink()
            self._count = 0

    def _put_back(self, records: list[dict[str, Any]]) -> None:
        with self._lock:
            newer = self._read(self.path)
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("w") as fh:
                for record in [*records, *newer]:
                    fh.write(_dumps(record) + "\n")
            os.replace(tmp, self.path)
            self._count = len(records) + len(newer)

    def write_meta(self, meta: dict[str, Any]) -> None:
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.meta_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(meta, indent=2, default=str))
            os.replace(tmp, self.meta_path)

    def read_meta(self) -> dict[str, Any]:
        return json.loads(self.meta_path.read_text()) if self.meta_path.exists() else {}

    def remove_if_empty(self) -> None:
        with self._lock:
            if self.path.exists() and self._count_lines(self.path) == 0:
                self.path.unlink()
