"""SIGTERM to the grid driver (``kill``, ``scancel``) ends the running point's launcher and ranks too."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from itwinai_lightning import records
from itwinai_lightning.benchmark.process_tree import terminate_tree
from tests.benchmark.test_grid import TINY, _env


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def test_sigterm_ends_the_running_point_and_records_it(tmp_path: Path) -> None:
    cfg = tmp_path / "base.yaml"
    cfg.write_text(TINY.replace("max_epochs: 1", "max_epochs: 2000"))
    out = tmp_path / "grid"
    cmd = [sys.executable, "-m", "itwinai_lightning", "benchmark", "--config", str(cfg),
           "--benchmark.strategies", "[hpc_ddp]", "--benchmark.launcher", "torchrun",
           "--benchmark.workers", "[2]", "--benchmark.output_dir", str(out)]  # fmt: skip
    driver = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = out / "hpc_ddp-w2-r0"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # wait until both ranks train (their epochs reach the record)
        try:
            if len(records.load(run_dir).get("epochs") or []) >= 1:
                break
        except (OSError, ValueError):
            pass
        assert driver.poll() is None, driver.communicate()
        time.sleep(0.5)
    else:
        raise AssertionError("the point never started training")
    ranks = [p for p in _processes_mentioning(str(run_dir)) if p != driver.pid]
    assert len(ranks) >= 3  # torchrun + 2 ranks

    driver.terminate()
    _, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 143, stderr  # 128 + SIGTERM
    assert "interrupted by SIGTERM" in stderr and "run the same command to resume" in stderr
    assert _processes_mentioning(str(run_dir)) == []  # the driver exits only once launcher and ranks are gone
    rec = records.load(run_dir)
    assert rec["status"] == "failed" and "SIGTERM" in str(rec["error"])
    assert rec["sections"]["benchmark"]["returncode"] == 143  # type: ignore[index]


_LEADER = """
import signal, subprocess, sys, time
rank = subprocess.Popen(["bash", "-c", sys.argv[1]], start_new_session=sys.argv[2] == "own")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exits at once, without waiting for its rank
while True:
    time.sleep(0.05)
"""


@pytest.mark.parametrize("session", ["own", "shared"])
@pytest.mark.parametrize("child_trap", ["sleep 1.5; exit 0", ""])
def test_terminate_tree_outlasts_a_launcher_that_exits_first(
    session: str, child_trap: str, tmp_path: Path
) -> None:
    """The launcher exits at once on SIGTERM; its 'rank' takes 1.5 s to exit (or ignores SIGTERM and
    needs SIGKILL), and like torchrun's ranks may sit in a session of its own, out of the launcher's
    process group: terminate_tree returns only once the rank is gone too."""
    ready = tmp_path / "trap-installed"
    rank_script = f"trap '{child_trap}' TERM; touch {ready}; while :; do sleep 0.05; done"
    proc = subprocess.Popen([sys.executable, "-c", _LEADER, rank_script, session], start_new_session=True)
    deadline = time.monotonic() + 10
    while not (ranks := psutil.Process(proc.pid).children()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(ranks) == 1
    while not ready.exists() and time.monotonic() < deadline:  # the rank's trap is installed
        time.sleep(0.02)
    assert ready.exists()
    start = time.monotonic()
    terminate_tree(proc, grace_s=3.0)  # type: ignore[arg-type]
    took = time.monotonic() - start
    left = [r for r in ranks if r.is_running() and r.status() != psutil.STATUS_ZOMBIE]
    for rank in left:
        rank.kill()
    assert left == []
    assert proc.returncode is not None
    assert took >= (1.0 if child_trap else 2.5)  # it waited for the rank, not just for the launcher
