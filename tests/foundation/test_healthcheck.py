"""``env --check`` in one process: the report's shape, its figures, and bad input (the 2-node runs are in
tests/multinode)."""

from __future__ import annotations

import json
import subprocess
import sys

from itwinai_lightning.healthcheck import SIZES


def test_single_process_check_reports_real_figures(python_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "env", "--check", "--json", "--timeout", "20"],
        env=python_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["world_size"] == 1 and report["launcher"] == "local"
    assert report["allreduce_ok"] and report["allgather_ok"] and report["missing"] == []
    assert [s["bytes"] for s in report["sizes"]] == list(SIZES)
    assert all(s["latency_us"] > 0 for s in report["sizes"])
    assert report["slowest"].startswith("rank 0 on ")


def test_check_rejects_a_bad_timeout(python_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "env", "--check", "--timeout", "0"],
        env=python_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == "itwinai-lightning: error: env --timeout must be > 0 seconds, got 0"
