"""MultiLogger: one Lightning logger that fans out to several tracking backends off the training thread."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from typing_extensions import override

from itwinai_lightning import compat
from itwinai_lightning.loggers.backends import Backend, Record, RunContext, build_backend
from itwinai_lightning.loggers.fanout import start_workers, state_from_meta, stop_workers
from itwinai_lightning.loggers.params import flatten_params
from itwinai_lightning.loggers.spool import Spool, spool_dir
from itwinai_lightning.loggers.tracking_process import LINK_NAME, TrackingProcess, link_report, picklable
from itwinai_lightning.loggers.worker import BackendWorker

log = logging.getLogger(__name__)

SUMMARY_FILENAME = "tracking_summary.json"


class MultiLogger(Logger):
    """Fans metrics, hyperparameters, checkpoints, artifacts, figures and text out to several backends.

    By default the backends run in a child *tracking process* (``isolation: process``): the training
    process only hands plain-dict records to one background thread that sends them in batches, so
    backend code never competes with the training loop for the GIL. In that process (or in this one with
    ``isolation: thread``) each backend gets its own worker thread and bounded queue, so a slow or dead
    backend never stalls a training step; a backend that raises is set aside, its records spooled to
    ``<run_dir>/tracking_spool/<backend>.jsonl`` and retried (``python -m itwinai_lightning logs replay
    RUN_DIR`` re-sends a spool later). The run directory is ``trainer.default_root_dir`` (or ``run_dir``);
    every backend writes under it. Secrets are redacted from every hyperparameter set.

    ====================  =============================================================  ==============
    What is logged        Where                                                          Unit
    ====================  =============================================================  ==============
    metrics               every backend, per ``step`` (trainer global step)              as logged
    hyperparameters       flattened ``a.b.c`` keys, secrets redacted                     as given
    checkpoints           best (and last) checkpoint path as artifact at the end,        file
                          or every save with ``log_checkpoints: all``
    figures / text        :meth:`log_figure` (PNG under ``<run_dir>/figures``), :meth:`log_text`
    summary               ``<run_dir>/tracking_summary.json`` and RunRecord section      records
                          ``tracking``: delivered / spooled / where per backend
    ====================  =============================================================  ==============

    Args:
        backends: list of ``"tensorboard" | "mlflow" | "wandb" | "prov" | "csv"`` or mappings
            ``{type: mlflow, ranks: zero|all, ...backend options}``.
        experiment: experiment/project name given to the backends.
        run_name: run name (default: the run directory's name; ``quickstart-version_3`` for a CLI run's
            ``runs/quickstart/version_3``).
        run_dir: where to write; default ``trainer.default_root_dir``.
        queue_size: records per backend queue; beyond it records are spooled to disk (never dropped).
        flush_timeout_s: how long :meth:`finalize` waits for each backend before leaving records spooled.
        retry_interval_s: first delay before a failed backend is retried (doubles up to 60 s).
        log_checkpoints: ``"best"`` (best + last at the end), ``"all"`` (every save) or ``"none"``.
        secret_keys: extra key names to redact besides the built-in patterns.
        isolation: ``"process"`` (backends in a child process; default) or ``"thread"`` (worker threads
            in the training process, e.g. for backend objects that cannot be pickled).
        process_nice: niceness added to the tracking process (e.g. 10 on nodes whose cores all train).
    """

    def __init__(
        self,
        backends: Sequence[str | Mapping[str, Any]] = ("tensorboard", "csv"),
        experiment: str = "itwinai",
        run_name: str | None = None,
        run_dir: str | None = None,
        queue_size: int = 10_000,
        flush_timeout_s: float = 30.0,
        retry_interval_s: float = 5.0,
        log_checkpoints: str = "best",
        secret_keys: Sequence[str] = (),
        isolation: str = "process",
        process_nice: int = 0,
    ) -> None:
        super().__init__()
        if isolation not in ("process", "thread"):
            from itwinai_lightning.errors import UserError

            raise UserError(f"MultiLogger isolation must be process|thread, got {isolation!r}")
        if log_checkpoints not in ("best", "all", "none"):
            from itwinai_lightning.errors import UserError

            raise UserError(f"MultiLogger log_checkpoints must be best|all|none, got {log_checkpoints!r}")
        self._backends: list[Backend] = [build_backend(spec) for spec in backends]
        names = [b.name for b in self._backends]
        if len(set(names)) != len(names):
            from itwinai_lightning.errors import UserError

            raise UserError(f"MultiLogger backends have duplicate names {names}; give each a distinct 'name'")
        self._experiment = experiment
        self._run_name = run_name
        self._run_dir = Path(run_dir) if run_dir else None
        self._queue_size = queue_size
        self._flush_timeout_s = flush_timeout_s
        self._retry_interval_s = retry_interval_s
        self._log_checkpoints = log_checkpoints
        self._secret_keys = tuple(secret_keys)
        why_not = picklable(self._backends) if isolation == "process" else None
        if why_not:
            log.info("MultiLogger: backends run in threads of this process: %s", why_not)
        self._isolation = "thread" if why_not else isolation
        self._process_nice = int(process_nice)
        self._link: TrackingProcess | None = None
        self._started = False
        self._rank = 0
        self._world_size = 1
        self._workers: list[BackendWorker] = []
        self._pending: list[Record] = []
        self._checkpoint: dict[str, Any] | None = None
        self._finalized = False
        self.summary: dict[str, Any] | None = None

    # ---- Lightning Logger API -----------------------------------------------------------------------
    @property
    @override
    def name(self) -> str:
        return (
            ""  # with version "" Lightning puts checkpoints in <run_dir>/checkpoints (the no-logger layout)
        )

    @property
    @override
    def version(self) -> str:
        return ""

    @property
    @override
    def save_dir(self) -> str | None:
        return str(self._run_dir) if self._run_dir else None

    @property
    @override
    def root_dir(self) -> str | None:
        return self.save_dir

    @property
    @override
    def log_dir(self) -> str | None:
        return self.save_dir

    @property
    def experiment(self) -> MultiLogger:
        return self

    @property
    def experiment_name(self) -> str:
        """The experiment/project name given to every backend (unless a backend sets its own)."""
        return self._experiment

    @property
    def backends(self) -> list[Backend]:
        return list(self._backends)

    @override
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        data = {k: float(v) for k, v in metrics.items()}
        self._emit({"kind": "metrics", "step": int(step or 0), "time": time.time(), "data": data})

    @override
    def log_hyperparams(
        self, params: Mapping[str, Any] | argparse.Namespace, *args: Any, **kwargs: Any
    ) -> None:
        self._emit({"kind": "params", "data": flatten_params(params, self._secret_keys)})

    @override
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        trainer = compat.attached_trainer(model)
        if trainer is not None:
            self.bind(trainer.default_root_dir, trainer.global_rank, trainer.world_size)

    @override
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        best = (
            os.path.abspath(getattr(checkpoint_callback, "best_model_path", "") or "")
            if getattr(checkpoint_callback, "best_model_path", "")
            else ""
        )
        score = getattr(checkpoint_callback, "best_model_score", None)
        info = {
            "best": best,
            "last": os.path.abspath(checkpoint_callback.last_model_path)
            if getattr(checkpoint_callback, "last_model_path", "")
            else "",
            "score": float(score) if score is not None else None,
            "monitor": getattr(checkpoint_callback, "monitor", None),
        }
        self._checkpoint = info
        if self._log_checkpoints == "all" and best:
            self._emit(
                {
                    "kind": "checkpoint",
                    "data": {"path": best, "score": info["score"], "monitor": info["monitor"]},
                }
            )

    @override
    def save(self) -> None:
        pass

    @override
    def finalize(self, status: str) -> None:
        """Flush every backend (bounded by ``flush_timeout_s``), write the summary. Safe to call twice."""
        if self._finalized:
            return
        if self._checkpoint and self._log_checkpoints == "best":
            for key in ("best", "last"):
                path = self._checkpoint[key]
                if path and os.path.exists(path) and (key == "best" or path != self._checkpoint["best"]):
                    data = {
                        "path": path,
                        "score": self._checkpoint["score"],
                        "monitor": self._checkpoint["monitor"],
                    }
                    self._emit({"kind": "checkpoint", "data": data})
        self._start()
        if self._workers:  # the flush can take seconds (a remote server, W&B sync): say so, no silent pause
            from lightning.pytorch.utilities.rank_zero import rank_zero_info

            names = ", ".join(b.name for b in self._backends if b.active_on(self._rank))
            wait = f"at most {self._flush_timeout_s:g} s"
            rank_zero_info(f"MultiLogger: sending the last records to {names or 'the backends'} ({wait})")
        if self._link is not None:  # the child flushes within flush_timeout_s; allow it that and start-up
            stop_workers(self._workers, self._flush_timeout_s + 60.0)
        else:
            stop_workers(self._workers, self._flush_timeout_s)
        self._finalized = True
        self._checkpoint = None
        self._write_summary(status)

    # ---- extras --------------------------------------------------------------------------------------
    def log_figure(self, name: str, figure: Any, step: int | None = None) -> None:
        """Save a matplotlib figure under ``<run_dir>/figures/`` and send it to every backend."""
        directory = self._ensure_run_dir() / "figures"
        directory.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        path = directory / f"{safe}_{int(step or 0)}_r{self._rank}.png"
        figure.savefig(path)
        self._emit(
            {"kind": "figure", "step": int(step or 0), "data": {"name": name, "path": str(path.resolve())}}
        )

    def log_text(self, key: str, text: str, step: int | None = None) -> None:
        self._emit({"kind": "text", "step": int(step or 0), "data": {"key": key, "text": str(text)}})

    def log_artifact(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        """Send a file (e.g. the resolved config) to every backend that stores files."""
        self._emit({"kind": "artifact", "data": {"path": str(Path(path).resolve()), "name": name}})

    def bind(self, run_dir: str | os.PathLike[str], rank: int = 0, world_size: int = 1) -> None:
        """Fix the run directory and rank (done automatically from the trainer when fit starts)."""
        if self._workers:
            return
        if self._run_dir is None:
            self._run_dir = Path(run_dir)
        self._rank, self._world_size = int(rank), int(world_size)

    def backend_state(self, kind: str, wait_s: float = 30.0) -> dict[str, Any]:
        """State of the first backend of ``kind`` on this rank (e.g. the MLflow run id), or {}.

        Waits up to ``wait_s`` for it to be opened by its worker (unless it has been set aside).
        """
        deadline = time.monotonic() + wait_s
        if self._link is not None:  # the backends live in the tracking process: read what it saved
            return state_from_meta(
                spool_dir(self._ensure_run_dir()), kind, self._rank, deadline, self._finalized
            )
        for worker in self._workers:
            if worker.backend.kind != kind:
                continue
            while not worker.backend.is_open and worker.healthy and time.monotonic() < deadline:
                time.sleep(0.05)
            state = worker.backend.state()
            if worker.backend.is_open or any(state.values()):  # open now, or was (closed after finalize)
                return {**worker.backend.spec(), **state}
        return {}

    # ---- internals -----------------------------------------------------------------------------------
    def _ensure_run_dir(self) -> Path:
        if self._run_dir is None:
            self._run_dir = Path(os.getcwd())  # Lightning's own default_root_dir
        return self._run_dir

    def _emit(self, record: Record) -> None:
        if self._finalized:  # e.g. trainer.test() after fit: reopen the backends (same runs where possible)
            self._finalized = False
            self._workers = []
            self._started = False
        if not self._started:
            if self._run_dir is None and record["kind"] == "params":
                self._pending.append(record)  # fit has not told us the run dir yet (log_graph comes next)
                return
            self._start()
        for worker in self._workers:
            worker.submit(record)

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        run_dir = self._ensure_run_dir().resolve()
        rank_suffix = f"-rank{self._rank}" if self._rank else ""
        base: dict[str, Any] = dict(
            run_dir=str(run_dir),
            experiment=self._experiment,
            run_name=(self._run_name or run_name_of(run_dir)) + rank_suffix,
            rank=self._rank,
            world_size=self._world_size,
            extra={"environment": _environment()},
        )
        active = [b for b in self._backends if b.active_on(self._rank)]
        if not active:
            self._workers = []
        elif self._isolation == "thread":
            self._workers = start_workers(active, base, self._queue_size, self._retry_interval_s)
        else:
            reopened = self._link is not None
            self._link = TrackingProcess(
                active, self._queue_size, self._retry_interval_s, self._flush_timeout_s, self._process_nice
            )
            self._link.starts = int(reopened)
            name = LINK_NAME if self._rank == 0 else f"{LINK_NAME}.rank{self._rank}"
            spool = Spool(spool_dir(run_dir), name)
            self._workers = [
                BackendWorker(
                    self._link, RunContext(**base), spool, self._queue_size,
                    retry_interval_s=self._retry_interval_s,
                )
            ]  # fmt: skip
        pending, self._pending = self._pending, []
        for record in pending:
            for worker in self._workers:
                worker.submit(record)

    def _summary_rows(self) -> list[dict[str, Any]]:
        if self._link is None or not self._workers:
            return [w.summary() for w in self._workers]
        return link_report(self._link, self._workers[0])

    def _write_summary(self, status: str) -> None:
        rows = self._summary_rows()
        run_dir = self._ensure_run_dir()
        self.summary = {"status": status, "rank": self._rank, "backends": rows}
        name = SUMMARY_FILENAME if self._rank == 0 else f"tracking_summary.rank{self._rank}.json"
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / name).write_text(json.dumps(self.summary, indent=2))
        except OSError as err:
            log.warning("could not write the tracking summary: %s", err)
        for row in rows:
            where = f"; {row['spooled']} spooled in {row['spool']}" if row["spooled"] else ""
            log.info(
                "tracking %s (rank %d): %d delivered%s", row["backend"], row["rank"], row["delivered"], where
            )
            if row["spooled"]:
                log.warning(
                    "tracking backend %r kept %d records on disk (%s); send them later with: "
                    "python -m itwinai_lightning logs replay %s",
                    row["backend"],
                    row["spooled"],
                    row["errors"][-1] if row["errors"] else "not delivered",
                    run_dir,
                )
        if self._rank == 0:
            try:
                from itwinai_lightning import records

                records.contribute_to_run_dir(run_dir, "tracking", {"status": status, "backends": rows})
            except Exception as err:  # the record is a report, not a reason to fail
                log.warning("could not add tracking to the RunRecord: %s", err)


def _environment() -> dict[str, Any]:
    """Where the run ran (versions, host, launcher), computed here where torch and Lightning are loaded."""
    from itwinai_lightning.loggers.prov_session import environment_params

    return environment_params()


def run_name_of(run_dir: Path) -> str:
    """The default run name for the backends: the directory's name, with its root's for a ``version_N``."""
    from itwinai_lightning.runs.run_dir import PREFIX

    if run_dir.name.startswith(PREFIX) and run_dir.parent.name:
        return f"{run_dir.parent.name}-{run_dir.name}"
    return run_dir.name
