"""scripts/gpu-check.sh: its CPU dry run shows the prepared GPU run still parses and fits the budget."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.helpers.childenv import child_env

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_plans_every_step_within_eight_minutes(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu-check.sh"), "--dry-run", "--out", str(tmp_path)],
        env=child_env(), capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = report["steps"]
    assert list(steps) == ["gpu_tests", "monitoring_overhead", "training_grid", "inference_grid"]
    assert {name: step["status"] for name, step in steps.items()} == dict.fromkeys(steps, "planned")
    assert report["budget_s"] <= 8 * 60
    training = " ".join(steps["training_grid"]["argv"])
    assert "[hpc_ddp, hpc_deepspeed, hpc_fsdp]" in training and "--benchmark.accelerator gpu" in training
    assert "--benchmark.mode predict" in " ".join(steps["inference_grid"]["argv"])
    collected = (tmp_path / "gpu_tests.dry.log").read_text()
    assert "test_fsdp_one_cuda_device_nccl" in collected and "test_predict_on_one_gpu" in collected
