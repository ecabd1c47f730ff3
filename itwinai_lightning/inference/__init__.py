"""Distributed batch inference: a sharded prediction writer, its reader, and models from the MLflow registry.

Importing this package imports neither Lightning nor MLflow; the names load on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ShardedPredictionWriter", "read"]


def read(directory: str) -> Any:
    """All predictions a :class:`ShardedPredictionWriter` wrote to ``directory``, in input order."""
    from itwinai_lightning.inference.layout import read as _read

    return _read(directory)


def __getattr__(name: str) -> Any:
    if name == "ShardedPredictionWriter":
        from itwinai_lightning.inference.writer import ShardedPredictionWriter

        return ShardedPredictionWriter
    raise AttributeError(name)
