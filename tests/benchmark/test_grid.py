"""A real grid on this machine: {hpc_ddp, hpc_deepspeed} x {1, 2} workers, local and torchrun launchers.

One module fixture runs both grids (gloo, CPU, 1 tiny epoch each) plus a failing point, then the tests
check the records, the report's table (speedup/efficiency recomputed here from the RunRecords), resume and
the failure record.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from itwinai_lightning import records
from itwinai_lightning.benchmark.report.plots import PLOTS
from tests.helpers.engines import require_module

REPO = Path(__file__).resolve().parents[2]
TINY = """
seed_everything: 1
trainer:
  max_epochs: 1
  enable_progress_bar: false
  enable_checkpointing: false
  enable_model_summary: false
  logger: false
  num_sanity_val_steps: 0
model:
  class_path: itwinai_lightning.demo.SpectrogramDenoiser
  init_args: {width: 8, depth: 2}
data:
  class_path: itwinai_lightning.demo.SpectrogramDataModule
  init_args: {num_samples: 128, val_samples: 32, batch_size: 16, num_workers: 0}
benchmark:
  workers: [1, 2]
  repetitions: 1   # the default is 3; one keeps this real grid short
"""
STRATEGIES = ("hpc_ddp", "hpc_deepspeed")
#: its module exists (so the up-front check lets it through), the class does not: the point fails at run time
MISSING_CLASS = "itwinai_lightning.strategies.ddp.NoSuchStrategy"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONWARNINGS="ignore")
    return env


def _bench(
    cfg: Path, out: Path, launcher: str, strategies: str, workers: str = "[1, 2]", *extra: str
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "itwinai_lightning", "benchmark", "--config", str(cfg), *extra,
           "--benchmark.strategies", strategies, "--benchmark.launcher", launcher,
           "--benchmark.workers", workers,
           "--benchmark.output_dir", str(out), "--benchmark.timeout_s", "300"]  # fmt: skip
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900, cwd=out.parent)


@pytest.fixture(scope="module")
def grids(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    require_module("deepspeed", 'pip install "itwinai-lightning[deepspeed]"')
    root = tmp_path_factory.mktemp("grid")
    cfg = root / "base.yaml"
    cfg.write_text(TINY)
    local = _bench(cfg, root / "local", "local", "[hpc_ddp, hpc_deepspeed]")
    # a strategy that cannot load fails its point; the grid (here a second invocation) goes on
    failing = _bench(cfg, root / "local", "local", f"[{MISSING_CLASS}, hpc_ddp]", workers="[1]")
    torchrun = _bench(cfg, root / "torchrun", "torchrun", "[hpc_ddp, hpc_deepspeed]")
    yield {"root": root, "cfg": cfg, "local": local, "failing": failing, "torchrun": torchrun}


def _records(directory: Path) -> dict[str, dict[str, object]]:
    return {p.parent.name: records.load(p) for p in directory.glob("*/run_record.json")}


def _failures(directory: Path) -> str:
    """Each failed point's error and the end of its fit.stderr, for the assertion message."""
    out = []
    for name, rec in _records(directory).items():
        if rec["status"] != "completed":
            stderr = directory / name / "fit.stderr"
            tail = stderr.read_text(errors="replace")[-4000:] if stderr.is_file() else ""
            out.append(f"--- {name}: {rec.get('error')}\n{tail}")
    return "\n".join(out)


