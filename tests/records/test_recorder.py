"""The RunRecord's one writer, per-stage records, model FLOPs / MFU and time to accuracy, in real fits."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from itwinai_lightning import records
from itwinai_lightning.callbacks import TimingMonitor
from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser
from itwinai_lightning.records import derive, peaks, store

pytestmark = pytest.mark.core  # runs on every supported Python (nox -s installed-3.N)

TINY_DATA = {"num_samples": 128, "val_samples": 32, "batch_size": 16}


def _trainer(run_dir: Path, callbacks: list[Any], epochs: int = 2, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=run_dir, max_epochs=epochs, accelerator="cpu", devices=1,
        logger=CSVLogger(run_dir, name="csv"), callbacks=callbacks, enable_progress_bar=False,
        enable_model_summary=False, **kwargs,
    )  # fmt: skip


class TwoLinear(pl.LightningModule):
    """64 -> 32 -> 8 without bias: per sample, forward 2*(64*32 + 32*8) FLOPs; backward the weight
    gradients of both layers and the input gradient of the second (the data needs no gradient)."""

    FLOPS_PER_SAMPLE = 2 * (64 * 32 + 32 * 8) + 2 * (64 * 32 + 32 * 8) + 2 * 32 * 8

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32, bias=False), nn.ReLU(), nn.Linear(32, 8, bias=False))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _linear_data(samples: int = 96, batch: int = 12) -> DataLoader[Any]:
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(samples, 64, generator=gen), torch.randn(samples, 8, generator=gen))
    return DataLoader(data, batch_size=batch)


def test_flops_per_sample_are_counted_exactly_and_mfu_uses_the_peak(tmp_path: Path) -> None:
    peak = 5e9  # one "device" of 5 GFLOP/s: the CPU has no entry in the peak table
    timing = TimingMonitor(peak_flops_per_s=peak)
    _trainer(tmp_path, [timing], epochs=2, enable_checkpointing=False).fit(TwoLinear(), _linear_data())
    assert timing.flops_per_sample == TwoLinear.FLOPS_PER_SAMPLE
    rec = records.load(tmp_path)
    summary = rec["summary"]
    assert summary["flops_per_sample"] == TwoLinear.FLOPS_PER_SAMPLE
    assert summary["peak_flops_per_s"] == peak
    assert summary["flops_per_s"] == pytest.approx(TwoLinear.FLOPS_PER_SAMPLE * summary["samples_per_s"])
    assert summary["mfu_pct"] == pytest.approx(100 * summary["flops_per_s"] / peak)
    for epoch in rec["epochs"]:
        assert epoch["steps"] == 8  # the counted step is a step, though not a timed one
        assert epoch["flops_per_s"] == pytest.approx(TwoLinear.FLOPS_PER_SAMPLE * epoch["samples_per_s"])
        assert epoch["mfu_pct"] == pytest.approx(100 * epoch["flops_per_s"] / peak)
    with open(next(tmp_path.glob("csv/version_*/metrics.csv"))) as fh:
        logged = [float(r["timing/mfu_pct"]) for r in csv.DictReader(fh) if r.get("timing/mfu_pct")]
    assert logged == pytest.approx([e["mfu_pct"] for e in rec["epochs"]])


def test_peak_table_knows_the_hpc_accelerators() -> None:
    assert peaks.peak_flops_per_s("NVIDIA H200", "bf16-mixed") == 989e12
    assert peaks.peak_flops_per_s("NVIDIA A100-SXM4-80GB", "32-true") == 19.5e12
    assert peaks.peak_flops_per_s("NVIDIA A100-SXM4-80GB", "32-true", tf32=True) == 156e12
    assert peaks.peak_flops_per_s("NVIDIA H100 PCIe", "16-mixed") == 756e12
    assert peaks.peak_flops_per_s("NVIDIA H100 80GB HBM3", "bf16-true") == 989e12
    assert peaks.peak_flops_per_s("AMD Instinct MI250X", "bf16-mixed") == 383e12
    assert peaks.peak_flops_per_s("AMD Instinct MI300X", "32-true") == 163.4e12
    assert peaks.peak_flops_per_s("Intel Xeon", "32-true") is None


def test_time_to_accuracy_follows_the_checkpointed_metric(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(monitor="val_psnr", mode="max")  # the user watches PSNR, higher is better
    _trainer(tmp_path, [TimingMonitor(), checkpoint], epochs=3).fit(
        SpectrogramDenoiser(width=8, depth=2), SpectrogramDataModule(**TINY_DATA)
    )
    rec = records.load(tmp_path)
    assert (rec["summary"]["monitor"], rec["summary"]["monitor_mode"]) == ("val_psnr", "max")
    psnr = [e["metrics"]["val_psnr"] for e in rec["epochs"]]
    assert len(psnr) == 3 and rec["summary"]["best_metric"] == max(psnr)
    assert checkpoint.best_model_score is not None
    assert rec["summary"]["best_metric"] == pytest.approx(float(checkpoint.best_model_score))
    assert all("timing/wall_time_s" not in e["metrics"] for e in rec["epochs"])  # only the module's
    curve = derive.accuracy_curve(rec)
    assert [p.epoch for p in curve] == [0, 1, 2] and [p.metric for p in curve] == psnr
    elapsed = [p.elapsed_s for p in curve]
    assert elapsed == sorted(elapsed) and elapsed[-1] <= rec["summary"]["fit_wall_time_s"]
    reached = derive.time_to_target(curve, max(psnr), mode="max")
    assert reached is not None and reached.epoch == psnr.index(max(psnr))
    assert derive.time_to_target(curve, max(psnr) + 1.0, mode="max") is None  # never reached


def test_one_writer_saves_at_setup_each_epoch_end_and_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saves: list[tuple[str, int]] = []
    real_save = store.save

    def counting_save(record: Any, run_dir: Any, stage: str | None = None) -> Path:
        saves.append((str(record.get("status")), len(record.get("epochs", []))))
        return real_save(record, run_dir, stage)

    monkeypatch.setattr(store, "save", counting_save)
    from itwinai_lightning.callbacks import GPUMonitor

    trainer = _trainer(tmp_path, [GPUMonitor(interval_s=0.05), TimingMonitor()], epochs=3)
    trainer.fit(SpectrogramDenoiser(width=8, depth=2), SpectrogramDataModule(**TINY_DATA))
    # once at setup, once per epoch end (both callbacks' figures in one write), once at the end
    assert saves == [("running", 0), ("running", 1), ("running", 2), ("running", 3), ("completed", 3)]
    assert not list(tmp_path.glob(".run_record.*"))  # atomic: no temp file left behind
    rec = records.load(tmp_path)
    assert all("cpu_util_mean_pct" in e and "train_time_s" in e for e in rec["epochs"])


def test_validate_and_test_write_their_own_records_beside_the_fit(tmp_path: Path) -> None:
    model, data = SpectrogramDenoiser(width=8, depth=2), SpectrogramDataModule(**TINY_DATA)
    _trainer(tmp_path, [TimingMonitor()], epochs=1).fit(model, data)
    fit_before = records.load(tmp_path)
    trainer = _trainer(tmp_path, [TimingMonitor()], epochs=1)
    trainer.validate(model, data)
    trainer.test(model, data)
    fit_after = records.load(tmp_path)
    assert fit_after == fit_before  # untouched, still completed
    for stage in ("validate", "test"):
        rec = store.load(store.record_path(tmp_path, stage))
        assert (rec["stage"], rec["status"], rec["error"]) == (stage, "completed", None)
        assert rec["run_id"] != fit_before["run_id"] and rec["epochs"] == []
        assert rec["summary"]["wall_time_s"] > 0
        assert f"{'val' if stage == 'validate' else 'test'}_loss" in rec["summary"]["metrics"]


def test_a_failing_validate_is_recorded_as_failed_in_its_own_record(tmp_path: Path) -> None:
    class Broken(SpectrogramDenoiser):
        def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            raise RuntimeError("validation broke")

    with pytest.raises(RuntimeError, match="validation broke"):
        _trainer(tmp_path, [TimingMonitor()]).validate(
            Broken(width=8, depth=2), SpectrogramDataModule(**TINY_DATA)
        )
    rec = store.load(store.record_path(tmp_path, "validate"))
    assert rec["status"] == "failed" and rec["error"] == "RuntimeError: validation broke"
    assert not store.record_path(tmp_path).exists()


def test_the_file_is_readable_summary_first_and_rounded(tmp_path: Path) -> None:
    import json
    import re

    _trainer(tmp_path, [TimingMonitor()], epochs=1).fit(
        SpectrogramDenoiser(width=8, depth=2), SpectrogramDataModule(**TINY_DATA)
    )
    text = store.record_path(tmp_path).read_text()
    keys = list(json.loads(text))
    assert keys[: keys.index("summary") + 1] == [
        "schema_version",
        "stage",
        "status",
        "error",
        "run_dir",
        "summary",
    ]
    digits = [len(m.replace(".", "").strip("0")) for m in re.findall(r"\d+\.\d+", text)]
    assert digits and max(digits) <= store.DIGITS  # no 17-digit floats


@pytest.mark.gpu
def test_mfu_on_a_gpu_uses_the_peak_table(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    name = torch.cuda.get_device_name(0)
    peak = peaks.device_peak_flops_per_s(torch.device("cuda", 0), "bf16-mixed")
    if peak is None:
        pytest.skip(f"{name} is not in the peak table")
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=2, accelerator="gpu", devices=1, precision="bf16-mixed",
        callbacks=[TimingMonitor()], logger=False, enable_progress_bar=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(
        SpectrogramDenoiser(width=64, depth=6),
        SpectrogramDataModule(num_samples=4096, val_samples=256, batch_size=256),
    )
    summary = records.load(tmp_path)["summary"]
    assert summary["peak_flops_per_s"] == peak
    assert 0 < summary["mfu_pct"] < 100
    assert summary["mfu_pct"] == pytest.approx(100 * summary["flops_per_s"] / peak)


def test_a_warm_process_keeps_only_its_newest_recorders(tmp_path: Path) -> None:
    from itwinai_lightning.records import recorder

    made = [recorder.Recorder(tmp_path / f"trial{n}") for n in range(3 * recorder.KEEP_LATEST)]
    assert len(recorder._LATEST) <= recorder.KEEP_LATEST  # trial after trial, no growth
    newest = made[-1]
    recorder.contribute_to_run_dir(newest.run_dir, "tracking", {"delivered": 7})
    assert store.load(newest.run_dir)["sections"]["tracking"] == {"delivered": 7}  # still the live one


def test_nothing_is_set_on_the_trainer(tmp_path: Path) -> None:
    """The recorders, facts and placement are kept beside the Trainer, never as attributes on it."""
    from itwinai_lightning import per_trainer

    trainer = _trainer(tmp_path, [TimingMonitor()], epochs=1)
    before = set(vars(trainer))
    trainer.fit(SpectrogramDenoiser(width=8, depth=2), SpectrogramDataModule(**TINY_DATA))
    added = {name for name in set(vars(trainer)) - before if "itwinai" in name}
    assert added == set()
    assert set(per_trainer.get(trainer, per_trainer.RECORDERS)) == {"fit"}
    assert per_trainer.get(trainer, per_trainer.FACTS)["parameters"] > 0
