"""Engine availability for tests: skip locally when an engine is missing, FAIL under CI=true."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, what: str, how: str) -> None:
    """Skip (locally) or fail (CI=true) when an engine the test needs is missing."""
    if ok:
        return
    message = f"{what} is not available ({how})"
    if IN_CI:
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


def require_executable(name: str, how: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"'{name}'", how)
    assert path is not None
    return path


def require_module(name: str, how: str) -> None:
    require(importlib.util.find_spec(name) is not None, f"python module '{name}'", how)
