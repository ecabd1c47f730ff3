"""Real jobs on the one-node SLURM: a 2-task DDP fit, and a preempted job that requeues and resumes."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from itwinai_lightning import records
from tests.slurm.conftest import REPO, STEPS_PER_EPOCH, TINY, python_flag

pytestmark = pytest.mark.slurm


def _slurm(env: dict[str, str], *args: str) -> str:
    return subprocess.run(list(args), env=env, capture_output=True, text=True, check=True, timeout=60).stdout


def _job_fields(env: dict[str, str], job_id: str) -> dict[str, str]:
    out = _slurm(env, "scontrol", "show", "job", job_id, "-o")
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


def _render_and_submit(
    run_dir: Path, env: dict[str, str], *extra: str, cwd: Path = REPO, python: list[str] | None = None
) -> str:
    """Render and submit from ``cwd`` (the submit directory); ``run_dir`` may be relative to it. ``python``:
    how the job finds its Python (default: this interpreter, :func:`python_flag`)."""
    python = python_flag() if python is None else python
    proc = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "slurm", *TINY, *python,
         "--trainer.default_root_dir", str(run_dir), "--slurm.time", "00:15:00", *extra,
         "--slurm.submit", "true"],
        env=env, capture_output=True, text=True, timeout=180, cwd=cwd,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"submitted job (\d+)", proc.stdout)
    assert match, proc.stdout
    return match.group(1)


def _preempt_and_restart(env: dict[str, str], job_id: str, deadline: float) -> None:
    """``scancel --signal=USR1`` (to the job's steps), wait for the requeue, then start the job again."""
    _slurm(env, "scancel", "--signal=USR1", job_id)
    while True:  # requeued: back to PENDING with one restart
        fields = _job_fields(env, job_id)
        if fields["Restarts"] == "1" and fields["JobState"] == "PENDING":
            break
        assert fields["JobState"] in ("RUNNING", "COMPLETING", "REQUEUED", "PENDING"), fields["JobState"]
        assert time.time() < deadline, fields
        time.sleep(0.5)
    # Skip SLURM's requeue hold (BeginTime), but only once slurmd has released the previous instance:
    # a credential issued within the same second as the requeue's revocation is refused ("Job credential
    # revoked") and the job FAILS -- the race SLURM's own hold avoids.
    released = time.time() + 60
    while _slurm(env, "sinfo", "-h", "-o", "%T").strip() != "idle":
        assert time.time() < released, "node never went idle after the requeue"
        time.sleep(0.5)
    time.sleep(2)
    _slurm(env, "scontrol", "update", f"JobId={job_id}", "StartTime=now")


def _val_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, val_loss) from every TensorBoard event file of the run (all attempts)."""
    points = []
    for events in run_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "val_loss" in acc.Tags()["scalars"]:
            points += [(e.step, e.value) for e in acc.Scalars("val_loss")]
    return sorted(points)


def _wait(slurm_cluster: object, job_id: str, timeout: float = 240) -> str:
    return slurm_cluster.wait_job(job_id, timeout=timeout)  # type: ignore[attr-defined]


def test_two_task_ddp_fit_job(tmp_path: Path, slurm_env: dict[str, str], slurm_cluster: object) -> None:
    """Submitted into a root that already holds an earlier run's checkpoint: the job never resumes from
    it (it trains from step 0 to a fresh run's step count) and names its own checkpoints."""
    run_dir = tmp_path / "run"
    earlier = run_dir / "version_0" / "checkpoints" / "last.ckpt"
    earlier.parent.mkdir(parents=True)
    (run_dir / "latest").symlink_to("version_0")
    torch.save({"epoch": 1, "global_step": STEPS_PER_EPOCH, "state_dict": {}}, earlier)  # a laptop test's
    # rendered and submitted from the project directory with a relative root, as on a login node
    job_id = _render_and_submit(Path("run"), slurm_env, "--trainer.max_epochs", "2", cwd=tmp_path)
    script = (run_dir / "slurm" / "job.sbatch").read_text()
    assert str(tmp_path) not in script + (run_dir / "slurm" / "config.yaml").read_text()  # portable
    assert 'cd "${SLURM_SUBMIT_DIR:-.}"' in script and "RUN_DIR=run\n" in script
    assert _wait(slurm_cluster, job_id) == "COMPLETED", (run_dir / "slurm").glob("*.err")
    fields = _job_fields(slurm_env, job_id)
    assert fields["ExitCode"] == "0:0" and fields["Restarts"] == "0" and fields["NumTasks"] == "2"

    out = (run_dir / "slurm" / f"itwinai-fit-{job_id}.out").read_text()
    assert f"job {job_id} restart 0" in out and "resume from: <none>" in out
    record = records.load(run_dir)
    assert (record["world_size"], record["num_nodes"], record["launcher"]) == (2, 1, "srun")
    assert record["config"]["trainer"]["max_epochs"] == 2
    # a run directory of its own beside the earlier run's, agreed by both tasks (srun job and step)
    assert record["run_dir"] == str((run_dir / "version_1").resolve())
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith("version_")) == [
        "version_0",
        "version_1",
    ]
    last = run_dir / "version_1" / record["checkpoints"]["last"]
    assert last != earlier and last.parent == run_dir / "version_1" / "checkpoints"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 2 * STEPS_PER_EPOCH  # from step 0, as a fresh run
    assert [s for s, _ in _val_losses(run_dir)] == [STEPS_PER_EPOCH - 1, 2 * STEPS_PER_EPOCH - 1]
    assert "requeues" not in record["sections"].get("slurm", {})
    assert (run_dir / f".job-{job_id}").is_file()  # the marker its requeues resume after


