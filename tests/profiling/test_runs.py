"""Real py-spy and torch.profiler on real training runs: 2-rank DDP, data-bound, compute-bound, no ptrace."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from itwinai_lightning import records
from tests.helpers.engines import require_executable

ROOT = Path(__file__).resolve().parents[2]
PYSPY_HOW = "pip install py-spy (and ptrace permission: root or CAP_SYS_PTRACE)"

DDP_CONFIG = """
seed_everything: 1
trainer:
  default_root_dir: {run_dir}
  accelerator: cpu
  devices: 2
  strategy: ddp
  max_epochs: 1
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: PySpyProfiler
      init_args: {{start_step: 2, num_steps: 40, rate_hz: 100}}
    - class_path: TorchProfilerBreakdown
      init_args: {{skip_steps: 2, warmup_steps: 1, active_steps: 3}}
model:
  class_path: itwinai_lightning.demo.SpectrogramDenoiser
  init_args: {{width: 8, depth: 3}}
data:
  class_path: itwinai_lightning.demo.SpectrogramDataModule
  init_args: {{num_samples: 800, val_samples: 16, batch_size: 8, num_workers: 1}}
"""


def test_two_rank_ddp_per_rank_outputs_summary_and_report(tmp_path: Path, python_env: dict[str, str]) -> None:
    require_executable("py-spy", PYSPY_HOW)
    run_dir = tmp_path / "run"
    config = tmp_path / "ddp.yaml"
    config.write_text(DDP_CONFIG.format(run_dir=run_dir))
    proc = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "fit", "--config", str(config)],
        cwd=ROOT,
        env=python_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = run_dir / "version_0"  # both ranks' outputs in the run's one directory
    pyspy_dir = run_dir / "profiling" / "pyspy"
    for rank in (0, 1):
        collapsed = (pyspy_dir / f"rank{rank}.collapsed.txt").read_text()
        assert collapsed.count("\n") > 10
        speedscope = json.loads((pyspy_dir / f"rank{rank}.speedscope.json").read_text())
        assert speedscope["profiles"] and sum(speedscope["profiles"][0]["weights"]) > 0
        assert (pyspy_dir / f"rank{rank}.svg").read_text().startswith("<svg")
        assert (run_dir / "profiling" / "torch" / f"rank{rank}.trace.json").stat().st_size > 1000
    # rank 1 is a child of rank 0 under Lightning's launcher: rank 0's py-spy saw it, its stacks drop it
    pid1 = (pyspy_dir / "rank1.raw.txt").read_text().split(":", 1)[0].split()[1]
    assert f"process {pid1}:" in (pyspy_dir / "rank0.raw.txt").read_text()
    assert f"process {pid1}:" not in (pyspy_dir / "rank0.collapsed.txt").read_text()

    record = records.load(run_dir)
    pyspy = record["sections"]["pyspy"]
    assert pyspy["ranks"] == 2 and set(pyspy["per_rank"]) == {"0", "1"}
    # the window stayed open past its 40 steps for min_samples (rank 0's clock): every rank closed it at once
    closed = pyspy["window"]["closed_after_batch"]
    assert closed["0"] == closed["1"] >= 42, closed
    assert pyspy["samples"] > 50 and sum(pyspy["categories"].values()) == pytest.approx(1.0)
    assert pyspy["categories"]["communication"] > 0  # Lightning's per-step broadcast, gloo collectives
    # Per rank, py-spy (Python frames only) can miss the short broadcast in a short window, and DDP's
    # all-reduce runs in C++; the per-rank communication check below uses the torch profiler's gloo ops.
    assert "# py-spy hotspot summary" in (pyspy_dir / "hotspots.md").read_text()
    torch_section = record["sections"]["torch_profiler"]
    assert torch_section["ranks"] == 2 and torch_section["mode"] == "cpu"
    assert set(torch_section["fractions"]) == {"compute", "communication", "memcpy", "other"}
    assert sum(torch_section["fractions"].values()) == pytest.approx(1.0)
    for rank in ("0", "1"):
        assert torch_section["per_rank"][rank]["fractions"]["communication"] > 0
        assert torch_section["per_rank"][rank]["steps"] == 3
    assert 0.0 <= torch_section["overlap"] <= 1.0

    # `profile report RUN_DIR` rebuilds the summary from the saved stacks alone
    (pyspy_dir / "hotspots.md").unlink()
    from itwinai_lightning.profiling import cli

    assert cli.main(["report", str(run_dir)]) == 0
    rebuilt = records.load(run_dir)["sections"]["pyspy"]
    assert rebuilt["counts"] == pyspy["counts"] and rebuilt["bottleneck"] == pyspy["bottleneck"]
    assert (pyspy_dir / "hotspots.md").exists()


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Intra-op threads spin on a shared 2-core machine and blur compute vs. waiting; use one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fit(
    run_dir: Path,
    callbacks: list,
    *,
    width: int,
    num_samples: int,
    sleep_s: float = 0.0,
    accelerator: str = "cpu",
):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser

    trainer = pl.Trainer(
        default_root_dir=run_dir,
        accelerator=accelerator,
        devices=1,
        max_epochs=1,
        callbacks=callbacks,
        logger=CSVLogger(run_dir, name="csv", version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
    )
    data = SpectrogramDataModule(num_samples=num_samples, val_samples=8, batch_size=8, sleep_s=sleep_s)
    trainer.fit(SpectrogramDenoiser(width=width, depth=4), data)
    return trainer


def _logged(run_dir: Path) -> dict[str, float]:
    rows = list(csv.DictReader((run_dir / "csv" / "version_0" / "metrics.csv").open()))
    return {k: float(v) for row in rows for k, v in row.items() if v and k not in ("step", "epoch")}


@pytest.mark.serial  # its verdict is a share of the CPU: not beside another test
def test_sleeping_dataset_is_data_loading_bound_single_process(tmp_path: Path) -> None:
    require_executable("py-spy", PYSPY_HOW)
    from itwinai_lightning.callbacks import PySpyProfiler, TorchProfilerBreakdown

    spy = PySpyProfiler(start_step=2, num_steps=12, rate_hz=100)
    prof = TorchProfilerBreakdown(skip_steps=2, warmup_steps=1, active_steps=3)
    trainer = _fit(tmp_path, [spy, prof], width=8, num_samples=160, sleep_s=0.03)
    assert trainer.state.finished
    summary = records.load(tmp_path)["sections"]["pyspy"]
    assert summary["bottleneck"] == "data_loading", summary["categories"]
    assert summary["categories"]["data_loading"] > 0.5
    assert summary["categories"]["communication"] == 0.0
    top = summary["top_functions"]["data_loading"][0]["function"]
    assert "SyntheticSpectrograms.__getitem__" in top
    assert any(r["category"] == "data_loading" and "num_workers" in r["advice"] for r in summary["remedies"])
    torch_section = records.load(tmp_path)["sections"]["torch_profiler"]
    assert torch_section["ranks"] == 1 and torch_section["fractions"]["communication"] == 0.0
    assert torch_section["fractions"]["other"] > 0.3  # the sleeping __getitem__ is neither op nor copy
    logged = _logged(tmp_path)
    assert logged["pyspy/data_loading_frac"] == pytest.approx(summary["categories"]["data_loading"])
    assert logged["torch_profiler/compute_frac"] == pytest.approx(torch_section["fractions"]["compute"])


@pytest.mark.serial  # its verdict is a share of the CPU: not beside another test
def test_large_model_tiny_data_is_compute_bound(tmp_path: Path) -> None:
    require_executable("py-spy", PYSPY_HOW)
    from itwinai_lightning.callbacks import PySpyProfiler, TorchProfilerBreakdown

    spy = PySpyProfiler(epochs=[0], rate_hz=100)  # an epoch window
    prof = TorchProfilerBreakdown(skip_steps=1, warmup_steps=1, active_steps=2)
    _fit(tmp_path, [spy, prof], width=96, num_samples=48)
    summary = records.load(tmp_path)["sections"]["pyspy"]
    assert summary["bottleneck"] == "compute", summary["categories"]
    assert summary["groups"]["compute"] > 0.6 and summary["categories"]["data_loading"] < 0.1
    assert any(r["category"] == "compute" for r in summary["remedies"])
    fractions = records.load(tmp_path)["sections"]["torch_profiler"]["fractions"]
    assert fractions["compute"] > 0.6 and fractions["communication"] == 0.0


def test_a_step_window_stays_open_until_min_samples_at_the_rate(tmp_path: Path) -> None:
    """Fast steps: 3 batches would hold a handful of samples; the window stays open until about
    ``min_samples`` were taken (0.5 s at 100 Hz), and closes well before the end of training."""
    require_executable("py-spy", PYSPY_HOW)
    from itwinai_lightning.callbacks import PySpyProfiler

    spy = PySpyProfiler(start_step=1, num_steps=3, rate_hz=100, min_samples=50)
    trainer = _fit(tmp_path, [spy], width=8, num_samples=1600, sleep_s=0.002)  # 200 steps of ~16 ms
    window = records.load(tmp_path)["sections"]["pyspy"]["window"]
    assert window["seconds"] >= 0.5 and 3 < window["batches"] < trainer.global_step - 1, window
    assert records.load(tmp_path)["sections"]["pyspy"]["samples"] >= 25  # py-spy kept up within 2x
    short = PySpyProfiler(start_step=1, num_steps=3, rate_hz=100, min_samples=None)
    _fit(tmp_path / "short", [short], width=8, num_samples=400, sleep_s=0.002)
    assert records.load(tmp_path / "short")["sections"]["pyspy"]["window"]["batches"] == 3


def test_no_ptrace_permission_warns_once_and_training_completes(tmp_path: Path) -> None:
    from itwinai_lightning.callbacks.pyspy import PySpyProfiler, PySpyUnavailableWarning

    fake = tmp_path / "py-spy"  # exits like the real py-spy does without ptrace permission
    fake.write_text(
        '#!/bin/sh\necho "Permission Denied: Try running again with elevated permissions by going '
        '\'sudo env \\"PATH=\\$PATH\\" !!\'" >&2\nexit 1\n'
    )
    fake.chmod(0o755)
    spy = PySpyProfiler(start_step=1, num_steps=3, executable=str(fake))
    with pytest.warns(PySpyUnavailableWarning) as caught:
        trainer = _fit(tmp_path, [spy], width=8, num_samples=64)
    mine = [w for w in caught if issubclass(w.category, PySpyUnavailableWarning)]
    assert len(mine) == 1
    message = str(mine[0].message)
    assert "Permission Denied" in message and "SYS_PTRACE" in message and "ptrace_scope" in message
    assert trainer.state.finished and trainer.global_step == 8
    section = records.load(tmp_path)["sections"]["pyspy"]
    assert section["samples"] == 0 and "SYS_PTRACE" in section["errors"]["0"]


@pytest.mark.gpu
def test_cuda_breakdown_uses_device_kernels(tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from itwinai_lightning.callbacks import TorchProfilerBreakdown

    prof = TorchProfilerBreakdown(skip_steps=2, warmup_steps=1, active_steps=3)
    _fit(tmp_path, [prof], width=64, num_samples=128, accelerator="gpu")
    section = records.load(tmp_path)["sections"]["torch_profiler"]
    assert section["mode"] == "cuda" and section["per_rank"]["0"]["steps"] == 3
    assert section["fractions"]["compute"] > 0 and section["fractions"]["memcpy"] > 0  # H2D batch copies
    assert section["fractions"]["communication"] == 0.0
    trace = json.loads((tmp_path / "profiling" / "torch" / "rank0.trace.json").read_text())
    assert any(e.get("cat") == "kernel" for e in trace["traceEvents"])


def test_a_window_beyond_the_run_is_said_and_records_nothing(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    require_executable("py-spy", PYSPY_HOW)
    run_dir = tmp_path / "run"
    config = tmp_path / "late.yaml"
    late = DDP_CONFIG.format(run_dir=run_dir).replace("devices: 2", "devices: 1").replace("strategy: ddp", "")
    late = late.replace("start_step: 2,", "start_step: 500,").replace("skip_steps: 2,", "skip_steps: 500,")
    config.write_text(late.replace("num_samples: 800", "num_samples: 80"))  # 10 steps, windows at 500
    proc = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "fit", "--config", str(config)],
        cwd=ROOT, env=python_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "PySpyProfiler: the run ended after 10 training batches, before the profiling window" in proc.stderr
    )
    assert (
        "TorchProfilerBreakdown: the run ended after 10 training steps, before the profiling window"
        in proc.stderr
    )
    sections = records.load(run_dir)["sections"]
    assert "torch_profiler" not in sections and "pyspy" not in sections  # no zeros posing as measurements