def test_points_complete_with_real_records(grids: dict[str, object]) -> None:
    root = Path(str(grids["root"]))
    local, torchrun = grids["local"], grids["torchrun"]
    assert isinstance(local, subprocess.CompletedProcess) and isinstance(
        torchrun, subprocess.CompletedProcess
    )
    assert torchrun.returncode == 0, torchrun.stderr[-3000:] + _failures(root / "torchrun")
    assert local.returncode == 0, local.stderr[-3000:] + _failures(root / "local")
    assert "[4/4]" in local.stderr and "[4/4]" in torchrun.stderr  # progress display
    for launcher in ("local", "torchrun"):
        recs = _records(root / launcher)
        for strategy in STRATEGIES:
            for n in (1, 2):
                rec = recs[f"{strategy}-w{n}-r0"]
                assert rec["status"] == "completed", rec.get("error")
                assert rec["world_size"] == n and rec["launcher"] == launcher
                assert rec["global_batch_size"] == 16  # strong scaling: 16 = 16/N per worker x N
                bench = rec["sections"]["benchmark"]  # type: ignore[index]
                assert bench["per_worker_batch_size"] == 16 // n
                # every point, the 1-worker baseline too, with the same threads per process (2 cores / 2)
                assert bench["threads_per_process"] == rec["threads_per_process"] == 1
                assert rec["config"]["data"]["init_args"]["batch_size"] == 16 // n  # type: ignore[index]
                epochs = rec["epochs"]
                assert isinstance(epochs, list) and len(epochs) == 1 and epochs[0]["wall_time_s"] > 0
                assert epochs[0]["samples"] == 128


def test_report_table_matches_records(grids: dict[str, object]) -> None:
    root = Path(str(grids["root"]))
    done = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "benchmark", "report", str(root / "local"),
         str(root / "torchrun"), "--out", str(root / "merged")],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for out in (root / "local", root / "torchrun", root / "merged"):  # auto-report at the end + merged one
        assert (out / "report.html").is_file()
        left_out = json.loads((out / "report.json").read_text())["figures_left_out"]
        # two worker counts: too few to fit a scaling model; every other figure has data or says why not
        assert "scaling_model" in left_out and "epoch_time" not in left_out and "speedup" not in left_out
        for name in PLOTS:
            png = out / "plots" / f"{name}.png"
            assert (name in left_out) is not png.exists(), name
            assert name in left_out or png.read_bytes()[:4] == b"\x89PNG"
    with (root / "merged" / "benchmark_summary.csv").open() as fh:
        table = {(r["strategy"], r["launcher"], int(r["workers"])): r for r in csv.DictReader(fh)}
    for launcher in ("local", "torchrun"):
        recs = _records(root / launcher)
        for strategy in STRATEGIES:
            # one epoch, so the warm-up epoch is included (and flagged); validation is not
            t = {n: recs[f"{strategy}-w{n}-r0"]["epochs"][0]["train_time_s"] for n in (1, 2)}  # type: ignore[index]
            row1, row2 = table[(strategy, launcher, 1)], table[(strategy, launcher, 2)]
            assert float(row1["epoch_time_s"]) == pytest.approx(t[1], rel=1e-12)
            assert float(row2["epoch_time_s"]) == pytest.approx(t[2], rel=1e-12)
            assert float(row1["speedup"]) == 1.0 and float(row1["efficiency_pct"]) == 100.0
            assert "warm-up epoch is included" in row1["flags"]
            assert float(row2["speedup"]) == pytest.approx(t[1] / t[2], rel=1e-12)
            assert float(row2["efficiency_pct"]) == pytest.approx(100 * t[1] / t[2] / 2, rel=1e-12)
            sps = recs[f"{strategy}-w2-r0"]["summary"]["samples_per_s"]  # type: ignore[index]
            assert float(row2["samples_per_s"]) == pytest.approx(sps, rel=1e-12)
    page = (root / "merged" / "report.html").read_text()
    drawn = len(PLOTS) - len(json.loads((root / "merged" / "report.json").read_text())["figures_left_out"])
    assert page.count("data:image/png;base64,") == drawn and "Fastest:" in page


def test_failing_point_recorded_and_grid_goes_on(grids: dict[str, object]) -> None:
    failing = grids["failing"]
    assert isinstance(failing, subprocess.CompletedProcess)
    assert failing.returncode == 1, failing.stderr[-3000:]  # some point failed
    assert f"{MISSING_CLASS}-w1-r0 (local) ... failed" in failing.stderr
    assert "hpc_ddp-w1-r0 (local) ... skipped" in failing.stderr  # the point after it still handled
    recs = _records(Path(str(grids["root"])) / "local")
    rec = recs[f"{MISSING_CLASS}-w1-r0"]
    assert rec["status"] == "failed"
    assert "nosuchstrategy" in str(rec["error"]).lower() and "strategy" in str(rec["error"])
    assert rec["sections"]["benchmark"]["returncode"] != 0  # type: ignore[index]
    assert sum(r["status"] == "completed" for r in recs.values()) == 4
    page = (Path(str(grids["root"])) / "local" / "report.html").read_text()
    assert "Failed runs (1)" in page and "nosuchstrategy" in page.lower()


