"""The callbacks in a plain Trainer, through the CLI, and in a real 2-process DDP run (gloo, CPU)."""

from __future__ import annotations

import csv
import logging
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger

from itwinai_lightning import records
from itwinai_lightning.callbacks import GPUMonitor, TimingMonitor
from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser
from itwinai_lightning.monitoring.backends import DeviceBackend, HostBackend
from tests.monitoring.fake_device import ScriptedDevice

REPO = Path(__file__).resolve().parents[2]
TINY_DATA = {"num_samples": 128, "val_samples": 32, "batch_size": 16}
TINY_MODEL = {"width": 8, "depth": 2}


class ScriptedGPUMonitor(GPUMonitor):
    """GPUMonitor with a scripted 150 W device in place of NVML (no GPU here)."""

    def _make_backends(self, trainer: pl.Trainer) -> list[DeviceBackend]:
        self.gpu = ScriptedDevice(time.monotonic, lambda t: 150.0, util=lambda t: 40.0)
        return [self.gpu, HostBackend()]


def _trainer(run_dir: Path, callbacks: list[Any], epochs: int = 2) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=run_dir,
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(run_dir, name="csv"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )


def _check_epoch_timing(epoch: dict[str, Any], steps: int, samples: int, ranks: int) -> None:
    assert epoch["ranks"] == ranks
    assert epoch["steps"] == steps
    assert epoch["samples"] == samples
    assert 0 < epoch["train_time_s"] <= epoch["wall_time_s"]
    assert epoch["samples_per_s"] == pytest.approx(samples / epoch["train_time_s"])
    assert 0 < epoch["step_time_p50_s"] <= epoch["step_time_p90_s"] <= epoch["step_time_p99_s"]
    # steps (incl. data loading) fill the training time, but cannot exceed it; the step run under the FLOP
    # counter (the first) is left out of the step times, so steps - 1 of them are in the mean
    assert epoch["step_time_mean_s"] * (steps - 1) <= epoch["train_time_s"] * 1.001
    wall = epoch["wall_time_s_ranks"]
    assert wall["min"] <= wall["mean"] <= wall["max"] == epoch["wall_time_s"]


def test_plain_trainer_records_timing_energy_and_host_figures(tmp_path: Path) -> None:
    handler_records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = handler_records.append  # type: ignore[method-assign]
    rz_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rz_logger.addHandler(handler)
    try:
        plain = GPUMonitor(interval_s=0.05)
        _trainer(tmp_path / "plain", [plain, TimingMonitor()], epochs=1).fit(
            SpectrogramDenoiser(**TINY_MODEL), SpectrogramDataModule(**TINY_DATA)
        )
    finally:
        rz_logger.removeHandler(handler)
    info = [r.getMessage() for r in handler_records if "GPUMonitor" in r.getMessage()]
    assert len(info) == 1 and "CPU utilisation and host memory" in info[0]
    rec = records.load(tmp_path / "plain")
    assert rec["status"] == "completed" and rec["error"] is None
    (epoch,) = rec["epochs"]
    _check_epoch_timing(epoch, steps=8, samples=128, ranks=1)
    assert 0 < epoch["cpu_util_mean_pct"] <= 100
    assert 0.05 < epoch["host_mem_max_gb"] < 64  # this process's RSS: torch alone is > 50 MiB
    assert "energy_wh" not in epoch  # no power source on a CPU run: no invented energy
    assert rec["sections"]["device_monitor"]["backend"] == "psutil"
    assert rec["global_batch_size"] == 16

    # the same with a scripted 150 W device: energy flows through to the record and the loggers
    scripted = ScriptedGPUMonitor(interval_s=0.05)
    run_dir = tmp_path / "scripted"
    timing = TimingMonitor()
    _trainer(run_dir, [scripted, timing]).fit(
        SpectrogramDenoiser(**TINY_MODEL), SpectrogramDataModule(**TINY_DATA)
    )
    rec = records.load(run_dir)
    assert [e["epoch"] for e in rec["epochs"]] == [0, 1]
    for epoch in rec["epochs"]:
        _check_epoch_timing(epoch, steps=8, samples=128, ranks=1)
        # the monitor's epoch window is the timing epoch (both cut at epoch start/end hooks)
        assert epoch["energy_wh"] == pytest.approx(150.0 * epoch["wall_time_s"] / 3600.0, rel=0.1)
        # one shape per figure: a number, and the spread across ranks beside it
        assert epoch["gpu_util_mean_pct"] == 40.0
        assert epoch["gpu_util_mean_pct_ranks"] == {"min": 40.0, "mean": 40.0, "max": 40.0}
        assert epoch["gpu_power_mean_w"] == pytest.approx(150.0)
    summary = rec["summary"]
    assert summary["total_samples"] == 256 and summary["epochs_completed"] == 2
    assert 0 < summary["time_to_first_step_s"] < summary["fit_wall_time_s"]
    assert summary["energy_wh"] >= sum(e["energy_wh"] for e in rec["epochs"])  # run includes setup
    assert summary["energy_wh"] == pytest.approx(150.0 * summary["fit_wall_time_s"] / 3600.0, rel=0.2)
    assert summary["energy_per_sample_wh"] == pytest.approx(summary["energy_wh"] / 256)
    assert rec["sections"]["device_monitor"]["energy_source"] == "integrated"
    assert scripted.gpu is not None and scripted.gpu.closed  # sampler stopped at teardown

    with open(next(run_dir.glob("csv/version_*/metrics.csv"))) as fh:
        rows = list(csv.DictReader(fh))
    monitor_rows = [r for r in rows if r.get("monitor/energy_wh")]
    timing_rows = [r for r in rows if r.get("timing/step_time_p50_s")]
    assert len(monitor_rows) == 2 and len(timing_rows) == 2  # once per epoch, not per step
    assert [float(r["epoch"]) for r in timing_rows] == [0.0, 1.0]
    assert float(monitor_rows[0]["monitor/gpu_power_mean_w"]) == pytest.approx(150.0)

    # a second fit in the same directory starts a fresh record instead of merging epochs
    _trainer(run_dir, [TimingMonitor()], epochs=1).fit(
        SpectrogramDenoiser(**TINY_MODEL), SpectrogramDataModule(**TINY_DATA)
    )
    again = records.load(run_dir)
    assert again["run_id"] != rec["run_id"] and len(again["epochs"]) == 1


