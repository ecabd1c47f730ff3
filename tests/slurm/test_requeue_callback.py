"""SlurmRequeue in one process: signal and time-limit paths, the safe-point checkpoint, resume, lookup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from itwinai_lightning import records
from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser
from itwinai_lightning.runs.newest import latest_checkpoint
from itwinai_lightning.slurm.requeue import EXIT_REQUEUE, SlurmRequeue, _job_end_time

STEPS = 4  # 64 samples / batch 16


class _SignalAt(pl.Callback):
    """Sends SIGUSR1 to this process at the end of batch ``at`` (as ``scancel --signal=USR1`` would)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.at:
            os.kill(os.getpid(), signal.SIGUSR1)


def _fit(
    run_dir: Path, callbacks: list[pl.Callback], ckpt: Path | None = None, accelerator: str = "cpu"
) -> pl.Trainer:
    trainer = pl.Trainer(
        default_root_dir=run_dir, max_epochs=2, accelerator=accelerator, devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks,
    )  # fmt: skip
    data = SpectrogramDataModule(num_samples=64, val_samples=16, batch_size=16, freq_bins=16, time_steps=16)
    trainer.fit(SpectrogramDenoiser(width=4, depth=2), datamodule=data, ckpt_path=ckpt)
    return trainer


def test_signal_sets_a_flag_and_the_next_batch_end_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = tmp_path / ".requeue"
    monkeypatch.setenv("ITWINAI_REQUEUE_FLAG", str(flag))
    with pytest.raises(SystemExit) as stop:
        _fit(tmp_path, [_SignalAt(STEPS + 2), SlurmRequeue(requeue="auto")])
    assert stop.value.code == EXIT_REQUEUE
    request = json.loads(flag.read_text())
    assert request["reason"] == "SIGUSR1" and request["global_step"] == STEPS + 2 and request["epoch"] == 1
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt == tmp_path / "checkpoints" / "requeue.ckpt" and Path(request["checkpoint"]) == ckpt
    assert not list(tmp_path.rglob("*.partial"))
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == STEPS + 2

    # resume: the rest of epoch 1 only, then done; the record tells where it resumed
    monkeypatch.delenv("ITWINAI_REQUEUE_FLAG")
    before = signal.getsignal(signal.SIGUSR1)
    trainer = _fit(tmp_path, [SlurmRequeue()], ckpt=ckpt)
    assert signal.getsignal(signal.SIGUSR1) == before  # our handler is removed at teardown
    assert trainer.global_step == 2 * STEPS and trainer.current_epoch == 2
    section = records.load(tmp_path)["sections"]["slurm"]
    assert [r["global_step"] for r in section["requeues"]] == [STEPS + 2]
    assert section["resumes"] == [
        {"restart": 0, "job_id": None, "checkpoint": str(ckpt), "epoch": 1, "global_step": STEPS + 2}
    ]


def test_time_limit_takes_the_same_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flag = tmp_path / ".requeue"
    monkeypatch.setenv("ITWINAI_REQUEUE_FLAG", str(flag))
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 600))  # 10 min left ...
    with pytest.raises(SystemExit):
        _fit(tmp_path, [SlurmRequeue(time_limit_margin_s=900)])  # ... and we want 15 min of margin
    request = json.loads(flag.read_text())
    assert request["reason"] == "time_limit" and request["global_step"] == 1
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "requeue.ckpt"


def test_latest_checkpoint_prefers_newest_and_skips_partial(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "missing") is None and latest_checkpoint(tmp_path) is None
    old, new = tmp_path / "a" / "last.ckpt", tmp_path / "checkpoints" / "requeue.ckpt"
    for i, path in enumerate([old, new]):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (1000 + i, 1000 + i))
    (tmp_path / "checkpoints" / "requeue.ckpt.partial").write_bytes(b"half")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    deepspeed = tmp_path / "ds" / "epoch=1.ckpt"  # a directory checkpoint (DeepSpeed)
    (deepspeed / "checkpoint").mkdir(parents=True)
    (deepspeed / "checkpoint" / "mp_rank_00_model_states.pt").write_bytes(b"x")
    os.utime(deepspeed, (900, 900))
    assert latest_checkpoint(tmp_path) == new
    os.utime(deepspeed, (2000, 2000))
    assert latest_checkpoint(tmp_path) == new  # DeepSpeed has not written its 'latest' yet: incomplete
    (deepspeed / "latest").write_text("checkpoint")
    os.utime(deepspeed, (2000, 2000))
    assert latest_checkpoint(tmp_path) == deepspeed
    sharded = tmp_path / "fsdp" / "epoch=2.ckpt"  # torch's distributed checkpoint writes .metadata last
    sharded.mkdir(parents=True)
    (sharded / "__0_0.distcp").write_bytes(b"x")
    os.utime(sharded, (3000, 3000))
    assert latest_checkpoint(tmp_path) == deepspeed
    (sharded / ".metadata").write_bytes(b"x")
    os.utime(sharded, (3000, 3000))
    assert latest_checkpoint(tmp_path) == sharded


def test_job_end_time_from_squeue(
    tmp_path: Path, slurm_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without SLURM_JOB_END_TIME (SLURM < 23) the time limit comes from the real squeue."""
    for key in ("SLURM_CONF", "PATH"):
        monkeypatch.setenv(key, slurm_env[key])
    monkeypatch.delenv("SLURM_JOB_END_TIME", raising=False)
    run = dict(env=slurm_env, capture_output=True, text=True, check=True, timeout=60)
    args = ["sbatch", "--parsable", "--time=7", f"--output={tmp_path}/%j.out", "--wrap", "sleep 90"]
    job = subprocess.run(args, **run).stdout.strip()
    try:
        state = ""
        for _ in range(120):
            state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], **run).stdout.strip()
            if state == "RUNNING":
                break
            time.sleep(0.5)
        assert state == "RUNNING", state
        end = _job_end_time(job)
        assert end is not None
        assert abs(end - (time.time() + 7 * 60)) < 60
    finally:
        subprocess.run(["scancel", job], env=slurm_env, check=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_requeue_and_resume_on_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same safe-point checkpoint with CUDA tensors; it resumes on the GPU to the exact step count."""
    monkeypatch.setenv("ITWINAI_REQUEUE_FLAG", str(tmp_path / ".requeue"))
    with pytest.raises(SystemExit):
        _fit(tmp_path, [_SignalAt(3), SlurmRequeue()], accelerator="gpu")
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 3
    monkeypatch.delenv("ITWINAI_REQUEUE_FLAG")
    trainer = _fit(tmp_path, [SlurmRequeue()], ckpt=ckpt, accelerator="gpu")
    assert trainer.global_step == 2 * STEPS and trainer.strategy.root_device.type == "cuda"
