"""Everything that needs a GPU, in one prepared run that fits the device budget (~8 minutes on one GPU).

    bash scripts/gpu-check.sh [--out runs/gpu-check] [--dry-run]

Steps (each with its own time limit; a failing step is recorded and the next one runs):

1. ``gpu`` tests: ``pytest -m gpu`` (NVML readings, MFU from the peak table, DeepSpeed/FSDP on CUDA, ...).
2. Monitoring overhead: ``benchmarks/bench_monitoring.py`` (GPUMonitor + TimingMonitor vs none).
3. Training throughput and energy: a benchmark grid {hpc_ddp, hpc_deepspeed, hpc_fsdp} x {all GPUs}
   x 2 repetitions of the quickstart workload with GPUMonitor (energy per sample).
4. Inference throughput: the same grid in ``mode: predict`` for hpc_ddp.

Writes ``<out>/gpu_check.json``: the device, each step's status and seconds, and the figures (samples/s,
epoch time, energy per sample, monitoring overhead). ``--dry-run`` prints the plan and writes the JSON
with every step ``planned``: CPU CI runs it so the script cannot rot between GPU sessions.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "configs" / "quickstart.yaml"
#: the quickstart at a size one GPU finishes in seconds per epoch
WORKLOAD = ["--trainer.max_epochs", "3", "--data.num_samples", "8192", "--data.batch_size", "128",
            "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]  # fmt: skip


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def device_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "no NVIDIA GPU visible"


def steps(out: Path, gpus: int) -> list[dict[str, Any]]:
    """The plan: name, argv, time limit in seconds."""
    py = sys.executable
    workers = f"[{max(gpus, 1)}]"
    grid = [
        py,
        "-m",
        "itwinai_lightning",
        "benchmark",
        "--config",
        str(QUICK),
        *WORKLOAD,
        "--benchmark.workers",
        workers,
        "--benchmark.accelerator",
        "gpu",
        "--benchmark.warmup_epochs",
        "1",
    ]  # fmt: skip  (TimingMonitor + GPUMonitor: the grid's default)
    return [
        {"name": "gpu_tests", "limit_s": 150,
         "argv": [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests",
                  f"--junitxml={out / 'gpu_tests.xml'}"]},
        {"name": "monitoring_overhead", "limit_s": 90,
         "argv": [py, str(REPO / "benchmarks" / "bench_monitoring.py"), "--reps", "3", "--epochs", "2",
                  "--json", str(out / "overhead.json")]},
        {"name": "training_grid", "limit_s": 180,
         "argv": [*grid, "--benchmark.strategies", "[hpc_ddp, hpc_deepspeed, hpc_fsdp]",
                  "--benchmark.repetitions", "2", "--benchmark.output_dir", str(out / "train")]},
        {"name": "inference_grid", "limit_s": 60,
         "argv": [*grid, "--benchmark.strategies", "[hpc_ddp]", "--benchmark.repetitions", "2",
                  "--benchmark.mode", "predict", "--data.val_samples", "8192",
                  "--benchmark.output_dir", str(out / "predict")]},
    ]  # fmt: skip


def dry_check(step: dict[str, Any], out: Path) -> str:
    """Without a GPU: the tests must collect and the grids must parse (their own dry run), else it rots."""
    argv = list(step["argv"])
    if step["name"] == "gpu_tests":
        argv = [a for a in argv if not a.startswith("--junitxml")] + ["--collect-only"]
    elif "benchmark" in argv:  # the same grid, parsed for the CPU (the GPU count check needs GPUs)
        argv = [
            ("cpu" if a == "gpu" and argv[i - 1] == "--benchmark.accelerator" else a)
            for i, a in enumerate(argv)
        ]
        argv += ["--benchmark.dry_run", "true"]
    else:
        return "planned" if Path(argv[1]).is_file() else f"failed (no {argv[1]})"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    (out / f"{step['name']}.dry.log").write_text(proc.stdout + proc.stderr)
    return "planned" if proc.returncode == 0 else f"failed (dry run exit {proc.returncode})"


def run_step(step: dict[str, Any], log: Path) -> dict[str, Any]:
    start = time.monotonic()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with log.open("w") as sink:
        try:
            proc = subprocess.run(step["argv"], stdout=sink, stderr=subprocess.STDOUT, env=env,
                                  timeout=step["limit_s"], cwd=REPO)  # fmt: skip
            status = "passed" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {step['limit_s']} s"
    return {"status": status, "seconds": round(time.monotonic() - start, 1), "log": str(log)}


def grid_figures(summary_csv: Path) -> list[dict[str, Any]]:
    if not summary_csv.is_file():
        return []
    keep = ("strategy", "workers", "epoch_time_s", "epoch_time_min_s", "epoch_time_max_s", "samples_per_s",
            "energy_per_sample_wh", "gpu_util_pct", "mfu_pct")  # fmt: skip
    return [{k: row.get(k) for k in keep} for row in csv.DictReader(summary_csv.open())]


def test_counts(junit: Path) -> dict[str, int]:
    if not junit.is_file():
        return {}
    import xml.etree.ElementTree as ET

    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-check")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    gpus = gpu_count()
    plan = steps(out, gpus)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device_name(),
        "gpus": gpus,
        "budget_s": sum(s["limit_s"] for s in plan),
        "steps": {},
    }
    if not args.dry_run and gpus == 0:
        print("gpu-check: no CUDA GPU visible; run it on the device machine (or --dry-run)", file=sys.stderr)
        return 2
    for step in plan:
        print(
            f"gpu-check: {step['name']} (limit {step['limit_s']} s): {shlex.join(step['argv'])}", flush=True
        )
        if args.dry_run:
            report["steps"][step["name"]] = {"status": dry_check(step, out), "argv": step["argv"]}
            continue
        report["steps"][step["name"]] = run_step(step, out / f"{step['name']}.log")
        print(f"gpu-check: {step['name']}: {report['steps'][step['name']]['status']}", flush=True)
    report["figures"] = {
        "gpu_tests": test_counts(out / "gpu_tests.xml"),
        "monitoring_overhead": json.loads((out / "overhead.json").read_text())
        if (out / "overhead.json").is_file()
        else None,
        "training": grid_figures(out / "train" / "benchmark_summary.csv"),
        "inference": grid_figures(out / "predict" / "benchmark_summary.csv"),
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print(f"gpu-check: figures in {out / 'gpu_check.json'}")
    failed = [n for n, s in report["steps"].items() if s["status"] not in ("passed", "planned")]
    for name in failed:
        print(f"gpu-check: {name}: {report['steps'][name]['status']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