class Exploding(SpectrogramDenoiser):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.current_epoch == 1 and batch_idx == 2:
            raise RuntimeError("loss went NaN at step 2")
        return super().training_step(batch, batch_idx)


def test_failed_fit_is_recorded_with_its_error(tmp_path: Path) -> None:
    monitor = GPUMonitor(interval_s=0.05)
    with pytest.raises(RuntimeError, match="NaN"):
        _trainer(tmp_path, [monitor, TimingMonitor()]).fit(
            Exploding(**TINY_MODEL), SpectrogramDataModule(**TINY_DATA)
        )
    rec = records.load(tmp_path)
    assert rec["status"] == "failed"
    assert rec["error"] == "RuntimeError: loss went NaN at step 2"
    assert len(rec["epochs"]) == 1 and rec["summary"]["epochs_completed"] == 1
    assert monitor.sampler is None  # thread stopped on the exception


def _config(run_dir: Path, **trainer: Any) -> dict[str, Any]:
    return {
        "seed_everything": 1,
        "trainer": {
            "default_root_dir": str(run_dir),
            "accelerator": "cpu",
            "max_epochs": 2,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "enable_checkpointing": False,
            "logger": False,
            **trainer,
        },
        "model": {"class_path": "itwinai_lightning.demo.SpectrogramDenoiser", "init_args": TINY_MODEL},
        "data": {"class_path": "itwinai_lightning.demo.SpectrogramDataModule", "init_args": TINY_DATA},
    }


def test_cli_short_names_with_plus_equals(tmp_path: Path) -> None:
    from itwinai_lightning.cli.run import run_lightning_cli

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path / "run", devices=1, max_epochs=1)))
    run_lightning_cli(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.callbacks+=GPUMonitor",
            "--trainer.callbacks+=TimingMonitor",
        ]
    )
    rec = records.load(tmp_path / "run")
    assert rec["status"] == "completed"
    assert rec["config"]["model"]["init_args"]["width"] == 8  # the CLI's section and ours in one record
    paths = [c["class_path"] for c in rec["config"]["trainer"]["callbacks"]]
    assert [p.rsplit(".", 1)[-1] for p in paths] == ["GPUMonitor", "TimingMonitor"]
    assert all(p.startswith("itwinai_lightning.callbacks.") for p in paths)
    _check_epoch_timing(rec["epochs"][0], steps=8, samples=128, ranks=1)
    assert rec["epochs"][0]["cpu_util_mean_pct"] > 0


@pytest.mark.core
def test_ddp_two_processes_through_the_cli_yaml(tmp_path: Path, python_env: dict[str, str]) -> None:
    run_dir = tmp_path / "ddp"
    config = _config(
        run_dir,
        devices=2,
        strategy="ddp",
        callbacks=[
            {"class_path": "GPUMonitor", "init_args": {"interval_s": 0.1}},
            {"class_path": "TimingMonitor"},
        ],
    )
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "fit", "--config", str(path)],
        cwd=tmp_path,
        env=python_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("GPUMonitor: no GPU monitoring") + proc.stdout.count("GPUMonitor: no GPU") == 1
    rec = records.load(run_dir)
    assert rec["status"] == "completed"
    assert rec["world_size"] == 2 and rec["strategy"] == "DDPStrategy"
    assert rec["hostnames"] == [platform.node()]  # gathered from both ranks, deduplicated
    assert rec["global_batch_size"] == 32  # 16 per rank x 2 ranks
    assert [e["epoch"] for e in rec["epochs"]] == [0, 1]
    for epoch in rec["epochs"]:
        # each rank sees half the data (DistributedSampler): 4 steps of 16; samples summed over ranks
        _check_epoch_timing(epoch, steps=4, samples=128, ranks=2)
        for key in (
            "step_time_p50_s_ranks",
            "train_time_s_ranks",
            "cpu_util_mean_pct_ranks",
            "host_mem_max_gb_ranks",
        ):
            stats = epoch[key]
            assert stats["min"] <= stats["mean"] <= stats["max"], key
        assert epoch["samples_ranks"]["min"] >= 1  # both ranks' samplers delivered readings
        assert epoch["host_mem_max_gb"] == epoch["host_mem_max_gb_ranks"]["max"]
    summary = rec["summary"]
    assert summary["total_samples"] == 256 and summary["cpu_util_mean_pct"] > 0
    assert rec["sections"]["device_monitor"]["run"]["ranks"] == 2
