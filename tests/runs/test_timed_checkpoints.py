"""Checkpoints by time, written in the background and atomically (``TimedCheckpoint``,
``runs/checkpoint_io.BackgroundCheckpointIO``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from itwinai_lightning import records
from itwinai_lightning.runs.checkpoint_io import BackgroundCheckpointIO
from itwinai_lightning.runs.newest import latest_checkpoint
from itwinai_lightning.state_files import copied_to_cpu
from tests.foundation.conftest import fit_args, free_port, run_cli
from tests.helpers.engines import require_executable


def test_a_background_save_writes_the_state_as_it_was_when_saved(tmp_path: Path) -> None:
    io = BackgroundCheckpointIO()
    weights = torch.arange(1_000_000, dtype=torch.float32)
    with io.in_background():
        io.save_checkpoint({"w": weights, "step": 3}, tmp_path / "a.ckpt")
    weights.add_(1)  # training goes on while the writer writes
    io.teardown()
    saved = torch.load(tmp_path / "a.ckpt")
    assert saved["step"] == 3 and torch.equal(saved["w"], torch.arange(1_000_000, dtype=torch.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]  # no .partial left
    assert len(io.blocked_s) == 1 and len(io.written_s) == 1


def test_the_copy_keeps_every_container_and_reuses_the_previous_buffers() -> None:
    from collections import OrderedDict, namedtuple
    from dataclasses import dataclass

    Pair = namedtuple("Pair", "a b")

    @dataclass
    class Box:
        t: torch.Tensor

    weights = OrderedDict(w=torch.ones(3, 2))
    weights._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]  # as module.state_dict() has
    view = torch.arange(10.0)[2:5]  # a view: the copy holds only its 3 values
    state = {"sd": weights, "opt": [{"m": torch.zeros(4)}, Pair(view, 7)], "box": Box(torch.full((2,), 5.0))}
    first, buffers = copied_to_cpu(state)
    assert type(first["sd"]) is OrderedDict and first["sd"]._metadata == {"": {"version": 1}}
    assert isinstance(first["opt"][1], Pair) and first["opt"][1].b == 7
    assert first["opt"][1].a.untyped_storage().nbytes() == 3 * 4
    assert isinstance(first["box"], Box) and torch.equal(first["box"].t, torch.full((2,), 5.0))
    assert len(buffers) == 4
    state["sd"]["w"].add_(1)  # training goes on: the copy does not change
    assert torch.equal(first["sd"]["w"], torch.ones(3, 2))
    second, again = copied_to_cpu(state, buffers)
    assert [b.data_ptr() for b in again] == [b.data_ptr() for b in buffers]  # no new allocation
    assert torch.equal(second["sd"]["w"], torch.full((3, 2), 2.0))


def test_removing_an_older_checkpoint_is_queued_behind_the_write_in_flight(tmp_path: Path) -> None:
    release = threading.Event()

    class SlowWriter(BackgroundCheckpointIO):
        def _timed_write(self, checkpoint: dict, path: object, storage_options: object) -> None:
            release.wait(30)  # the write in flight takes as long as the test says
            super()._timed_write(checkpoint, path, storage_options)

    io = SlowWriter()
    io.save_checkpoint({"step": 1}, tmp_path / "timed-step=1.ckpt")
    with io.in_background():
        io.save_checkpoint({"step": 2}, tmp_path / "timed-step=2.ckpt")
    io.remove_checkpoint(tmp_path / "timed-step=1.ckpt")  # returns although step 2 is still being written
    assert io._pending is not None and len(io._removals) == 1  # the removal waits its turn in the writer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timed-step=1.ckpt"]
    release.set()
    io.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timed-step=2.ckpt"]
    with io.in_background():
        io.save_checkpoint({"step": 3}, tmp_path / "timed-step=3.ckpt")
    io.remove_checkpoint(tmp_path / "timed-step=3.ckpt")  # the file being written: waits for it, then removes
    assert io._pending is None and sorted(p.name for p in tmp_path.iterdir()) == ["timed-step=2.ckpt"]
    io.teardown()


def test_a_write_killed_midway_is_never_resumed_from(tmp_path: Path) -> None:
    """The process dies while the writer is writing: the newest complete checkpoint is the previous one."""
    child = textwrap.dedent(
        f"""
        import os, time, torch
        from pathlib import Path
        from itwinai_lightning.runs.checkpoint_io import BackgroundCheckpointIO
        run = Path({str(tmp_path)!r})
        io = BackgroundCheckpointIO()
        io.save_checkpoint({{"step": 1}}, run / "checkpoints" / "timed-step=1.ckpt")
        time.sleep(0.05)
        with io.in_background():
            big = {{"w": torch.ones(100_000_000), "step": 2}}
            io.save_checkpoint(big, run / "checkpoints" / "timed-step=2.ckpt")
        partial = run / "checkpoints" / "timed-step=2.ckpt.partial"
        while not partial.exists():
            time.sleep(0.001)
        os._exit(0)  # killed while writing
        """
    )
    subprocess.run([sys.executable, "-c", child], check=True, timeout=120)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["timed-step=1.ckpt", "timed-step=2.ckpt.partial"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "timed-step=1.ckpt"


def test_timed_checkpoints_under_torchrun_keep_the_newest_and_resume(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    require_executable("torchrun", "pip install torch")
    prefix = ["torchrun", "--nproc_per_node", "2", "--master_port", str(free_port())]
    timed = [
        "--trainer.max_epochs=3",  # 24 optimizer steps
        "--trainer.callbacks+=TimedCheckpoint",
        "--trainer.callbacks.every_min=0.001",  # every 60 ms of training, looked at every 2 steps
        "--trainer.callbacks.check_every_n_steps=2",
        "--trainer.callbacks.keep=2",
    ]
    run = run_cli(prefix, fit_args(tmp_path / "a", *timed), python_env, tmp_path / "a", timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    record = records.load(tmp_path / "a")
    run_dir = Path(record["run_dir"])
    files = sorted((run_dir / "checkpoints").glob("timed-step=*.ckpt"), key=lambda p: p.stat().st_mtime)
    section = record["sections"]["timed_checkpoints"]
    assert section["saves"] >= 3 and section["background"] is True, section
    assert [p.name for p in files] == section["kept"] and len(files) == 2  # the newest two
    steps = [int(p.stem.split("=")[1]) for p in files]
    assert all(step % 2 == 0 for step in steps) and steps[0] < steps[1] <= 24
    assert not list(run_dir.rglob("*.partial"))
    assert 0 < section["blocked_s_median"] <= section["blocked_s_max"]
    newest = torch.load(files[-1], weights_only=False)
    assert newest["global_step"] == steps[-1]

    # a new run resumes from the newest timed checkpoint and ends at the same step count
    resumed = run_cli(
        prefix, fit_args(tmp_path / "b", "--trainer.max_epochs=3", f"--ckpt_path={files[-1]}"), python_env,
        tmp_path / "b", timeout=240,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.launch(0)["steps"] == 24 and resumed.launch(1)["steps"] == 24


def test_a_torchrun_restart_resumes_from_the_newest_checkpoint(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    """torchrun --max-restarts 1: rank 1 is killed at step 12; the restarted group resumes from the newest
    timed checkpoint in the same run directory and ends with the uninterrupted run's 24 steps."""
    require_executable("torchrun", "pip install torch")
    prefix = [
        "torchrun",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--max-restarts",
        "1",
        "--monitor-interval",
        "0.2",
    ]
    args = fit_args(
        tmp_path,
        "--trainer.max_epochs=3",  # 24 optimizer steps
        "--trainer.callbacks+=TimedCheckpoint",
        "--trainer.callbacks.every_min=1e-6",  # due at every check: saves at steps 2, 4, ..., 12
        "--trainer.callbacks.check_every_n_steps=2",
        "--trainer.callbacks+=tests.foundation.weights.KillOnFirstAttempt",
        "--trainer.callbacks.rank=1",
        "--trainer.callbacks.at_step=12",
    )
    run = run_cli(prefix, args, python_env, tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.launch(0)["steps"] == 24 and run.launch(1)["steps"] == 24
    record = records.load(tmp_path)
    assert record["status"] == "completed"
    restarts = record["sections"]["restarts"]
    assert restarts["count"] == 1 and restarts["attempts"][0]["restart"] == 1
    resumed_from = Path(restarts["attempts"][0]["checkpoint"])
    assert resumed_from.parent == Path(record["run_dir"]) / "checkpoints"  # the same run directory
    step = int(resumed_from.stem.split("=")[1])
    # the save at step 12 waited for step 10's write, so 10 is complete; 12 is too if its write ended before
    # the kill (a half-written file is never resumed from)
    assert step in (10, 12)
    assert f"torchrun restart 1: resuming from {resumed_from}" in run.stdout
    assert len(list(tmp_path.glob("version_*"))) == 1  # one run, one directory, across the restart


def test_the_lost_peer_line_says_a_restart_follows(monkeypatch: pytest.MonkeyPatch) -> None:
    """(Under a loaded machine torchrun may stop rank 0 before it says the line: checked here directly.)"""
    from itwinai_lightning.strategies import launch_aware

    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert launch_aware._restart_note() == (
        " torchrun restarts the group (restart 2 of 3); it resumes from the run's newest complete checkpoint."
    )
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "3")
    assert launch_aware._restart_note() == ""  # no restart left


