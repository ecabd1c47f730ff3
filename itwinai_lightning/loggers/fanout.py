"""Start and stop one :class:`BackendWorker` per backend: shared by the in-process and process fan-outs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from itwinai_lightning.loggers.backends.base import Backend, RunContext
from itwinai_lightning.loggers.spool import Spool, spool_dir
from itwinai_lightning.loggers.worker import BackendWorker, OpenTurn


def spool_name(backend: Backend, rank: int) -> str:
    """``<name>`` for rank-0 backends, ``<name>.rank<N>`` for backends on every rank."""
    return backend.name if backend.ranks == "zero" else f"{backend.name}.rank{rank}"


def start_workers(
    backends: Sequence[Backend],
    context: Mapping[str, Any],
    queue_size: int,
    retry_interval_s: float,
    resume: bool = False,
) -> list[BackendWorker]:
    """A started worker for every backend active on ``context['rank']``.

    With ``resume``, a backend whose spool meta holds a state (e.g. an MLflow run id) continues that run
    instead of opening a new one (a restarted tracking process, or ``trainer.test`` after ``fit``).
    """
    rank = int(context.get("rank", 0))
    directory = spool_dir(Path(context["run_dir"]))
    workers = []
    turn = OpenTurn()
    for backend in backends:
        if not backend.active_on(rank):
            continue
        spool = Spool(directory, spool_name(backend, rank))
        if resume and not backend.is_open:
            state = spool.read_meta().get("state") or {}
            if any(state.values()):
                backend.resume(state)
        ctx = RunContext(**dict(context))
        workers.append(
            BackendWorker(backend, ctx, spool, queue_size, retry_interval_s=retry_interval_s, open_turn=turn)
        )
    return workers


def stop_workers(workers: Sequence[BackendWorker], timeout_s: float) -> list[dict[str, Any]]:
    """Flush all workers at once (each within ``timeout_s``) and return their summary rows."""
    threads = [threading.Thread(target=w.stop, args=(timeout_s,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [w.summary() for w in workers]


def state_from_meta(
    directory: Path, kind: str, rank: int, deadline: float, finalized: bool = False
) -> dict[str, Any]:
    """Spec and state of the first ``kind`` backend of ``rank``, as its worker saved it beside its spool.

    Waits (until the ``time.monotonic()`` ``deadline``) for the backend to be open; ``{}`` if it was set
    aside or never opened in time.
    """
    while True:
        for path in sorted(directory.glob("*.meta.json")) if directory.exists() else []:
            try:
                meta = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            spec, state = meta.get("spec") or {}, meta.get("state") or {}
            if spec.get("type") != kind or (meta.get("context") or {}).get("rank") != rank:
                continue
            if meta.get("open") or (finalized and any(state.values())):
                return {**spec, **state}
            if meta.get("healthy") is False:
                return {}
        if time.monotonic() >= deadline:
            return {}
        time.sleep(0.05)
