"""Loggers. Names resolve lazily, so the tracking process can import backends without Lightning.

The CLI imports the modules themselves (see ``cli._register_short_names``) so short class names resolve
in YAML; backends import their libraries when used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from itwinai_lightning.loggers.multi import MultiLogger
    from itwinai_lightning.loggers.provenance import ProvenanceLogger
    from itwinai_lightning.loggers.registry import MLflowModelRegistry

_WHERE = {
    "MultiLogger": "itwinai_lightning.loggers.multi",
    "ProvenanceLogger": "itwinai_lightning.loggers.provenance",
    "MLflowModelRegistry": "itwinai_lightning.loggers.registry",
}

__all__ = ["MLflowModelRegistry", "MultiLogger", "ProvenanceLogger"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