def _complete_fsdp(newest: Path) -> None:
    assert (newest / ".metadata").is_file() and (newest / "meta.pt").is_file()


def _complete_deepspeed(newest: Path) -> None:
    assert (newest / "latest").read_text() == "checkpoint"  # DeepSpeed's tag: written after every file
    assert not list(newest.rglob("*.partial"))
    older = newest.with_name("timed-step=15.ckpt") / "checkpoint"
    files = sorted(p.name for p in (newest / "checkpoint").iterdir())
    assert files == sorted(p.name for p in older.iterdir())  # every rank's files, as in the previous save


@pytest.mark.parametrize(
    ("strategy", "complete"), [("hpc_fsdp", _complete_fsdp), ("hpc_deepspeed", _complete_deepspeed)]
)
def test_sharded_checkpoints_in_the_background_hold_the_state_of_their_step(
    strategy: str, complete: Callable[[Path], None], tmp_path: Path, python_env: dict[str, str]
) -> None:
    """hpc_fsdp's sharded state (torch's distributed checkpoint) and hpc_deepspeed's files written by the
    writer thread while training goes on: resuming from the newest ends with the weights of a resume from
    the synchronous save of that step."""
    if strategy == "hpc_deepspeed":
        pytest.importorskip("deepspeed")
    args = [f"--trainer.strategy={strategy}", "--model.init_args.optimizer=adam", "--trainer.max_epochs=3"]
    timed = [
        "--trainer.callbacks+=TimedCheckpoint", "--trainer.callbacks.every_min=1e-6",  # due at every check
        "--trainer.callbacks.check_every_n_steps=5",
    ]  # fmt: skip
    finals = {}
    for background in ("true", "false"):
        out = tmp_path / background
        run = run_cli(
            [], fit_args(out, *args, *timed, f"--trainer.callbacks.background={background}"), python_env, out
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert "writes its checkpoints its own way" not in run.stderr
        record = records.load(out)
        section = record["sections"]["timed_checkpoints"]
        assert section["saves"] == 4 and section["kept"] == ["timed-step=15.ckpt", "timed-step=20.ckpt"]
        assert section["background"] is (background == "true"), section
        newest = Path(record["run_dir"]) / "checkpoints" / "timed-step=20.ckpt"
        complete(newest)
        assert latest_checkpoint(Path(record["run_dir"])) == newest
        resumed_out = tmp_path / f"resumed-{background}"
        resumed = run_cli([], fit_args(resumed_out, *args, f"--ckpt_path={newest}"), python_env, resumed_out)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert resumed.launch(0)["steps"] == 24
        finals[background] = resumed.weights(0)
    assert finals["true"].keys() == finals["false"].keys()
    assert all(torch.equal(finals["true"][k], finals["false"][k]) for k in finals["true"])