def test_resume_skips_completed_points(grids: dict[str, object]) -> None:
    root = Path(str(grids["root"]))
    before = {k: (r["run_id"], r["updated_at"]) for k, r in _records(root / "torchrun").items()}
    start = time.monotonic()
    again = _bench(Path(str(grids["cfg"])), root / "torchrun", "torchrun", "[hpc_ddp, hpc_deepspeed]")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("skipped") == 4 and "4 skipped" in again.stdout
    after = {k: (r["run_id"], r["updated_at"]) for k, r in _records(root / "torchrun").items()}
    assert after == before  # no record rewritten
    assert time.monotonic() - start < 60  # no training happened (a single point takes ~10-30 s here)


def test_a_strategy_typo_stops_before_any_point(tmp_path: Path) -> None:
    cfg = tmp_path / "base.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "out"
    out.mkdir()
    start = time.monotonic()
    typo = _bench(cfg, out, "local", "[hpc_ddp, hpc_dpp]")
    assert typo.returncode == 2, typo.stderr
    (line,) = typo.stderr.strip().splitlines()
    assert line.startswith("itwinai-lightning: error: benchmark.strategies: unknown strategy 'hpc_dpp'")
    assert "did you mean 'hpc_ddp'?" in line
    assert list(out.iterdir()) == [] and time.monotonic() - start < 30  # no point started


def test_a_completed_point_is_reused_only_for_the_same_inputs(
    grids: dict[str, object], tmp_path: Path
) -> None:
    import shutil

    root, cfg = Path(str(grids["root"])), Path(str(grids["cfg"]))
    moved = tmp_path / "moved"
    shutil.copytree(root / "local" / "hpc_ddp-w1-r0", moved / "hpc_ddp-w1-r0")
    same = _bench(cfg, moved, "local", "[hpc_ddp]", "[1]")
    assert same.returncode == 0, same.stderr
    assert "hpc_ddp-w1-r0 (local) ... skipped (reused its completed run" in same.stderr
    assert len(records.load(moved / "hpc_ddp-w1-r0")["epochs"]) == 1

    longer = _bench(cfg, moved, "local", "[hpc_ddp]", "[1]", "--trainer.max_epochs", "2")
    assert longer.returncode == 0, longer.stderr
    assert "re-running: its completed run differs (arguments added: --trainer.max_epochs 2)" in longer.stderr
    assert "skipped" not in longer.stderr
    assert len(records.load(moved / "hpc_ddp-w1-r0")["epochs"]) == 2  # the 2-epoch run, not the old one


def test_report_says_what_ran_where(grids: dict[str, object], tmp_path: Path) -> None:
    import json
    import platform

    from itwinai_lightning.benchmark.report import build as report
    from itwinai_lightning.records.facts import cpu_model

    built = report.build([Path(str(grids["root"])) / "torchrun"], out=tmp_path)
    prov = {row["configuration"]: row for row in json.loads(built.files["json"].read_text())["provenance"]}
    row = prov["hpc_deepspeed (torchrun) x 2"]
    assert row["hosts"] == platform.node() and row["nodes"] == 1
    assert row["cpu"] == cpu_model() and row["cpu"]
    assert "torch " in row["software"] and "deepspeed " in row["software"]
    assert row["parameters"] > 100 and row["global_batch"] == 16 and row["per_worker_batch"] == 8
    assert (row["samples_per_epoch"], row["epochs"], row["warmup_epochs"]) == (128, 1, 1)
    assert "torch.distributed.run" in row["command"] and "--trainer.strategy hpc_deepspeed" in row["command"]
    page = built.files["html"].read_text()
    assert "Provenance: what ran where" in page and row["cpu"] in page


