"""MLflow backend: one run per experiment (per rank with ``ranks: all``), batched through ``log_batch``."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from typing_extensions import override

from itwinai_lightning.loggers.backends.base import Backend, PermanentError, Record, RunContext

_MAX_METRICS = 1000
_MAX_PARAMS = 100
_MAX_PARAM_LEN = 6000


def default_tracking_uri(run_dir: str) -> str:
    """``$MLFLOW_TRACKING_URI``, else a SQLite store in the run dir (works offline on compute nodes)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{os.path.abspath(run_dir)}/mlflow.db"


def artifact_location(tracking_uri: str, run_dir: str) -> str | None:
    """Where a new experiment keeps its artifacts: under the run directory for a local store (SQLite or
    a file path), instead of MLflow's ``./mlruns`` of whatever the current directory is; a server
    decides for itself (None)."""
    if tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri:
        return Path(run_dir, "mlartifacts").resolve().as_uri()
    return None


def normalise_uri(uri: str) -> str:
    """Accept ``mlflow://host:port`` (the ``logs replay --to`` form) as ``http://host:port``."""
    return "http://" + uri[len("mlflow://") :] if uri.startswith("mlflow://") else uri


class MLflowBackend(Backend):
    """Metrics (``log_batch``, 1000 per request), params, artifacts, figures, text, checkpoints.

    Records are gathered for ``batch_interval_s`` (default 1 s) before each request: a tracking server
    pays per request, so per-step requests would make it the bottleneck.

    HTTP retries are kept short (``max_retries``, ``timeout_s``; via MLflow's ``MLFLOW_HTTP_REQUEST_*``
    environment variables unless already set) because the MultiLogger retries a failed backend itself.
    """

    kind = "mlflow"

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
        max_retries: int = 1,
        batch_interval_s: float = 1.0,
        ranks: str = "zero",
        name: str | None = None,
    ) -> None:
        super().__init__(ranks, name)
        self.linger_s = float(batch_interval_s)
        self.tracking_uri = normalise_uri(tracking_uri) if tracking_uri else None
        self.experiment = experiment
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.run_id: str | None = None
        self._client: Any = None

    @override
    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "tracking_uri": self.tracking_uri, "experiment": self.experiment,
                "run_name": self.run_name, "tags": self.tags}  # fmt: skip

    @override
    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.tracking_uri}

    @override
    def resume(self, state: Mapping[str, Any]) -> None:
        if state.get("run_id") and normalise_uri(str(state.get("tracking_uri"))) == self.tracking_uri:
            self.run_id = str(state["run_id"])

    @override
    def open(self, ctx: RunContext) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(self.max_retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(self.timeout_s)))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        # "Creating initial MLflow database tables..." on every new sqlite store is not news to a user
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        self.tracking_uri = self.tracking_uri or default_tracking_uri(ctx.run_dir)
        client = MlflowClient(tracking_uri=self.tracking_uri)
        if self.run_id is None:
            name = self.experiment or ctx.experiment
            exp = client.get_experiment_by_name(name)
            exp_id = (
                exp.experiment_id
                if exp is not None
                else client.create_experiment(
                    name, artifact_location=artifact_location(self.tracking_uri, ctx.run_dir)
                )
            )
            tags = {**self.tags, "itwinai.rank": str(ctx.rank), "itwinai.run_dir": ctx.run_dir}
            run = client.create_run(exp_id, run_name=self.run_name or ctx.run_name, tags=tags)
            self.run_id = run.info.run_id
        self._client = client

    @override
    def write(self, batch: Sequence[Record]) -> None:
        from mlflow.entities import Metric

        metrics: list[Any] = []
        for record in batch:
            if record.get("kind") == "metrics":
                ts = int(float(record.get("time") or 0) * 1000)
                step = int(record.get("step") or 0)
                metrics += [Metric(k, float(v), ts, step) for k, v in record["data"].items()]
                continue
            self._flush_metrics(metrics)
            metrics = []
            if record.get("kind") == "params":
                for chunk in param_batches(record["data"]):
                    self._call(self._client.log_batch, self.run_id, params=chunk)
            else:
                self.write_one(record)
        self._flush_metrics(metrics)

    def _flush_metrics(self, metrics: list[Any]) -> None:
        for i in range(0, len(metrics), _MAX_METRICS):
            self._call(self._client.log_batch, self.run_id, metrics=metrics[i : i + _MAX_METRICS])

    @staticmethod
    def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        from mlflow.exceptions import RestException

        try:
            return fn(*args, **kwargs)
        except RestException as err:
            status = err.get_http_status_code()
            if 400 <= status < 500 and status not in (408, 429):
                raise PermanentError(str(err)) from err
            raise

    @override
    def log_artifact(self, path: str, name: str | None = None) -> None:
        if os.path.exists(path):
            self._call(self._client.log_artifact, self.run_id, path, name or None)

    @override
    def log_text(self, key: str, text: str, step: int) -> None:
        self._call(self._client.log_text, self.run_id, text, f"text/{key}_{step}.txt")

    @override
    def close(self, status: str = "success") -> None:
        if self._client is not None and self.run_id is not None:
            self._client.set_terminated(self.run_id, "FINISHED" if status == "success" else "FAILED")


def param_batches(params: Mapping[str, Any]) -> Iterator[list[Any]]:
    """``params`` as MLflow ``Param`` lists of at most 100 (log_batch's limit), values cut to 6000 chars."""
    from mlflow.entities import Param

    items = [Param(key, str(value)[:_MAX_PARAM_LEN]) for key, value in params.items()]
    for start in range(0, len(items), _MAX_PARAMS):
        yield items[start : start + _MAX_PARAMS]
