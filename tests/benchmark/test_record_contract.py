"""Contract: the record a real fit writes (through the CLI) is what the report reads, figure for figure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_lightning import records
from itwinai_lightning.benchmark.report import build as report
from itwinai_lightning.records import derive

REPO = Path(__file__).resolve().parents[2]


def test_a_real_fit_record_feeds_the_report(tmp_path: Path, python_env: dict[str, str]) -> None:
    run_dir = tmp_path / "runs" / "fit"
    config = str(REPO / "configs" / "quickstart.yaml")
    cmd = [sys.executable, "-m", "itwinai_lightning", "fit", "--config", config,
           "--trainer.default_root_dir", str(run_dir), "--trainer.max_epochs", "3",
           "--trainer.enable_progress_bar", "false", "--data.num_samples", "256", "--data.val_samples", "64",
           "--trainer.callbacks+=TimingMonitor", "--trainer.callbacks+=GPUMonitor"]  # fmt: skip
    proc = subprocess.run(cmd, env=python_env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = records.load(run_dir)
    assert rec["status"] == "completed" and rec["stage"] == "fit" and len(rec["epochs"]) == 3
    # one shape per figure: every epoch figure is a number; spreads only under *_ranks
    for entry in rec["epochs"]:
        for key, value in entry.items():
            if key.endswith("_ranks"):
                assert set(value) == {"min", "mean", "max"}, key
            elif key != "metrics":
                assert isinstance(value, int | float), (key, value)

    built = report.build([tmp_path / "runs"], out=tmp_path / "report")
    (run,) = built.runs
    assert run.ok and run.workers == 1 and run.launcher == "local"
    assert run.epoch_time_s == pytest.approx(derive.mean(e["train_time_s"] for e in rec["epochs"][1:]))
    assert run.samples_per_s == pytest.approx(rec["summary"]["samples_per_s"])
    assert run.flops_per_s == pytest.approx(
        rec["summary"]["flops_per_sample"] * rec["summary"]["samples_per_s"]
    )
    assert run.mfu_pct is None  # a CPU has no entry in the peak table: no invented utilisation
    assert run.cpu_util_pct == pytest.approx(rec["summary"]["cpu_util_mean_pct"])
    assert run.monitor == "val_loss" and [p.epoch for p in run.accuracy] == [0, 1, 2]
    assert run.provenance["cpu"] == rec["cpu_model"] and run.provenance["parameters"] == rec["parameters"]
    (row,) = built.rows
    assert row.time_to_target_s == pytest.approx(
        next(p.elapsed_s for p in run.accuracy if p.metric <= rec["summary"]["best_metric"])
    )
    page = built.files["html"].read_text()
    assert rec["cpu_model"] in page
