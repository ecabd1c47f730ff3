"""SLURM jobs whose ranks run inside the package's image (``slurm.container`` with podman): the same
training as outside it, preemption requeued from the batch shell, and the health check across ranks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from itwinai_lightning import records
from itwinai_lightning.launch import container
from tests.helpers import image as images
from tests.slurm.conftest import STEPS_PER_EPOCH, TINY, python_flag
from tests.slurm.test_jobs import _job_fields, _slurm, _wait

pytestmark = [pytest.mark.slurm, pytest.mark.container, pytest.mark.slow]


def _in(image: images.Image) -> list[str]:
    spec = json.dumps({"image": image.tag, "runtime": "podman"})
    return ["--slurm.container", spec, "--slurm.python", "python"]


def _submit(root: Path, env: dict[str, str], cwd: Path, *extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "slurm", *TINY, "--trainer.default_root_dir", str(root),
         "--slurm.time", "00:15:00", *extra, "--slurm.submit", "true"],
        env=env, capture_output=True, text=True, timeout=180, cwd=cwd,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"submitted job (\d+)", proc.stdout)
    assert match, proc.stdout
    return match.group(1)


def _weights(root: Path) -> dict[str, torch.Tensor]:
    record = records.load(root)
    last = Path(record["run_dir"]) / record["checkpoints"]["last"]
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 2 * STEPS_PER_EPOCH
    return state["state_dict"]  # type: ignore[no-any-return]


def test_a_two_task_job_in_the_container_trains_to_the_weights_of_one_outside(
    tmp_path: Path, slurm_env: dict[str, str], slurm_cluster: object, image: images.Image
) -> None:
    env = images.podman_env(slurm_env)
    same = ["--trainer.max_epochs", "2", "--trainer.strategy", "hpc_ddp"]
    outside = _submit(Path("outside"), env, tmp_path, *python_flag(), *same)
    inside = _submit(Path("inside"), env, tmp_path, *_in(image), *same)
    script = (tmp_path / "inside" / "slurm" / "job.sbatch").read_text()
    assert 'CONTAINER=(podman run --rm --network host --ipc host --pid host "${CONTAINER_USER[@]}"' in script
    # the run directory is below the submit directory: bound with it
    assert '-v "$PWD":"$PWD" -v /tmp:/tmp -w "$PWD"' in script and "--env 'SLURM_*'" in script
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script.split("CONTAINER=(")[1]  # in the batch shell
    assert _wait(slurm_cluster, outside) == "COMPLETED"
    assert _wait(slurm_cluster, inside) == "COMPLETED", (tmp_path / "inside" / "slurm").read_text()
    fields = _job_fields(slurm_env, inside)
    assert fields["ExitCode"] == "0:0" and fields["NumTasks"] == "2"
    record = records.load(tmp_path / "inside")
    assert (record["status"], record["world_size"], record["launcher"]) == ("completed", 2, "srun")
    assert record["strategy"] == "HPCDDPStrategy"  # what ran in the container
    ours, theirs = _weights(tmp_path / "inside"), _weights(tmp_path / "outside")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key  # the same wheel of torch: bit for bit


def test_a_preempted_job_in_the_container_is_requeued_by_the_batch_shell_and_resumes(
    tmp_path: Path, slurm_env: dict[str, str], slurm_cluster: object, image: images.Image
) -> None:
    epochs = 4
    env = images.podman_env(slurm_env)
    slow = ["--trainer.max_epochs", str(epochs), "--data.sleep_s", "0.02"]
    job_id = _submit(Path("run"), env, tmp_path, *_in(image), *slow)
    run_dir = tmp_path / "run"
    deadline = time.time() + 240
    while not list(run_dir.rglob("last.ckpt")):  # epoch 0 finished inside the container
        assert time.time() < deadline, "no epoch finished"
        assert _job_fields(slurm_env, job_id)["JobState"] in ("PENDING", "RUNNING", "CONFIGURING")
        time.sleep(0.3)
    _slurm(slurm_env, "scancel", "--signal=USR1", job_id)  # to the job's steps: podman passes it on
    while True:
        fields = _job_fields(slurm_env, job_id)
        if fields["Restarts"] == "1" and fields["JobState"] == "PENDING":
            break
        assert fields["JobState"] in ("RUNNING", "COMPLETING", "REQUEUED", "PENDING"), fields["JobState"]
        assert time.time() < deadline, fields
        time.sleep(0.5)
    released = time.time() + 60  # as in test_jobs: wait for slurmd to release the previous instance
    while _slurm(slurm_env, "sinfo", "-h", "-o", "%T").strip() != "idle":
        assert time.time() < released, "node never went idle after the requeue"
        time.sleep(0.5)
    time.sleep(2)
    _slurm(slurm_env, "scontrol", "update", f"JobId={job_id}", "StartTime=now")
    assert _wait(slurm_cluster, job_id) == "COMPLETED"
    out = next((run_dir / "slurm").glob(f"*-{job_id}.out")).read_text()
    assert f"requeueing job {job_id}" in out and f"job {job_id} restart 1" in out
    record = records.load(run_dir)
    (requeue,) = record["sections"]["slurm"]["requeues"]
    (resume,) = record["sections"]["slurm"]["resumes"]
    assert requeue["reason"] == "SIGUSR1" and 0 < requeue["global_step"] < epochs * STEPS_PER_EPOCH
    assert resume["checkpoint"] == requeue["checkpoint"] and resume["global_step"] == requeue["global_step"]
    assert record["status"] == "completed" and record["summary"]["epochs_completed"] == epochs


def test_the_health_check_runs_across_two_ranks_in_the_container(
    tmp_path: Path, slurm_env: dict[str, str], slurm_cluster: object, image: images.Image
) -> None:
    """``env --check`` under srun, each rank in the container the job script renders (its CONTAINER lines)."""
    prefix = container.prefix_lines({"image": image.tag, "runtime": "podman"}, False, [], [])
    script = tmp_path / "check.sh"
    check = 'exec srun --ntasks=2 "${CONTAINER[@]}" itwinai-lightning env --check --json'
    script.write_text("\n".join(["set -e", f"cd {tmp_path}", *prefix, check]))
    proc = subprocess.run(
        ["bash", str(script)], env=images.podman_env(slurm_env), capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (report["world_size"], report["launcher"], report["allreduce_ok"]) == (2, "srun", True), report