def test_predict_job_writes_every_prediction_once(
    tmp_path: Path, slurm_env: dict[str, str], slurm_cluster: object
) -> None:
    """--slurm.command predict: 2 srun tasks predict 37 inputs from a checkpoint, in input order, equal to
    one process; the job adds the writer when the config has none."""
    from itwinai_lightning import inference

    fit_dir = tmp_path / "fit"
    small = [
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        str(fit_dir),
        "--trainer.devices",
        "1",
    ]
    fit = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "fit", *TINY, *small, "--trainer.strategy", "auto"],
        env=slurm_env, capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = str(next(fit_dir.rglob("last.ckpt")))
    data = ["--data.val_samples", "37", "--data.batch_size", "4"]
    one = tmp_path / "one"
    single = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "predict", *TINY, *data, "--trainer.devices", "1",
         "--trainer.strategy", "auto", "--trainer.default_root_dir", str(one), "--ckpt_path", ckpt,
         "--trainer.callbacks+=itwinai_lightning.inference.ShardedPredictionWriter"],
        env=slurm_env, capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]

    run_dir = tmp_path / "run"
    job_id = _render_and_submit(run_dir, slurm_env, *data, "--slurm.command", "predict", "--ckpt_path", ckpt)
    assert _wait(slurm_cluster, job_id) == "COMPLETED", list((run_dir / "slurm").glob("*.err"))
    fields = _job_fields(slurm_env, job_id)
    assert fields["ExitCode"] == "0:0" and fields["NumTasks"] == "2"
    got = inference.read(str(run_dir / "latest" / "predictions"))
    assert isinstance(got, torch.Tensor) and got.shape[0] == 37
    torch.testing.assert_close(got, inference.read(str(one / "latest" / "predictions")), atol=1e-6, rtol=1e-5)
    record = records.load(run_dir)
    assert (record["status"], record["world_size"], record["launcher"]) == ("completed", 2, "srun")
    assert record["summary"]["total_samples"] == 37


