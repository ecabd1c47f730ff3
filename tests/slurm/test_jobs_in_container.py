"""SLURM jobs whose ranks run inside the package's image (``slurm.container`` with podman): the same
training as outside it, preemption requeued from the batch shell, and the health check across ranks."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from itwinai_lightning import records
from itwinai_lightning.launch import container
from tests.helpers import image as images
from tests.slurm.conftest import STEPS_PER_EPOCH
from tests.slurm.test_jobs import _job_fields, _preempt_and_restart, _render_and_submit, _wait

pytestmark = [pytest.mark.slurm, pytest.mark.container, pytest.mark.slow]


def _in(image: images.Image) -> list[str]:
    """The job's Python: the image's, with podman (passed as ``python`` to :func:`_render_and_submit`)."""
    spec = json.dumps({"image": image.tag, "runtime": "podman"})
    return ["--slurm.container", spec, "--slurm.python", "python"]


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
    outside = _render_and_submit(Path("outside"), env, *same, cwd=tmp_path)
    inside = _render_and_submit(Path("inside"), env, *same, cwd=tmp_path, python=_in(image))
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
    job_id = _render_and_submit(Path("run"), env, *slow, cwd=tmp_path, python=_in(image))
    run_dir = tmp_path / "run"
    deadline = time.time() + 240
    while not list(run_dir.rglob("last.ckpt")):  # epoch 0 finished inside the container
        assert time.time() < deadline, "no epoch finished"
        assert _job_fields(slurm_env, job_id)["JobState"] in ("PENDING", "RUNNING", "CONFIGURING")
        time.sleep(0.3)
    _preempt_and_restart(slurm_env, job_id, deadline)  # USR1 to the job's steps: podman passes it on
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
