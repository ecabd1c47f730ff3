"""``env --check`` in one process: the report's shape, its figures, and bad input (the 2-node runs are in
tests/multinode)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from itwinai_lightning.env.healthcheck import ONE_RANK, SIZES


def test_one_rank_says_there_is_nothing_to_measure(python_env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "itwinai_lightning", "env", "--check", "--timeout", "20"]
    proc = subprocess.run([*cmd, "--json"], env=python_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["world_size"] == 1 and report["launcher"] == "local"
    assert report["allreduce_ok"] and report["allgather_ok"] and report["missing"] == []
    assert report["sizes"] == []  # no bandwidth of one rank talking to itself
    text = subprocess.run(cmd, env=python_env, capture_output=True, text=True, timeout=120).stdout
    assert ONE_RANK in text and "GB/s" not in text and text.strip().endswith("OK")


def test_two_ranks_under_torchrun_report_real_figures_quietly(python_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "itwinai_lightning", "env", "--check", "--json", "--timeout", "30"],
        env=python_env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["world_size"] == 2 and report["launcher"] == "torchrun"
    assert [s["bytes"] for s in report["sizes"]] == list(SIZES)
    assert all(s["latency_us"] > 0 for s in report["sizes"]) and report["sizes"][-1]["busbw_gbps"] > 0
    assert report["slowest"].startswith("rank ")
    assert "failed to bind" not in proc.stderr  # rank 0 joins torchrun's own store


def test_check_rejects_a_bad_timeout(python_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "env", "--check", "--timeout", "0"],
        env=python_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == "itwinai-lightning: error: env --timeout must be > 0 seconds, got 0"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_check_over_nccl_on_every_gpu(python_env: dict[str, str]) -> None:
    """torchrun with one rank per visible GPU: the check picks NCCL and measures real bandwidth."""
    gpus = torch.cuda.device_count()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus),
         "-m", "itwinai_lightning", "env", "--check", "--json", "--timeout", "60"],
        env=python_env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (report["ok"], report["backend"], report["launcher"], report["world_size"]) == (
        True, "nccl", "torchrun", gpus,
    )  # fmt: skip
    assert all(s["latency_us"] > 0 and s["busbw_gbps"] > 0 for s in report["sizes"])
