"""The rules of a failed fit job's recovery (itwinai_lightning/slurm/recovery.py), and the job script's
part: ``slurm recover`` as the batch shell calls it, and the script's recovery block (bash syntax).

The whole path on a real 3-node cluster: tests/multinode/test_recovery.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_lightning import records
from itwinai_lightning.slurm import recovery
from itwinai_lightning.slurm.recovery import Facts

REPO = Path(__file__).resolve().parents[2]
NODES = ["n1", "n2"]
PARTITION = {"n1": "alloc", "n2": "alloc", "n3": "idle", "n4": "down*"}


def facts(**changes: object) -> Facts:
    base: dict[str, object] = {
        "job_id": "42", "restart": 0, "exit_status": 1, "nodes": NODES, "healthy": NODES,
        "partition_nodes": dict(PARTITION), "note": None,
    }  # fmt: skip
    base.update(changes)
    return Facts(**base)  # type: ignore[arg-type]


def test_a_node_that_does_not_answer_is_excluded_and_the_job_requeued() -> None:
    note = {"cause": "lost_peer", "hosts": ["n2.cluster.example"], "global_step": 17, "time": 100.0}
    got = recovery.decide(facts(healthy=["n1"], note=note), [])
    assert got.requeue and got.exclude == ["n2"]
    assert got.entry is not None
    assert {k: got.entry[k] for k in ("restart", "cause", "hosts", "global_step", "failed_at")} == {
        "restart": 1, "cause": "lost node", "hosts": ["n2"], "global_step": 17, "failed_at": 100.0,
    }  # fmt: skip
    assert got.line == "job 42: lost node on n2; requeued without n2 (restart 1)"


def test_a_rank_lost_on_a_node_that_answers_restarts_on_the_same_nodes() -> None:
    got = recovery.decide(facts(note={"cause": "lost_peer", "hosts": ["n2"]}), [])
    assert got.requeue and got.exclude == [] and got.entry is not None
    assert got.entry["cause"] == "rank lost"
    assert got.line == "job 42: rank lost on n2; requeued on the same nodes (restart 1)"
    killed = recovery.decide(facts(exit_status=137), [])  # a rank killed by a signal (OOM killer: 9)
    assert killed.requeue and killed.exclude == []


def test_a_hung_rank_s_node_is_excluded() -> None:
    got = recovery.decide(facts(exit_status=124, note={"cause": "hang", "hosts": ["n1"]}), [])
    assert got.requeue and got.exclude == ["n1"] and got.entry is not None and got.entry["cause"] == "hang"


def test_errors_of_the_run_and_input_mistakes_are_not_restarted() -> None:
    error = recovery.decide(facts(exit_status=1), [])
    assert not error.requeue and "an error in the run, not the machine" in error.line
    mistake = recovery.decide(facts(exit_status=2, healthy=["n1"]), [])
    assert not mistake.requeue and "mistake in its input" in mistake.line


def test_restarts_are_bounded_per_job() -> None:
    lost = facts(healthy=["n1"], max_restarts=2)
    earlier = [{"job_id": "42", "restart": 1}, {"job_id": "42", "restart": 2}, {"job_id": "7", "restart": 1}]
    got = recovery.decide(lost, earlier)
    assert not got.requeue
    assert (
        got.line
        == "job 42: lost node on n2; not requeued: it was restarted 2 time(s) already (slurm.max_restarts=2)"
    )
    assert recovery.decide(lost, earlier[1:]).requeue  # another job's recoveries do not count


def test_no_healthy_nodes_left_is_one_line_and_no_requeue() -> None:
    partition = {"n1": "alloc", "n2": "alloc", "n3": "drain", "n4": "down*"}
    got = recovery.decide(facts(healthy=["n1"], excluded=["n3"], partition_nodes=partition), [])
    assert not got.requeue
    assert got.line == (
        "job 42: lost node on n2; no healthy nodes remain: the job needs 2, the partition has 1 usable "
        "outside the excluded (n2, n3)"
    )


@pytest.mark.parametrize(
    ("state", "ok"),
    [("idle", True), ("mix", True), ("alloc", True), ("comp", True), ("idle*", False), ("down", False),
     ("drain", False), ("drng", False), ("maint", False), ("fail", False)],
)  # fmt: skip
def test_usable_node_states(state: str, ok: bool) -> None:
    assert recovery.usable(state) is ok


def test_the_job_script_call_logs_the_recovery_and_reopens_the_record(tmp_path: Path) -> None:
    run = tmp_path / "version_0"
    records.amend(run, fields={"status": "failed", "error": "RuntimeError: lost a peer\ntraceback"})
    note = tmp_path / "note.json"
    note.write_text(
        json.dumps({"cause": "lost_peer", "hosts": ["n2"], "global_step": 5, "run_dir": str(run)})
    )
    sinfo = "n1 alloc\nn2 alloc*\nn3 idle\n"
    argv = [
        sys.executable, "-m", "itwinai_lightning", "slurm", "recover", str(tmp_path), "--job", "42",
        "--restart", "0", "--status", "1", "--nodes", "n1 n2", "--healthy", "n1", "--excluded", "",
        "--partition", sinfo, "--note", str(note), "--max-restarts", "3",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "requeue n2\n"
    assert done.stderr == "itwinai-lightning: job 42: lost node on n2; requeued without n2 (restart 1)\n"
    (entry,) = recovery.read_log(tmp_path / recovery.RECOVERY_LOG_NAME)
    assert (entry["restart"], entry["hosts"], entry["error"]) == (1, ["n2"], "RuntimeError: lost a peer")
    assert records.load(run)["status"] == "running"  # the requeued job adopts the record, not a new one


def test_the_job_script_call_with_bad_arguments_is_one_line_exit_2(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "itwinai_lightning", "slurm", "recover", str(tmp_path), "--job"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("itwinai-lightning: error: usage: itwinai-lightning slurm recover")


def test_restart_entry_counts_the_steps_and_seconds_lost() -> None:
    logged = {"job_id": "42", "restart": 1, "cause": "lost node", "hosts": ["n2"], "global_step": 30,
              "failed_at": 1000.0}  # fmt: skip
    entry = recovery.restart_entry(logged, "/ckpt/last.ckpt", global_step=24, now=1063.5)
    assert (entry["steps_lost"], entry["time_lost_s"], entry["checkpoint"]) == (6, 63.5, "/ckpt/last.ckpt")


def test_the_recovery_block_is_in_requeue_jobs_only_and_valid_bash(tmp_path: Path) -> None:
    from itwinai_lightning.slurm.cli import build
    from tests.slurm.conftest import TINY

    def render(*extra: str) -> str:
        script, _, _ = build([*TINY, *extra, "--trainer.default_root_dir", str(tmp_path / "run")])
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
        assert syntax.returncode == 0, syntax.stderr
        return script.read_text()

    text = render("--slurm.max_restarts", "5")
    assert (
        "--max-restarts 5" in text and 'scontrol update JobId="$SLURM_JOB_ID" ExcNodeList="$EXCLUDE"' in text
    )
    assert "srun --overlap" in text and 'wait "$LAUNCH"' in text
    launch = next(ln for ln in text.splitlines() if ln.startswith("srun ") and "itwinai_lightning fit" in ln)
    assert launch.endswith(" &")  # watched: ended when it outlives a rank's failure note
    for off in (["--slurm.max_restarts", "0"], ["--slurm.requeue", "false"]):
        plain = render(*off)
        assert "slurm recover" not in plain and "ITWINAI_FAILURE_NOTE" not in plain
    # torchrun restarts a failed worker group inside the allocation instead
    torchrun = render("--slurm.launcher", "torchrun", "--slurm.max_restarts", "2")
    assert (
        '-m torch.distributed.run --nnodes="$SLURM_JOB_NUM_NODES" --nproc-per-node=2 --max-restarts=2 '
        in torchrun
    )
    assert "--max-restarts" not in render("--slurm.launcher", "torchrun", "--slurm.max_restarts", "0")


def test_a_rank_that_raised_is_not_restarted() -> None:
    note = {"cause": "lost_peer", "hosts": ["n2"]}  # the peers saw it as a lost rank
    error = {"cause": "error", "rank": 1, "host": "n2"}
    got = recovery.decide(facts(note=note, error=error), [])
    assert not got.requeue
    assert got.line == (
        "job 42: not restarted: rank 1 on n2 raised an error in the run (it would fail again); "
        "see the job's .err file"
    )
    assert recovery.decide(facts(healthy=["n1"], note=note, error=error), []).requeue  # a lost node first


def test_ranks_leave_notes_the_job_script_reads(tmp_path: Path) -> None:
    """A real 2-rank fit (Lightning's launcher) where rank 1 raises: rank 1 leaves its error note, rank 0
    its lost-peer note naming rank 1's host."""
    from tests.foundation.conftest import fit_args, run_cli
    from tests.helpers.childenv import child_env

    note = tmp_path / ".failure-1-0.json"
    env = {**child_env(), "ITWINAI_FAILURE_NOTE": str(note)}
    args = fit_args(
        tmp_path, "--trainer.callbacks+=tests.foundation.weights.RaiseOnRank", "--trainer.callbacks.rank=1",
        "--trainer.callbacks.at_step=3",
    )  # fmt: skip
    run = run_cli([], args, env, tmp_path, timeout=240)
    assert run.returncode != 0
    error = json.loads((tmp_path / ".failure-1-0.json.error").read_text())
    assert (error["cause"], error["rank"]) == ("error", 1) and error["host"]
    lost = json.loads(note.read_text())  # rank 0 lost its peer at the next collective
    assert lost["cause"] == "lost_peer" and lost["rank"] == 0 and lost["hosts"] == [error["host"]]
