"""Tracking backends for the MultiLogger; each imports its library lazily (never at package import).

``build_backend`` turns a YAML entry into a backend: a short name (``"mlflow"``) or a mapping
``{type: mlflow, tracking_uri: ..., ranks: zero|all}``; ``type`` may also be ``package.module:Class``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from itwinai_lightning.errors import UserError
from itwinai_lightning.loggers.backends.base import Backend, PermanentError, Record, RunContext

#: short name -> "module:Class" (imported only when a backend of that type is built)
BACKENDS: dict[str, str] = {
    "tensorboard": "itwinai_lightning.loggers.backends.tensorboard:TensorBoardBackend",
    "mlflow": "itwinai_lightning.loggers.backends.mlflow:MLflowBackend",
    "wandb": "itwinai_lightning.loggers.backends.wandb:WandbBackend",
    "prov": "itwinai_lightning.loggers.backends.prov:ProvBackend",
    "csv": "itwinai_lightning.loggers.backends.csv:CSVBackend",
}


def _resolve(type_name: str) -> type[Backend]:
    target = BACKENDS.get(type_name, type_name)
    if ":" not in target:
        known = ", ".join(BACKENDS)
        raise UserError(f"logger backend type {type_name!r} is unknown; use one of {known} or 'module:Class'")
    module_name, _, cls_name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise UserError(f"logger backend type {type_name!r}: cannot import {target} ({err})") from err
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise UserError(f"logger backend type {type_name!r}: {target} is not a Backend subclass")
    return cls


def build_backend(spec: str | Mapping[str, Any] | Backend) -> Backend:
    """A backend from its YAML form (``"csv"`` or ``{"type": "mlflow", ...}``) or an instance."""
    if isinstance(spec, Backend):
        return spec
    if isinstance(spec, str):
        spec = {"type": spec}
    options = dict(spec)
    type_name = options.pop("type", None)
    if not type_name:
        raise UserError(
            f"logger backend {dict(spec)!r} has no 'type'; e.g. {{type: mlflow, tracking_uri: ...}}"
        )
    cls = _resolve(str(type_name))
    try:
        return cls(**options)
    except TypeError as err:
        raise UserError(f"logger backend {type_name!r}: bad option ({err})") from err


__all__ = ["BACKENDS", "Backend", "PermanentError", "Record", "RunContext", "build_backend"]
