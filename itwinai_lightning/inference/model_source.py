"""``ckpt_path: models:/<name>/<version>``: a checkpoint from the MLflow model registry, fetched per node.

:class:`~itwinai_lightning.loggers.registry.MLflowModelRegistry` registers a checkpoint file as a model
version. Here a ``models:/`` URI (a version number, ``latest`` or ``@alias``) becomes a local checkpoint
path: the version's file is downloaded from the tracking server (``MLFLOW_TRACKING_URI``, credentials from
MLflow's usual variables) into ``$ITWINAI_LIGHTNING_CACHE`` (default ``~/.cache/itwinai-lightning``) and
reused from there by every later run and every rank on the node.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from itwinai_lightning.errors import UserError

PREFIX = "models:/"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+|latest)|@(?P<alias>[\w-]+))$")


def is_registry_uri(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def cache_root() -> Path:
    default = Path.home() / ".cache" / "itwinai-lightning"
    return Path(os.environ.get("ITWINAI_LIGHTNING_CACHE") or default) / "models"


def _redacted(uri: str) -> str:
    return re.sub(r"//[^/@]+@", "//***@", uri)


def fetch_checkpoint(uri: str, tracking_uri: str | None = None) -> tuple[Path, bool]:
    """The local checkpoint for ``uri`` and whether it was downloaded now (``False``: a cached copy)."""
    match = _URI.match(uri)
    if match is None:
        forms = "models:/<name>/<version>, models:/<name>/latest or models:/<name>@<alias>"
        raise UserError(f"ckpt_path {uri!r}: write {forms}")
    from itwinai_lightning.errors import require

    require("mlflow", "mlflow")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    from mlflow import get_tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri)
    where = _redacted(tracking_uri or get_tracking_uri())
    name = match["name"]
    try:
        if match["alias"]:
            version = client.get_model_version_by_alias(name, match["alias"])
        elif match["version"] == "latest":
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise UserError(f"ckpt_path {uri}: registered model '{name}' has no versions on {where}")
            version = max(versions, key=lambda v: int(v.version))
        else:
            version = client.get_model_version(name, match["version"])
    except MlflowException as err:
        reason = str(err).splitlines()[0]
        raise UserError(f"ckpt_path {uri}: not found on the MLflow server {where} ({reason})") from None
    except OSError as err:
        raise UserError(f"ckpt_path {uri}: cannot reach the MLflow server {where} ({err})") from None
    filename = Path(str(version.source)).name
    target = cache_root() / name / str(version.version)
    if (target / filename).is_file():
        return target / filename, False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version.version}-", dir=target.parent))
    try:
        from mlflow.artifacts import download_artifacts

        download_artifacts(artifact_uri=version.source, dst_path=str(staging), tracking_uri=tracking_uri)
        try:
            os.replace(staging, target)  # atomic: another rank may have won the race, then use its copy
        except OSError:
            if not (target / filename).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not (target / filename).is_file():
        raise UserError(f"ckpt_path {uri}: version {version.version} holds no file {filename!r} on {where}")
    return target / filename, True
