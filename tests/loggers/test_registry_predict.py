"""Inference from the model registry: fit registers a checkpoint on a real MLflow server, and
``predict --ckpt_path models:/<name>/<version>`` on 2 ranks gives the predictions of that checkpoint file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from itwinai_lightning import inference
from tests.helpers.childenv import child_env

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "foundation" / "tiny.yaml"
WRITER = "--trainer.callbacks+=itwinai_lightning.inference.ShardedPredictionWriter"

pytestmark = pytest.mark.timeout(600)


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "itwinai_lightning", *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=400)


def _predict(ckpt: str, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    args = ["predict", "--config", str(TINY), "--trainer.devices", "2", "--data.init_args.val_samples", "21"]
    return _cli([*args, "--trainer.default_root_dir", str(out), WRITER, "--ckpt_path", ckpt], out.parent, env)


def test_predict_from_a_registered_model_version(mlflow_server: Any, tmp_path: Path) -> None:
    env = child_env(
        {"MLFLOW_TRACKING_URI": mlflow_server.uri, "ITWINAI_LIGHTNING_CACHE": str(tmp_path / "cache")}
    )
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
        {
            "class_path": "itwinai_lightning.loggers.MLflowModelRegistry",
            "init_args": {"model_name": "denoiser-inf"},
        },
    ]
    extra = tmp_path / "registry.yaml"
    extra.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks, "enable_checkpointing": True}}))
    fit_dir = tmp_path / "fit"
    fit = _cli(
        ["fit", "--config", str(TINY), "--config", str(extra), "--trainer.max_epochs", "1",
         "--trainer.default_root_dir", str(fit_dir)],
        tmp_path, env,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    (version,) = MlflowClient(mlflow_server.uri).search_model_versions("name='denoiser-inf'")
    (ckpt,) = [
        p for p in (fit_dir / "latest" / "checkpoints").glob("*.ckpt") if p.name == Path(version.source).name
    ]

    from_file = _predict(str(ckpt), tmp_path / "file", env)
    assert from_file.returncode == 0, from_file.stderr[-3000:]
    uri = f"models:/denoiser-inf/{version.version}"
    from_registry = _predict(uri, tmp_path / "registry", env)
    assert from_registry.returncode == 0, from_registry.stderr[-3000:]
    assert f"ckpt_path {uri}: downloaded to {tmp_path / 'cache'}" in from_registry.stdout
    expected = inference.read(str(tmp_path / "file" / "latest" / "predictions"))
    got = inference.read(str(tmp_path / "registry" / "latest" / "predictions"))
    assert isinstance(got, torch.Tensor) and got.shape[0] == 21
    torch.testing.assert_close(got, expected, atol=0.0, rtol=0.0)  # the same weights, bit for bit
    index = json.loads((tmp_path / "registry" / "latest" / "predictions" / "index.json").read_text())
    assert (index["num_samples"], index["world_size"]) == (21, 2)

    again = _predict("models:/denoiser-inf/latest", tmp_path / "latest", env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "a cached copy reused from" in again.stdout  # said, not silent

    missing = _predict("models:/denoiser-inf/99", tmp_path / "missing", env)
    errors = [line for line in missing.stderr.splitlines() if line.startswith("itwinai-lightning: error:")]
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr[-2000:]
    assert len(errors) == 1 and "models:/denoiser-inf/99: not found on the MLflow server" in errors[0]
    assert not (tmp_path / "missing").exists()  # stopped before any Trainer or rank started