def test_preempted_job_requeues_and_resumes_exactly(
    tmp_path: Path, slurm_env: dict[str, str], slurm_cluster: object
) -> None:
    epochs = 5
    run_dir = tmp_path / "run"
    # ~1 s of data loading per epoch, so the signal lands mid-run
    slow = [
        "--trainer.max_epochs",
        str(epochs),
        "--data.sleep_s",
        "0.02",
        "--trainer.callbacks+=TimingMonitor",
    ]
    job_id = _render_and_submit(run_dir, slurm_env, *slow)
    deadline = time.time() + 180
    while not list(run_dir.rglob("last.ckpt")):  # epoch 0 finished: training is under way
        assert time.time() < deadline, "no epoch finished"
        assert _job_fields(slurm_env, job_id)["JobState"] in ("PENDING", "RUNNING", "CONFIGURING")
        time.sleep(0.3)
    _preempt_and_restart(slurm_env, job_id, deadline)
    assert _wait(slurm_cluster, job_id) == "COMPLETED"
    fields = _job_fields(slurm_env, job_id)
    assert fields["ExitCode"] == "0:0" and fields["Restarts"] == "1"

    total = epochs * STEPS_PER_EPOCH
    record = records.load(run_dir)
    assert [p.name for p in run_dir.glob("version_*")] == ["version_0"]  # the requeue continued its directory
    # the requeue exit left the record running, the resumed job adopted it and ended it
    assert (record["status"], record["error"]) == ("completed", None)
    section = record["sections"]["slurm"]
    (requeue,) = section["requeues"]
    (resume,) = section["resumes"]
    assert requeue["reason"] == "SIGUSR1" and requeue["job_id"] == job_id and requeue["restart"] == 0
    assert 0 < requeue["global_step"] < total, "preempted mid-run"
    assert requeue["rank_steps"] == [requeue["global_step"]] * 2  # both tasks stopped at the same step
    assert resume["restart"] == 1 and resume["checkpoint"] == requeue["checkpoint"]
    assert resume["global_step"] == requeue["global_step"] and resume["epoch"] == requeue["epoch"]
    # TimingMonitor kept its state across the requeue: the totals cover every epoch of both jobs,
    # the epoch cut by the requeue included (its steps and samples from before and after)
    summary = record["summary"]
    assert [e["epoch"] for e in record["epochs"]] == list(range(epochs))
    assert all(e["steps"] == STEPS_PER_EPOCH and e["samples"] == 128 for e in record["epochs"])
    assert summary["epochs_completed"] == epochs and summary["total_samples"] == epochs * 128
    elapsed = [e["elapsed_s"] for e in record["epochs"]]
    assert elapsed == sorted(elapsed) and summary["fit_wall_time_s"] >= elapsed[-1]
    assert summary["fit_wall_time_s"] >= sum(e["wall_time_s"] for e in record["epochs"])
    assert summary["monitor"] == "val_loss"
    assert summary["best_metric"] == min(e["metrics"]["val_loss"] for e in record["epochs"])

    out = (run_dir / "slurm" / f"itwinai-fit-{job_id}.out").read_text()
    assert "resume from: <none>" in out and f"resume from: {requeue['checkpoint']}" in out
    assert "requeueing job" in out
    assert not list(run_dir.rglob("hpc_ckpt_*.ckpt")), "Lightning's own auto-requeue must stay off"
    # exactly `epochs` epochs: final step count, and one validation per epoch over both attempts
    state = torch.load(next(run_dir.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert state["global_step"] == total and state["epoch"] == epochs - 1
    steps = [s for s, _ in _val_losses(run_dir)]
    assert steps == [STEPS_PER_EPOCH * (e + 1) - 1 for e in range(epochs)], steps


def test_a_resubmitted_run_continues_in_its_directory_and_a_changed_one_is_refused(
    tmp_path: Path, slurm_env: dict[str, str], slurm_cluster: object
) -> None:
    """``slurm --resume DIR``: the rule of ``fit --resume`` before anything is submitted; the job continues
    the run in DIR from its newest checkpoint to the new stopping point."""
    root = tmp_path / "run"
    first = _render_and_submit(root, slurm_env, "--trainer.max_epochs", "1")
    assert _wait(slurm_cluster, first) == "COMPLETED"
    run = root / "version_0"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == STEPS_PER_EPOCH

    changed = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "slurm", *TINY, *python_flag(), "--model.width", "16",
         "--resume", str(run), "--slurm.submit", "true"],
        env=slurm_env, capture_output=True, text=True, timeout=180, cwd=REPO,
    )  # fmt: skip
    assert changed.returncode == 2 and changed.stdout == ""  # nothing rendered, nothing submitted
    (line,) = changed.stderr.strip().splitlines()
    assert "its run trained with another model.init_args.width (8, now 16)" in line

    again = _render_and_submit(root, slurm_env, "--trainer.max_epochs", "3", "--resume", str(run))
    assert _wait(slurm_cluster, again) == "COMPLETED", list((run / "slurm").glob("*.err"))
    assert sorted(p.name for p in root.glob("version_*")) == ["version_0"]  # the same run, continued
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 3 * STEPS_PER_EPOCH and state["epoch"] == 2
    out = (run / "slurm" / f"itwinai-fit-{again}.out").read_text()
    assert f"job {again} restart 0" in out
    assert records.load(run)["status"] == "completed"
