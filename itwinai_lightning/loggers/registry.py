"""MLflowModelRegistry: on fit end, register the best checkpoint as an MLflow model version."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from itwinai_lightning.loggers.spool import spool_dir

log = logging.getLogger(__name__)

PENDING_FILENAME = "registry.pending.json"
_MAX_CONFIG_TAGS = 100
_MAX_TAG_LEN = 5000


class MLflowModelRegistry(Callback):
    """Registers ``ModelCheckpoint``'s best checkpoint as a version of ``model_name`` when fit ends (rank 0).

    The checkpoint file is uploaded as an artifact (``checkpoints/<file>``) of the MultiLogger's MLflow run
    (or of a new run) and registered from there: no model flavour, no slow pip-requirement inference.

    ========================  =====================================================  ============
    Model version tag         Value                                                  Unit
    ========================  =====================================================  ============
    ``monitor``               the monitored metric name (e.g. ``val_loss``)          text
    ``<monitor>``             best score of that metric                              as logged
    ``checkpoint``            checkpoint file name                                   text
    ``config.<a.b.c>``        resolved config leaves (secrets redacted, first 100)   as given
    ``config_yaml``           resolved config as YAML (redacted, <= 5000 chars)      text
    ========================  =====================================================  ============

    If the server cannot be reached, training is not affected: the request is written to
    ``<run_dir>/tracking_spool/registry.pending.json`` and ``logs replay`` registers it later.
    """

    def __init__(
        self,
        model_name: str,
        tracking_uri: str | None = None,
        experiment: str = "itwinai",
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.tags = dict(tags or {})
        self.version: Any = None

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        request = self._request(trainer, pl_module)
        if request is None:
            log.warning(
                "MLflowModelRegistry: no checkpoint was saved (add a ModelCheckpoint); nothing registered"
            )
            return
        try:
            self.version = register(request)
            log.info("registered %s version %s", self.model_name, self.version.version)
        except Exception as err:  # tracking never kills training
            path = spool_dir(trainer.default_root_dir) / PENDING_FILENAME
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(request, indent=2))
            log.warning(
                "MLflowModelRegistry: could not register (%s); saved to %s for 'logs replay'", err, path
            )

    def _request(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any] | None:
        from itwinai_lightning.loggers.backends.mlflow import default_tracking_uri, normalise_uri
        from itwinai_lightning.loggers.multi import MultiLogger, flatten_params

        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") or getattr(ckpt, "last_model_path", "")
        if not best or not os.path.exists(best):
            return None
        score = getattr(ckpt, "best_model_score", None)
        monitor = getattr(ckpt, "monitor", None)
        run_dir = Path(trainer.default_root_dir)
        state: dict[str, Any] = {}
        for logger in trainer.loggers:
            if isinstance(logger, MultiLogger) and not state:
                state = logger.backend_state("mlflow")
        uri = self.tracking_uri or state.get("tracking_uri") or default_tracking_uri(str(run_dir))
        config_file = run_dir / "config.yaml"
        if config_file.exists():
            import yaml

            config = yaml.safe_load(config_file.read_text()) or {}
        else:
            config = dict(pl_module.hparams)
        flat = flatten_params(config)
        tags = {**self.tags, "checkpoint": os.path.basename(best)}
        if monitor:
            tags["monitor"] = str(monitor)
            if score is not None:
                tags[str(monitor)] = repr(float(score))
        for key in list(flat)[:_MAX_CONFIG_TAGS]:
            tags[f"config.{key}"] = str(flat[key])[:_MAX_TAG_LEN]
        import yaml

        tags["config_yaml"] = yaml.safe_dump(flatten_params(config), sort_keys=True)[:_MAX_TAG_LEN]
        same_server = state.get("run_id") and normalise_uri(str(state.get("tracking_uri"))) == normalise_uri(
            uri
        )
        return {
            "model_name": self.model_name,
            "tracking_uri": normalise_uri(uri),
            "experiment": self.experiment,
            "run_id": state.get("run_id") if same_server else None,
            "checkpoint": os.path.abspath(best),
            "tags": tags,
        }


def register(request: dict[str, Any]) -> Any:
    """Upload the checkpoint, create the model version described by ``request``; return it."""
    from itwinai_lightning.errors import require

    require("mlflow", "mlflow")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    client = MlflowClient(tracking_uri=request["tracking_uri"])
    run_id = request.get("run_id")
    if not run_id:
        exp = client.get_experiment_by_name(request["experiment"])
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(request["experiment"])
        run_id = client.create_run(exp_id, run_name=f"register-{request['model_name']}").info.run_id
        client.set_terminated(run_id)
    client.log_artifact(run_id, request["checkpoint"], "checkpoints")
    artifact_uri = client.get_run(run_id).info.artifact_uri
    try:
        client.create_registered_model(request["model_name"])
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
            raise
    source = f"{artifact_uri}/checkpoints/{os.path.basename(request['checkpoint'])}"
    return client.create_model_version(
        request["model_name"], source=source, run_id=run_id, tags=request["tags"]
    )
