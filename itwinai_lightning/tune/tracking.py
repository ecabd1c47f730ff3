"""One MLflow parent run per sweep; every trial's MLflow run becomes its child.

Active when the base config logs through :class:`itwinai_lightning.loggers.multi.MultiLogger` with an
``mlflow`` backend. The sweep process creates the parent run (in the first MLflow backend's tracking URI
and experiment) before Ray starts; each trial sets, on its own MLflow backends, before they open:

==========================  ================================================================================
run tag / param             value
==========================  ================================================================================
``mlflow.parentRunId``      the parent run's id (MLflow shows the trial runs nested under the sweep)
``itwinai.tune_sweep``      the sweep's ``tune.name`` (also the parent run's name)
``itwinai.tune_trial_id``   Ray Tune's trial id (the child run is named ``<run_name or sweep>-<trial id>``)
params                      ``tune_trial_id`` and the sampled values (logged by ``TuneReporter``)
==========================  ================================================================================

The parent run holds the search space (params ``search_space.<key>``, ``metric``, ``mode``, ``scheduler``,
``search_alg``, ``num_samples``), and at the end ``best_<metric>`` (metric), ``best_trial_id`` (tag) and
the status. Its id is kept in ``<output_dir>/<name>/mlflow_parent.json`` so ``--tune.resume`` continues the
same parent run. Backends without their own ``tracking_uri`` use the parent's (``$MLFLOW_TRACKING_URI``,
else ``sqlite:///<output_dir>/<name>/mlflow.db``), so parent and children share one store.
MLflow is imported inside functions only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from itwinai_lightning.tune.settings import TuneSettings

PARENT_FILE = "mlflow_parent.json"


@dataclass(frozen=True)
class SweepTracking:
    """What a trial needs to attach its MLflow run to the sweep's parent run (picklable)."""

    tracking_uri: str
    experiment: str
    parent_run_id: str
    sweep: str


def mlflow_backends(loggers: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
    """``(multi_logger, backend)`` for every MLflow backend of every MultiLogger in ``loggers``."""
    from itwinai_lightning.loggers.multi import MultiLogger

    for logger in loggers:
        if isinstance(logger, MultiLogger):
            for backend in logger.backends:
                if getattr(backend, "kind", None) == "mlflow":
                    yield logger, backend


def _experiment_of(logger: Any, backend: Any) -> str:
    return str(backend.experiment or getattr(logger, "experiment_name", None) or "itwinai")


def start_parent(loggers: Sequence[Any], settings: TuneSettings) -> SweepTracking | None:
    """Create (or, on resume, reopen) the sweep's parent run; ``None`` when no MLflow backend is set up."""
    found = next(mlflow_backends(loggers), None)
    if found is None:
        return None
    logger, backend = found
    from mlflow.tracking import MlflowClient

    from itwinai_lightning.loggers.backends.mlflow import default_tracking_uri

    uri = backend.tracking_uri or default_tracking_uri(str(settings.experiment_dir))
    experiment = _experiment_of(logger, backend)
    client = MlflowClient(tracking_uri=uri)
    state_file = settings.experiment_dir / PARENT_FILE
    if settings.resume and state_file.is_file():
        state = json.loads(state_file.read_text())
        if state.get("store") == _digest(uri) and state.get("experiment") == experiment:
            client.update_run(state["run_id"], status="RUNNING")
            return SweepTracking(uri, experiment, state["run_id"], settings.name)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run = client.create_run(
        exp_id,
        run_name=settings.name,
        tags={"itwinai.tune_sweep": settings.name, "itwinai.kind": "tune_sweep"},
    )
    params = {f"search_space.{key}": f"{dist.kind}{list(dist.args)}" for key, dist in settings.space.items()}
    params.update(
        metric=settings.metric,
        mode=settings.mode,
        scheduler=str(settings.scheduler),
        search_alg=str(settings.search_alg),
        num_samples=str(settings.num_samples),
        workers_per_trial=str(settings.workers_per_trial),
    )
    from itwinai_lightning.loggers.backends.mlflow import param_batches

    for chunk in param_batches(params):  # one request per 100 params (MLflow's log_batch limit)
        client.log_batch(run.info.run_id, params=chunk)
    # the URI may carry credentials: keep only its digest
    state = {"run_id": run.info.run_id, "store": _digest(uri), "experiment": experiment}
    state_file.write_text(json.dumps(state))
    return SweepTracking(uri, experiment, run.info.run_id, settings.name)


def _digest(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()


def adopt_trial(loggers: Sequence[Any], tracking: SweepTracking, trial_id: str) -> None:
    """Make this trial's MLflow runs children of the sweep's parent run (call before the fit starts)."""
    for logger, backend in mlflow_backends(loggers):
        uri = backend.tracking_uri or tracking.tracking_uri
        if uri != tracking.tracking_uri or _experiment_of(logger, backend) != tracking.experiment:
            continue  # another store or experiment: MLflow cannot nest across them
        backend.tracking_uri = uri
        backend.experiment = tracking.experiment
        backend.tags = {
            **backend.tags,
            "mlflow.parentRunId": tracking.parent_run_id,
            "itwinai.tune_sweep": tracking.sweep,
            "itwinai.tune_trial_id": trial_id,
        }
        backend.run_name = f"{backend.run_name or tracking.sweep}-{trial_id}"


def finish_parent(
    tracking: SweepTracking, metric: str, best_value: float | None, best_trial: str | None
) -> None:
    """Record the best trial on the parent run and close it (FAILED when no trial reported the metric)."""
    import math

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking.tracking_uri)
    ok = best_value is not None and not math.isnan(best_value)
    if ok and best_trial is not None:
        client.log_metric(tracking.parent_run_id, f"best_{metric}", float(best_value))  # type: ignore[arg-type]
        client.set_tag(tracking.parent_run_id, "best_trial_id", best_trial)
    client.set_terminated(tracking.parent_run_id, "FINISHED" if ok else "FAILED")