@pytest.mark.parametrize(
    ("workers", "extra", "expected"),
    [
        (
            "[1, 2]",
            ["--benchmark.accelerator", "gpu"],
            "benchmark.workers: 2 workers need 2 GPUs on this node",
        ),
        (
            "[2, 3]",
            [
                "--benchmark.submit",
                "true",
                "--benchmark.slurm.ntasks_per_node",
                "2",
                "--benchmark.scaling",
                "weak",
            ],
            "benchmark.workers: 3 workers do not split evenly into nodes of 2 tasks",
        ),
    ],
)
def test_worker_counts_beyond_the_devices_stop_before_any_point(
    tmp_path: Path, workers: str, extra: list[str], expected: str
) -> None:
    if expected.startswith("benchmark.workers: 2 workers need") and torch_gpus() >= 2:
        pytest.skip("this machine has the GPUs")
    cfg = tmp_path / "base.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "out"
    out.mkdir()
    bad = _bench(cfg, out, "local", "[hpc_ddp]", workers, *extra)
    assert bad.returncode == 2, bad.stderr
    (line,) = bad.stderr.strip().splitlines()
    assert line.startswith(f"itwinai-lightning: error: {expected}"), line
    assert list(out.iterdir()) == []  # nothing started, nothing written


def test_more_cpu_workers_than_cores_is_said_once(tmp_path: Path) -> None:
    import os

    cfg = tmp_path / "base.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "out"
    out.mkdir()
    many = len(os.sched_getaffinity(0)) * 2
    dry = _bench(cfg, out, "local", "[hpc_ddp]", f"[1, {many}]", "--benchmark.dry_run", "true")
    assert dry.returncode == 0, dry.stderr
    warnings = [line for line in dry.stderr.splitlines() if "measure contention" in line]
    assert len(warnings) == 1 and f"{many} CPU workers on {many // 2} cores" in warnings[0]


def torch_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def test_fsdp_in_the_grid_and_an_inference_grid(tmp_path: Path) -> None:
    """hpc_fsdp is a grid strategy; ``mode: predict`` times one pass of predict per point, with every
    prediction written once, and the report compares the points as it compares training."""
    import json

    cfg = tmp_path / "base.yaml"
    cfg.write_text(TINY)
    fit = _bench(cfg, tmp_path / "fit", "torchrun", "[hpc_fsdp]", "[1, 2]", "--benchmark.accelerator", "cpu")
    assert fit.returncode == 0, fit.stdout[-2000:] + fit.stderr[-2000:]
    for n in (1, 2):
        rec = records.load(tmp_path / "fit" / f"hpc_fsdp-w{n}-r0")
        assert (rec["status"], rec["world_size"], rec["summary"]["total_samples"]) == ("completed", n, 128)

    pred = _bench(
        cfg, tmp_path / "pred", "local", "[hpc_ddp, hpc_fsdp]", "[1, 2]",
        "--benchmark.mode", "predict", "--benchmark.accelerator", "cpu", "--data.init_args.val_samples", "45",
    )  # fmt: skip
    assert pred.returncode == 0, pred.stdout[-2000:] + pred.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "pred" / "benchmark_summary.csv").open()))
    assert [(r["strategy"], r["workers"]) for r in rows] == [
        ("hpc_ddp", "1"), ("hpc_ddp", "2"), ("hpc_fsdp", "1"), ("hpc_fsdp", "2"),
    ]  # fmt: skip
    for row in rows:
        run_dir = tmp_path / "pred" / f"{row['strategy']}-w{row['workers']}-r0"
        index = json.loads((run_dir / "predictions" / "index.json").read_text())
        assert (index["num_samples"], index["world_size"]) == (45, int(row["workers"]))
        rec = records.load(run_dir)
        assert rec["sections"]["benchmark"]["mode"] == "predict"
        assert float(row["samples_per_s"]) == pytest.approx(45 / index["wall_time_s"], rel=1e-6)
        assert float(row["epoch_time_s"]) == pytest.approx(index["wall_time_s"], rel=1e-6)
    bad = _bench(cfg, tmp_path / "bad", "local", "[hpc_ddp]", "[1]", "--benchmark.mode", "infer")
    assert bad.returncode == 2 and "benchmark.mode must be 'fit' (training) or 'predict'" in bad.stderr
