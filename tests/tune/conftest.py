"""Helpers for the tune tests: run the real ``tune`` CLI (real local Ray, 2 CPUs, no dashboard)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.engines import require_module
from tests.loggers.conftest import mlflow_server  # noqa: F401 -- the real MLflow server fixture, shared

TINY = Path(__file__).with_name("tiny.yaml")


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A short Ray temp dir (Ray's socket paths must stay under ~107 characters)."""
    require_module("ray", 'pip install "itwinai-lightning[ray]"')
    path = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def tune_env(python_env: dict[str, str]) -> dict[str, str]:
    env = dict(python_env)
    env["RAY_AUTH_MODE"] = "disabled"
    env["TUNE_GLOBAL_CHECKPOINT_S"] = "1"
    env.pop("RAY_ADDRESS", None)
    return env


def write_search(path: Path, out: Path, ray_tmp: Path, **tune: Any) -> Path:
    section = {"output_dir": str(out), "seed": 0, "ray": {"num_cpus": 2, "temp_dir": str(ray_tmp)}, **tune}
    path.write_text(yaml.safe_dump({"tune": section}))
    return path


def tune_command(search: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "itwinai_lightning",
        "tune",
        "--config",
        str(TINY),
        "--config",
        str(search),
        *extra,
    ]


def run_tune(
    search: Path, env: dict[str, str], *extra: str, timeout: int = 400
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tune_command(search, *extra), env=env, capture_output=True, text=True, timeout=timeout
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_params(trial_dir: Path) -> list[dict[str, Any]]:
    lines = (trial_dir / "params.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]
