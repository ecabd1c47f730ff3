"""What a tracking backend is: an object the MultiLogger's worker thread feeds batches of records.

A *record* is a plain JSON-serialisable dict, so it can be queued, spooled to disk and replayed::

    {"kind": "metrics",    "step": 12, "time": 1.7e9, "data": {"train_loss": 0.31}}
    {"kind": "params",     "data": {"model.lr": 0.002}}             # flattened, secrets redacted
    {"kind": "artifact",   "data": {"path": "/abs/file", "name": "config"}}
    {"kind": "checkpoint", "data": {"path": "/abs/best.ckpt", "score": 0.1, "monitor": "val_loss"}}
    {"kind": "figure",     "step": 3, "data": {"path": "/abs/fig.png", "name": "recon"}}
    {"kind": "text",       "step": 3, "data": {"key": "notes", "text": "..."}}
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Record = dict[str, Any]

RANK_POLICIES = ("zero", "all")


@dataclass
class RunContext:
    """Where and as whom a backend writes. Every backend writes under ``run_dir`` (the trainer's root dir)."""

    run_dir: str
    experiment: str = "itwinai"
    run_name: str = "run"
    rank: int = 0
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunContext:
        known = {
            k: data[k]
            for k in ("run_dir", "experiment", "run_name", "rank", "world_size", "extra")
            if k in data
        }
        return cls(**known)

    def path(self, *parts: str) -> Path:
        return Path(self.run_dir, *parts)


class PermanentError(Exception):
    """A backend refused a record for good (e.g. HTTP 4xx): it is set aside, not retried."""


class Backend:
    """Base class: override :meth:`open`, :meth:`close` and the ``log_*`` methods you support.

    Methods are called from one worker thread only. Raising from any method sets the backend aside: its
    records are spooled under ``<run_dir>/tracking_spool/`` and retried later (:meth:`open` included).
    """

    #: short name used in YAML (``type: mlflow``) and in spool file names
    kind: str = "backend"
    #: seconds the worker gathers records before a delivery (a backend with costly calls batches more)
    linger_s: float = 0.5

    def __init__(self, ranks: str = "zero", name: str | None = None) -> None:
        if ranks not in RANK_POLICIES:
            from itwinai_lightning.errors import UserError

            raise UserError(
                f"logger backend {self.kind!r}: ranks must be one of {RANK_POLICIES}, got {ranks!r}"
            )
        self.ranks = ranks
        self.name = name or self.kind
        self.ctx: RunContext | None = None
        self.is_open = False

    # ---- lifecycle -------------------------------------------------------------------------------
    def active_on(self, rank: int) -> bool:
        return self.ranks == "all" or rank == 0

    def open(self, ctx: RunContext) -> None:
        """Create the run/experiment/writer. May raise (server down): it is retried with the spool."""

    def ensure_open(self, ctx: RunContext) -> None:
        self.ctx = ctx
        if not self.is_open:
            self.open(ctx)
            self.is_open = True

    def close(self, status: str = "success") -> None:
        """Flush and release. Called once at the end (also after failures)."""

    def state(self) -> dict[str, Any]:
        """What a replay needs to append to the *same* run (e.g. an MLflow run id); saved beside the spool."""
        return {}

    def resume(self, state: Mapping[str, Any]) -> None:
        """Continue the run described by :meth:`state` (used by ``logs replay``)."""

    def spec(self) -> dict[str, Any]:
        """The constructor arguments (secrets redacted) so ``logs replay`` can rebuild this backend."""
        return {"type": self.kind, "ranks": self.ranks, "name": self.name}

    # ---- data --------------------------------------------------------------------------------------
    def write(self, batch: Sequence[Record]) -> None:
        """Deliver a batch in order. Override for backends with a batch API (MLflow)."""
        for record in batch:
            self.write_one(record)

    def write_one(self, record: Record) -> None:
        kind = record.get("kind")
        data = record.get("data", {})
        step = int(record.get("step") or 0)
        if kind == "metrics":
            self.log_metrics(data, step, float(record.get("time") or 0.0))
        elif kind == "params":
            self.log_params(data)
        elif kind == "artifact":
            self.log_artifact(data["path"], data.get("name"))
        elif kind == "checkpoint":
            self.log_checkpoint(data["path"], data.get("score"), data.get("monitor"))
        elif kind == "figure":
            self.log_figure(data["name"], data["path"], step)
        elif kind == "text":
            self.log_text(data["key"], data["text"], step)

    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp: float) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str, name: str | None = None) -> None:
        pass

    def log_checkpoint(self, path: str, score: float | None, monitor: str | None) -> None:
        if os.path.exists(path):
            self.log_artifact(path, "checkpoints")

    def log_figure(self, name: str, path: str, step: int) -> None:
        self.log_artifact(path, "figures")

    def log_text(self, key: str, text: str, step: int) -> None:
        pass
