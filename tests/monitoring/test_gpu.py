"""On a real NVIDIA GPU (skipped where torch sees none): NVML readings, counter vs integral, utilisation."""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from itwinai_lightning import records
from itwinai_lightning.callbacks import GPUMonitor, TimingMonitor
from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser
from itwinai_lightning.monitoring.backends import TorchDevice, open_gpu_backend
from itwinai_lightning.monitoring.sampler import Sampler

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU with NVML"),
]


def _backend():
    backend, reason = open_gpu_backend(TorchDevice.of(0))
    assert backend is not None, reason
    return backend


def test_nvml_readings_are_sane() -> None:
    backend = _backend()
    try:
        reading = backend.read()
        assert 0 <= reading["gpu_util_pct"] <= 100
        assert 0 < reading["gpu_mem_used_gb"] < 1024
        assert 5 < reading["gpu_power_w"] < 2000
        assert 5 < reading["gpu_temp_c"] < 110
        assert 100 < reading["gpu_sm_clock_mhz"] < 5000
        assert backend.device_name  # e.g. "NVIDIA H100 80GB HBM3"
    finally:
        backend.close()


def test_counter_and_integrated_energy_agree_on_a_steady_load() -> None:
    backend = _backend()
    if "gpu_energy_j" not in backend.read():
        backend.close()
        pytest.skip("this GPU has no total-energy counter")
    a = torch.randn(8192, 8192, device="cuda")
    for _ in range(20):  # warm up to a steady clock and power
        a @ a
    torch.cuda.synchronize()
    sampler = Sampler([backend], interval_s=0.05)
    sampler.open("load")
    sampler.start()
    end = time.monotonic() + 15.0
    while time.monotonic() < end:
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()
    summary = sampler.cut("load")
    sampler.stop()
    assert sampler.energy.source == "counter"
    assert summary["gpu_util_mean_pct"] > 80
    assert summary["energy_wh"] > 0
    assert summary["integrated_energy_wh"] == pytest.approx(summary["energy_wh"], rel=0.10)
    assert summary["energy_wh"] == pytest.approx(
        summary["gpu_power_mean_w"] * summary["duration_s"] / 3600, rel=0.10
    )


def test_utilisation_rises_during_training(tmp_path: Path) -> None:
    backend = _backend()
    idle = Sampler([backend], interval_s=0.1)
    idle.open("idle")
    idle.start()
    time.sleep(2.0)
    idle_util = idle.cut("idle")["gpu_util_mean_pct"]
    idle.stop()

    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        accelerator="gpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        callbacks=[GPUMonitor(interval_s=0.1), TimingMonitor()],
    )
    data = SpectrogramDataModule(
        num_samples=8192, val_samples=256, batch_size=256, freq_bins=64, time_steps=64
    )
    trainer.fit(SpectrogramDenoiser(width=128, depth=8), data)
    rec = records.load(tmp_path)
    last = rec["epochs"][-1]
    assert last["gpu_util_mean_pct"] > idle_util + 10  # one number; the spread is in _ranks
    assert last["gpu_util_max_pct"] > 50
    assert last["energy_wh"] > 0 and rec["summary"]["energy_wh"] >= last["energy_wh"]
    assert rec["sections"]["device_monitor"]["backend"] == "nvml"
    assert rec["sections"]["device_monitor"]["energy_source"] in ("counter", "integrated", "mixed")
