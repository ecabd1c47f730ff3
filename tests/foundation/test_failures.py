"""A dead or hung rank ends the run (non-zero, within the collective timeout); launch mistakes: one line."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.foundation.conftest import fit_args, run_cli
from tests.helpers.engines import require_executable, require_module

TIMEOUT_S = 5
#: process start-up, teardown and a loaded 2-core CI machine, on top of the collective timeout
SLACK_S = 40
STRATEGY_CLASSES = {
    "hpc_ddp": "itwinai_lightning.strategies.ddp.HPCDDPStrategy",
    "hpc_deepspeed": "itwinai_lightning.strategies.deepspeed.HPCDeepSpeedStrategy",
    "horovod": "itwinai_lightning.strategies.horovod.HorovodStrategy",
}


@pytest.mark.parametrize(
    "launcher,signal_name,strategy",
    [
        ("lightning", "SIGSTOP", "hpc_ddp"),
        ("srun", "SIGKILL", "hpc_ddp"),
        ("horovodrun", "SIGSTOP", "horovod"),  # the gloo timeout of the shared mixin's timeout
    ],
)
def test_lost_rank_ends_the_run_within_the_timeout(
    launcher: str,
    signal_name: str,
    strategy: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    python_env: dict[str, str],
) -> None:
    marker = tmp_path / "signalled"
    args = fit_args(
        tmp_path,
        "--trainer.max_epochs",
        "1000",  # would run for many minutes: only the failure handling can end it early
        f"--trainer.strategy={STRATEGY_CLASSES[strategy]}",
        f"--trainer.strategy.init_args.timeout={TIMEOUT_S}",
        "--trainer.callbacks+=tests.foundation.weights.SignalRank",
        "--trainer.callbacks.rank=1",
        "--trainer.callbacks.at_step=3",
        f"--trainer.callbacks.signal_name={signal_name}",
        f"--trainer.callbacks.marker={marker}",
    )
    env = dict(python_env)
    prefix: list[str] = []
    if strategy == "hpc_deepspeed":
        require_module("deepspeed", "bash scripts/setup.sh")
    if strategy == "horovod":
        horovodrun = require_executable("horovodrun", "itwinai-lightning build-horovod")
        prefix = [horovodrun, "--gloo", "-np", "2", "-H", "localhost:2"]
        args[args.index("--trainer.devices") + 1] = "1"  # one process per device under horovodrun
    if launcher == "srun":
        env["SLURM_CONF"] = request.getfixturevalue("slurm_cluster").env["SLURM_CONF"]
        prefix = ["srun", "-N", "1", "--ntasks-per-node=2"]  # no --kill-on-bad-exit: rank 0 must notice
    run = run_cli(prefix, args, env, tmp_path, timeout=300)
    ended = time.time()

    assert run.returncode != 0
    signalled_at, pid = marker.read_text().split()
    assert ended - float(signalled_at) < TIMEOUT_S + SLACK_S
    assert f"{strategy}: rank 0 of 2" in run.stderr and "lost a peer" in run.stderr
    assert f"collective timeout {TIMEOUT_S} s" in run.stderr
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert not (tmp_path / "weights_rank0.pt").exists()  # the fit did not "complete"


def test_launch_mistakes_are_one_line(
    request: pytest.FixtureRequest, tmp_path: Path, python_env: dict[str, str]
) -> None:
    cluster = request.getfixturevalue("slurm_cluster")
    env = {**python_env, "SLURM_CONF": cluster.env["SLURM_CONF"]}

    # srun -n 2 leaves tasks per node to SLURM
    run = run_cli(["srun", "-n", "2"], fit_args(tmp_path), env, tmp_path)
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("itwinai-lightning: error:")]
    assert run.returncode == 2, run.stderr[-2000:]
    assert len(lines) == 1  # once per node (local rank 0), nothing else from us
    assert "--ntasks-per-node" in lines[0] and "Traceback" not in run.stderr

    # 2 tasks per node but trainer.devices=1
    run = run_cli(["srun", "-N", "1", "--ntasks-per-node=2"], fit_args(tmp_path, devices=1), env, tmp_path)
    assert run.returncode == 2
    assert "srun started 2 processes" in run.stderr and "--trainer.devices 2" in run.stderr
    assert "Traceback" not in run.stderr

    # torchrun: the same mistake is said once (torchrun still reports the failed workers after it)
    run = run_cli(["torchrun", "--nproc_per_node", "2"], fit_args(tmp_path, devices=3), python_env, tmp_path)
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("itwinai-lightning: error:")]
    assert run.returncode != 0 and len(lines) == 1, run.stderr[-3000:]
    assert "torchrun started 2 processes" in lines[0] and "--trainer.devices 2" in lines[0]


def test_the_line_is_said_when_local_rank_0_is_the_last_to_get_there(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    """torchrun kills every worker when the first one exits: a silent rank must not exit first."""
    late_rank0 = tmp_path / "late_rank0.sh"
    late_rank0.write_text(
        '#!/bin/sh\nif [ "$LOCAL_RANK" = 0 ]; then sleep 2; fi\n'  # rank 0 reaches the check 2 s after rank 1
        f'exec {sys.executable} "$@"\n'
    )
    late_rank0.chmod(0o755)
    prefix = ["torchrun", "--nproc_per_node", "2", "--no-python", str(late_rank0)]
    run = run_cli(prefix, fit_args(tmp_path, devices=3), python_env, tmp_path)
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("itwinai-lightning: error:")]
    assert run.returncode != 0 and len(lines) == 1, run.stderr[-3000:]
    assert "torchrun started 2 processes" in lines[0]


HANG_TIMEOUT_S = 5


@pytest.mark.parametrize("launcher", ["torchrun", "lightning"])
def test_a_hung_rank_ends_the_run_naming_its_host_and_frame(
    launcher: str, tmp_path: Path, python_env: dict[str, str]
) -> None:
    """Rank 1 sleeps inside a step; rank 0 waits in the gradient all-reduce. Within hang_timeout_s + 30 s
    every rank wrote its stack, rank 0 said which rank is stuck where, and the launcher ended the run."""
    import socket

    from itwinai_lightning import records
    from tests.foundation.conftest import free_port

    marker = tmp_path / "hung"
    args = fit_args(
        tmp_path,
        "--trainer.max_epochs=1000",  # only the watchdog can end it early
        "--trainer.strategy.init_args.timeout=600",  # the collective timeout is not what ends it
        "--trainer.callbacks+=HangWatchdog",
        f"--trainer.callbacks.hang_timeout_s={HANG_TIMEOUT_S}",
        "--trainer.callbacks.poll_s=0.5",
        "--trainer.callbacks+=tests.foundation.weights.HangRank",
        "--trainer.callbacks.rank=1",
        "--trainer.callbacks.at_step=3",
        f"--trainer.callbacks.marker={marker}",
    )
    prefix: list[str] = []
    if launcher == "torchrun":
        require_executable("torchrun", "pip install torch")
        prefix = ["torchrun", "--nproc_per_node", "2", "--master_port", str(free_port())]
    run = run_cli(prefix, args, python_env, tmp_path, timeout=240)
    ended = time.time()

    assert run.returncode != 0
    assert ended - float(marker.read_text()) < HANG_TIMEOUT_S + 30, run.stderr[-3000:]
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("itwinai-lightning: error: hang:")]
    assert len(lines) == 1, run.stderr[-3000:]
    host = socket.gethostname()
    assert f"no step finished for {HANG_TIMEOUT_S} s" in lines[0]
    assert f"rank 1 on {host} is stuck in on_train_batch_start (weights.py:" in lines[0], lines[0]
    assert "the other ranks wait in backward (the gradient all-reduce)" in lines[0]
    ours = [ln for ln in run.stderr.splitlines() if ln.startswith("itwinai-lightning:")]
    assert (
        ours[-1] == lines[0]
    )  # the last word of the package: no rank's traceback or lost-peer line after it
    assert (
        "[rank0]:" not in run.stderr and "[rank1]:" not in run.stderr
    )  # torchrun's tags of a rank's traceback
    if launcher == "lightning":
        assert "Traceback" not in run.stderr
    record = records.load(tmp_path)
    hang_dir = Path(record["run_dir"]) / "hang"
    assert str(hang_dir) in lines[0]
    stacks = {p.name: p.read_text() for p in hang_dir.glob("rank*.txt")}
    assert sorted(stacks) == ["rank0.txt", "rank1.txt"]  # every rank's stack
    assert "in on_train_batch_start" in stacks["rank1.txt"]  # faulthandler's frames of the hung thread
    assert "backward" in stacks["rank0.txt"]  # rank 0 is in the gradient all-reduce
    assert record["status"] == "failed" and record["error"].startswith("hang:")
    section = record["sections"]["hang"]
    assert section["ranks"]["1"]["state"] == "stuck" and section["ranks"]["0"]["state"] == "waiting"
    assert section["timeout_s"] == HANG_TIMEOUT_S
