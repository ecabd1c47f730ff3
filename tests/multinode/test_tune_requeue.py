"""A tune job preempted mid-sweep on the 2-node cluster: requeued, and the sweep resumes where it stopped.

The preemption signal of a tune job goes to the batch shell (``--signal=B:USR1@N``; here ``scancel -b``),
which forwards it to the tune driver: Ray Tune saves the sweep's state and ends, the job is requeued, and
the requeued job resumes the sweep (``--tune.resume true``).
"""

from __future__ import annotations

import csv
import json
import pickle
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.cluster import Cluster
from tests.helpers.engines import require_module
from tests.multinode.test_journeys import TUNE_TINY, _submit

pytestmark = [pytest.mark.slurm, pytest.mark.multinode]
EPOCHS = 6


def _starts(trial_dir: Path) -> list[dict]:
    path = trial_dir / "params.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _checkpointed(sweep: Path) -> set[str]:
    """Ids of the trials with a checkpoint (Ray's trial directories: ``run_trial_<id>_<n>_<params>``)."""
    return {"_".join(c.parent.name.split("_")[2:4]) for c in sweep.glob("run_trial_*/checkpoint_0*")}


def test_a_preempted_sweep_is_requeued_and_resumed(
    two_nodes: Cluster, node_env: dict[str, str], tmp_path: Path
) -> None:
    require_module("ray", 'pip install "itwinai-lightning[ray]"')
    out = tmp_path / "out"
    search = tmp_path / "search.yaml"
    tune = {
        "search_space": {"model.init_args.lr": {"grid": [0.01, 0.001]}},
        "num_samples": 1, "workers_per_trial": 1, "cpus_per_worker": 1, "output_dir": str(out),
        "name": "sweep", "scheduler": {"type": "asha", "reduction_factor": 2, "grace_period": 1},
        "metric": "val_loss", "mode": "min",
    }  # fmt: skip
    search.write_text(yaml.safe_dump({"tune": tune}))
    job = _submit(
        two_nodes, node_env, "--config", str(TUNE_TINY), "--config", str(search),
        "--trainer.max_epochs", str(EPOCHS), "--data.init_args.shuffle", "false",
        "--data.init_args.sleep_s", "0.01", "--trainer.default_root_dir", str(tmp_path / "run"),
        "--slurm.command", "tune", "--slurm.nodes", "2",
    )  # fmt: skip
    trials = out / "sweep" / "trials"
    deadline = time.time() + 300
    # both trials under way, each past its first checkpoint (an epoch reported)
    while len(_checkpointed(out / "sweep")) < 2:
        assert time.time() < deadline, "the sweep never got under way"
        assert two_nodes.job_state(job) in ("PENDING", "RUNNING", "CONFIGURING")
        time.sleep(0.3)
    two_nodes.run("scancel", "-b", "--signal=USR1", job)  # what --signal=B:USR1@N does before the limit
    while not (two_nodes.job_state(job) == "PENDING" and "Restarts=1" in two_nodes.run(
            "scontrol", "show", "job", job, "-o").stdout):  # fmt: skip
        assert time.time() < deadline, two_nodes.job_state(job)
        time.sleep(0.5)
    interrupted = {t.name: _starts(t) for t in trials.iterdir()}
    checkpointed = _checkpointed(out / "sweep")
    two_nodes.wait_idle(60)  # the previous instance released both nodes (see tests/slurm/test_jobs.py)
    time.sleep(2)
    two_nodes.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    job_dir = tmp_path / "run" / "slurm"
    state = two_nodes.wait_job(job, timeout=400)
    assert state == "COMPLETED", [p.read_text()[-3000:] for p in job_dir.glob("*.err")]

    log = next(job_dir.glob("*.out")).read_text()
    assert "tune: the sweep stopped to be requeued" in log and "sweep state saved; requeueing job" in log
    assert "resuming the sweep" in log
    rows = list(csv.DictReader((out / "sweep" / "results.csv").open()))
    assert len(rows) == 2  # exactly num_samples x grid: no trial added, none lost
    assert sorted(float(r["model.init_args.lr"]) for r in rows) == [0.001, 0.01]
    assert {r["status"] for r in rows} <= {"completed", "stopped_early"}  # ASHA may stop the worse one
    for trial_dir in trials.iterdir():
        starts = _starts(trial_dir)
        fresh = [s["restored"] for s in starts].count(False)
        # a trial with a checkpoint is never started again from scratch (one without starts over, once)
        assert fresh == 1 if trial_dir.name in checkpointed else fresh <= 2, (trial_dir.name, starts)
        before = interrupted.get(trial_dir.name, [])
        if len(starts) > len(before) and trial_dir.name in checkpointed:  # interrupted: continued from it
            again = starts[len(before)]
            assert again["restored"] and again["start_epoch"] > 0
    assert any(len(_starts(t)) > len(interrupted.get(t.name, [])) for t in trials.iterdir())
    # ASHA's rungs survived the restore: every trial is recorded at the first milestone (epoch 1), also a
    # trial that passed it before the requeue
    kept = pickle.loads((out / "sweep" / "asha-state.pkl").read_bytes())
    (bracket,) = kept["_brackets"]
    rung_one = next(recorded for milestone, recorded in bracket._rungs if milestone == 1)
    assert sorted(rung_one) == sorted(t.name for t in trials.iterdir())
