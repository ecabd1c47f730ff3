"""One run, one directory: numbering, ``latest``, the checkpoint's run, and agreement between ranks that
were started side by side (real torchrun and Lightning's own launcher)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from itwinai_lightning import records
from itwinai_lightning.errors import UserError
from itwinai_lightning.runs import run_dir
from itwinai_lightning.runs.run_dir import choose, claimed, launch_key, new_version, owning_run

SMALL = ["--config", "configs/quickstart.yaml", "--trainer.max_epochs", "1", "--data.num_samples", "64",
         "--data.val_samples", "32", "--data.batch_size", "16",
         "--trainer.enable_progress_bar", "false"]  # fmt: skip


def test_new_runs_are_numbered_and_latest_follows(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "x"
    assert [new_version(root).name for _ in range(3)] == ["version_0", "version_1", "version_2"]
    assert os.readlink(root / "latest") == "version_2"  # relative: the root can move
    (root / "version_7").mkdir()
    assert new_version(root).name == "version_8"  # one above the highest, never a gap refilled
    assert [p.name for p in run_dir.version_dirs(root)] == [f"version_{n}" for n in (0, 1, 2, 7, 8)]


def test_a_checkpoint_belongs_to_the_run_directory_it_sits_in(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ckpt = root / "version_3" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    assert owning_run(ckpt, root) == root / "version_3"
    assert owning_run(tmp_path / "elsewhere.ckpt", root) is None  # fine-tuning from outside: a new run
    assert owning_run(root / "loose.ckpt", root) is None
    placed = choose(root, explicit=None, ckpt_path=str(ckpt), stage="fit", env={})
    assert placed.path == root / "version_3" and "continues" in str(placed.note)
    # validate/test/predict from that checkpoint never write into the fit's directory
    assert choose(root, explicit=None, ckpt_path=str(ckpt), stage="test", env={}).path == root / "version_4"
    assert choose(root, explicit=str(tmp_path / "mine"), ckpt_path=None, stage="fit", env={}).path == (
        tmp_path / "mine"
    )


def test_the_pin_of_the_launching_process_counts_only_under_its_own_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "version_5").mkdir(parents=True)
    pinned = {run_dir.PIN_ENV: str(root / "version_5"), "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    assert choose(root, explicit=None, ckpt_path=None, stage="fit", env=pinned).path == root / "version_5"
    # a pin left over from a run under another root is not this run's directory
    other = tmp_path / "other"
    assert choose(
        other, explicit=None, ckpt_path=None, stage="fit", env=pinned | {"WORLD_SIZE": "1"}
    ).path == (other / "version_0")


def test_launch_identity_is_the_launchers_own_id() -> None:
    keys = ("SLURM_JOB_ID", "SLURM_STEP_ID")
    assert launch_key("srun", keys, {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0"}, "x") == ("srun/42/0", True)
    run_id = ("TORCHELASTIC_RUN_ID",)
    assert launch_key("torchrun", run_id, {"TORCHELASTIC_RUN_ID": "abc"}, "h:1/2") == ("torchrun/abc", True)
    # an MPI job id names one launch while it runs, but may come back later: only a fresh claim counts
    mpi = ("PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid")
    assert launch_key("mpirun", mpi, {"OMPI_MCA_ess_base_jobid": "77"}, "x") == ("mpirun//77", False)
    # torchrun without --rdzv-id says "none" on every launch: not an identity, only a fresh claim counts
    assert launch_key("torchrun", run_id, {"TORCHELASTIC_RUN_ID": "none"}, "h:1/2") == (
        "torchrun/h:1/2",
        False,
    )


def test_ranks_agree_through_rank_zeros_claim(tmp_path: Path) -> None:
    root = tmp_path / "root"
    found: list[Path] = []
    waiter = threading.Thread(target=lambda: found.append(claimed(root, 1, "srun/7/0", True).path))
    waiter.start()  # rank 1 starts first and waits for the name
    time.sleep(0.3)
    first = claimed(root, 0, "srun/7/0", True)
    waiter.join(10)
    assert found == [first.path] == [root / "version_0"] and first.note is None
    # a requeued job (same job and step) continues its directory, and says so
    again = claimed(root, 0, "srun/7/0", True)
    assert again.path == root / "version_0" and "continues its run directory" in str(again.note)
    assert claimed(root, 0, "srun/8/0", True).path == root / "version_1"  # another job: a new run


def test_a_stale_claim_of_a_repeating_identity_is_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    old = claimed(root, 0, "torchrun/h:1/2", False).path
    claim = next((root / run_dir.CLAIMS).glob("*.json"))
    os.utime(claim, (time.time() - 2 * run_dir.FRESH_S,) * 2)  # written by a launch long ago
    monkeypatch.setattr(run_dir, "WAIT_S", 0.5)
    with pytest.raises(UserError, match=r"rank 1: rank 0 did not name this run's directory .* --run_dir"):
        claimed(root, 1, "torchrun/h:1/2", False)
    new = claimed(root, 0, "torchrun/h:1/2", False).path  # rank 0 of a new launch: a new run
    assert new != old and claimed(root, 1, "torchrun/h:1/2", False).path == new


def _tree(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


@pytest.mark.slow
def test_torchrun_ranks_write_one_run_directory(tmp_path: Path) -> None:
    from tests.helpers.childenv import REPO, child_env

    root = tmp_path / "root"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "itwinai_lightning", "fit", *SMALL, "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.default_root_dir", str(root)]  # fmt: skip
    for _ in range(2):
        proc = subprocess.run(cmd, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert _tree(root) == ["latest", "version_0", "version_1"]  # one directory per launch, not per rank
    claims = [json.loads(p.read_text()) for p in (root / run_dir.CLAIMS).glob("*.json")]
    assert sorted(c["run_dir"] for c in claims) == ["version_0", "version_1"]
    rec = records.load(root)
    assert rec["world_size"] == 2 and rec["launcher"] == "torchrun" and rec["status"] == "completed"
    assert rec["run_dir"] == str((root / "version_1").resolve())


@pytest.mark.slow
def test_lightnings_own_launcher_starts_its_ranks_into_the_same_directory(tmp_path: Path) -> None:
    from tests.helpers.childenv import REPO, child_env

    root = tmp_path / "root"
    cmd = [sys.executable, "-m", "itwinai_lightning", "fit", *SMALL, "--trainer.devices", "2",
           "--trainer.strategy", "ddp", "--trainer.default_root_dir", str(root)]  # fmt: skip
    proc = subprocess.run(cmd, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _tree(root) == ["latest", "version_0"]
    rec = records.load(root / "version_0")
    assert rec["world_size"] == 2 and rec["status"] == "completed"
    assert sorted(p.name for p in (root / "version_0" / "checkpoints").iterdir()) == [
        "epoch=0-step=2.ckpt",
        "last.ckpt",
    ]
