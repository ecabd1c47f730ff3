"""One real fit through the CLI to TensorBoard, MLflow (real server), W&B offline, yProv4ML and CSV.

Every backend is read back with its own reader; the registered model version is read back with
MlflowClient; the config's secrets must not appear in anything any backend stored.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import yaml

from itwinai_lightning.cli.run import run_lightning_cli
from tests.loggers.readers import tensorboard_scalars, tensorboard_texts, wandb_history

API_KEY = "sk-live-7f3a9c2e5b1d"
PASSWORD = "hunter2-9d8e7f"
STEPS = 8  # 64 samples / batch 16 = 4 steps per epoch, 2 epochs, log_every_n_steps 1


def _same_points(points: list[tuple[int, float]], truth: list[tuple[int, float]]) -> None:
    """The same steps, and the same values within float tolerance (pytest >= 9 compares no nested data)."""
    assert [step for step, _ in points] == [step for step, _ in truth]
    assert [value for _, value in points] == pytest.approx([value for _, value in truth])


def _config(
    run_dir: Path, uri: str, model_name: str, extra_callbacks: list[Any] | None = None
) -> dict[str, Any]:
    return {
        "seed_everything": 5,
        "trainer": {
            "default_root_dir": str(run_dir),
            "accelerator": "cpu",
            "max_epochs": 2,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "itwinai_lightning.loggers.MultiLogger",
                "init_args": {
                    "experiment": "e2e",
                    "flush_timeout_s": 20,
                    "retry_interval_s": 1,
                    "backends": [
                        "tensorboard",
                        "csv",
                        {"type": "mlflow", "tracking_uri": uri},
                        "wandb",
                        "prov",
                    ],
                },
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"monitor": "val_loss", "mode": "min"},
                },
                {
                    "class_path": "itwinai_lightning.loggers.MLflowModelRegistry",
                    "init_args": {"model_name": model_name, "tracking_uri": uri},
                },
                *(extra_callbacks or []),
            ],
        },
        "model": {
            "class_path": "tests.loggers.helpers.KeyedDenoiser",
            "init_args": {"width": 8, "depth": 2, "api_key": API_KEY, "service": {"password": PASSWORD}},
        },
        "data": {
            "class_path": "itwinai_lightning.demo.SpectrogramDataModule",
            "init_args": {"num_samples": 64, "val_samples": 32, "batch_size": 16},
        },
    }


def _fit(tmp_path: Path, config: dict[str, Any]) -> pl.Trainer:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return run_lightning_cli(["fit", "--config", str(path)]).trainer


def _csv_points(run_dir: Path, key: str) -> list[tuple[int, float]]:
    rows = csv.DictReader((run_dir / "metrics.csv").open())
    return [(int(r["step"]), float(r["value"])) for r in rows if r["key"] == key]


def _files_containing(root: Path, needle: str) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and path.suffix != ".ckpt" and needle.encode() in path.read_bytes():
            hits.append(path)
    return hits


@pytest.mark.core
@pytest.mark.usefixtures("wandb_offline")
def test_fit_fans_out_to_every_backend_and_registers_best_checkpoint(
    tmp_path: Path, mlflow_server: Any
) -> None:
    from mlflow.tracking import MlflowClient
    from prov.model import ProvDocument

    trainer = _fit(tmp_path, _config(tmp_path / "run", mlflow_server.uri, "denoiser-e2e"))
    run_dir = tmp_path / "run" / "version_0"  # the CLI run's own directory: every backend writes there
    assert Path(trainer.default_root_dir) == run_dir
    summary = json.loads((run_dir / "tracking_summary.json").read_text())
    assert {r["backend"]: (r["spooled"], r["healthy"]) for r in summary["backends"]} == {
        name: (0, True) for name in ("tensorboard", "csv", "mlflow", "wandb", "prov")
    }, summary
    truth = _csv_points(run_dir, "train_loss")
    assert [s for s, _ in truth] == list(range(STEPS))

    # TensorBoard
    scalars = tensorboard_scalars(run_dir / "tensorboard")
    _same_points(scalars["train_loss"], truth)
    assert len(scalars["val_loss"]) == 2
    # MLflow: metrics, params, artifacts
    client = MlflowClient(mlflow_server.uri)
    run_id = trainer.logger.backend_state("mlflow")["run_id"]  # type: ignore[union-attr]
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train_loss"))
    _same_points(history, truth)
    run = client.get_run(run_id)
    assert run.data.params["width"] == "8" and run.info.status == "FINISHED"
    assert run.data.params["api_key"] == "***REDACTED***"
    assert run.data.params["service.password"] == "***REDACTED***"
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")]
    # MLflow registry: the best checkpoint, its score and the config as tags
    ckpt = trainer.checkpoint_callback
    version = client.get_model_version("denoiser-e2e", "1")
    assert version.run_id == run_id
    assert version.tags["monitor"] == "val_loss"
    assert float(version.tags["val_loss"]) == pytest.approx(float(ckpt.best_model_score))  # type: ignore[union-attr]
    assert version.tags["checkpoint"] == Path(ckpt.best_model_path).name  # type: ignore[union-attr]
    assert version.tags["config.model.init_args.width"] == "8"
    assert version.tags["config.model.init_args.api_key"] == "***REDACTED***"
    # W&B offline files
    rows, config = wandb_history(run_dir)
    wandb_points = sorted((r["trainer/global_step"], r["train_loss"]) for r in rows if "train_loss" in r)
    _same_points(wandb_points, truth)
    assert config["width"] == 8 and config["api_key"] == "***REDACTED***"
    # yProv4ML PROV-JSON, parsed with the prov library
    prov_files = list((run_dir / "prov" / "rank0").glob("e2e_*/prov_e2e_GR0_*.json"))
    assert len(prov_files) == 1
    doc = ProvDocument.deserialize(str(prov_files[0]), format="json")
    text = prov_files[0].read_text()
    labels = {str(r.identifier) for r in doc.get_records()}
    assert any("train_loss" in label for label in labels), labels
    assert any("val_loss" in label for label in labels)
    metric_csv = next((prov_files[0].parent / "metrics_GR0").glob("train_loss_training_*.csv"))
    assert len(metric_csv.read_text().strip().splitlines()) - 1 == STEPS
    assert "validation" in text and "env.torch" in text
    # no secret anywhere: run dir (all backends' files) and the MLflow server's store
    for secret in (API_KEY, PASSWORD):
        assert _files_containing(run_dir, secret) == []
        assert _files_containing(mlflow_server.directory, secret) == []
        assert secret not in tensorboard_texts(run_dir / "tensorboard")


class _KillServerAt(pl.Callback):
    """Kills the MLflow server at one training step (an outage in the middle of a run)."""

    def __init__(self, server: Any, step: int) -> None:
        self.server, self.step = server, step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            threading.Thread(target=self.server.stop).start()


@pytest.mark.usefixtures("wandb_offline")
def test_mlflow_outage_mid_run_then_replay_delivers_every_point(
    tmp_path: Path, mlflow_server: Any, python_env: dict[str, str]
) -> None:
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    config = _config(run_dir, mlflow_server.uri, "denoiser-outage")
    config["trainer"]["logger"]["init_args"]["backends"] = [
        "csv",
        {"type": "mlflow", "tracking_uri": mlflow_server.uri},
    ]
    config["trainer"]["logger"]["init_args"]["flush_timeout_s"] = 5
    config["trainer"]["max_epochs"] = 3
    killer = _KillServerAt(mlflow_server, step=3)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = run_lightning_cli(["--config", str(path)], run=False)
    cli.trainer.callbacks.append(killer)
    cli.trainer.fit(cli.model, cli.datamodule)  # the run finishes despite the outage

    truth = _csv_points(run_dir, "train_loss")
    assert len(truth) == 12
    summary = json.loads((run_dir / "tracking_summary.json").read_text())
    mlflow_row = next(r for r in summary["backends"] if r["backend"] == "mlflow")
    assert mlflow_row["spooled"] > 0 and not mlflow_row["healthy"]
    assert (run_dir / "tracking_spool" / "registry.pending.json").exists()

    mlflow_server.start()  # the server comes back (same store, same port)
    done = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "logs", "replay", str(run_dir)],
        env=python_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mlflow:" in done.stdout and "0 remaining" in done.stdout

    client = MlflowClient(mlflow_server.uri)
    run_id = json.loads((run_dir / "tracking_spool" / "mlflow.meta.json").read_text())["state"]["run_id"]
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train_loss"))
    _same_points(history, truth)  # every point, once, in the same run
    assert len(client.get_metric_history(run_id, "val_loss")) == 3
    assert client.get_model_version("denoiser-outage", "1").tags["monitor"] == "val_loss"
    assert not (run_dir / "tracking_spool" / "mlflow.jsonl").exists()


def test_replay_bad_run_dir_is_one_line_exit_2(tmp_path: Path, python_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "logs", "replay", str(tmp_path / "missing")],
        env=python_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert (
        done.stderr.strip().count("\n") == 0 and "RUN_DIR" in done.stderr and "Traceback" not in done.stderr
    )
