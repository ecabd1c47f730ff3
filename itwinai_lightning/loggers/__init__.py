"""Loggers. Imported by the CLI so short class names resolve in YAML; backends are imported when used."""

from itwinai_lightning.loggers.multi import MultiLogger
from itwinai_lightning.loggers.provenance import ProvenanceLogger
from itwinai_lightning.loggers.registry import MLflowModelRegistry

__all__ = ["MLflowModelRegistry", "MultiLogger", "ProvenanceLogger"]
