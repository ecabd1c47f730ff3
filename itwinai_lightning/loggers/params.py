"""Hyperparameters as every backend stores them: secrets redacted, nested keys flattened to ``a.b.c``."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from itwinai_lightning.secrets import redact


def flatten_params(
    params: Mapping[str, Any] | argparse.Namespace, extra_secret_keys: Sequence[str] = ()
) -> dict:
    """Redact secrets, then flatten nested hyperparameters to ``a.b.c`` keys with JSON-safe values."""
    if isinstance(params, argparse.Namespace):
        params = vars(params)
    clean = redact(dict(params), extra_secret_keys)
    flat: dict[str, Any] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for key, sub in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), sub)
        elif isinstance(value, argparse.Namespace):
            visit(prefix, vars(value))
        elif value is None or isinstance(value, bool | int | float | str):
            flat[prefix] = value
        else:
            flat[prefix] = str(value)

    visit("", clean)
    return flat
