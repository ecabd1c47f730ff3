"""What a hung run leaves behind (``monitoring/hang``): where each rank stopped, its stack file, the line.

The whole journey (a rank hung under torchrun and under Lightning's launcher) is in
``tests/foundation/test_failures.py::test_a_hung_rank_ends_the_run_naming_its_host_and_frame``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from itwinai_lightning.monitoring import hang


def _sleeper(release: threading.Event) -> None:
    release.wait(30)  # the line of this call is where the thread is stuck


def test_a_thread_stuck_in_the_users_code_is_stuck_there(tmp_path: Path) -> None:
    release = threading.Event()
    thread = threading.Thread(target=_sleeper, args=(release,))
    thread.start()
    try:
        time.sleep(0.2)
        frame = hang.thread_frame(thread.ident or -1)
        assert frame is not None
        stopped = hang.where_stopped(frame, rank=3, host="node7", waited_s=61.04)
        path = hang.write_rank_stack(tmp_path / "hang", stopped)
    finally:
        release.set()
        thread.join()
    line_no = _sleeper.__code__.co_firstlineno + 1
    assert stopped == hang.RankStack(3, "node7", "stuck", f"_sleeper (test_hang.py:{line_no})", None, 61.0)
    text = path.read_text()
    assert "in _sleeper" in text and "Thread 0x" in text  # every thread's stack, after the JSON line
    assert hang.read_rank_stacks(tmp_path / "hang") == {3: stopped}
    assert hang.thread_frame(thread.ident or -1) is None  # an ended thread has no frame


def test_the_line_names_the_stuck_the_silent_and_what_the_others_wait_in(tmp_path: Path) -> None:
    stacks = {
        0: hang.RankStack(0, "n1", "waiting", "x (a.py:1)", "all_reduce", 60.2),
        2: hang.RankStack(2, "n2", "stuck", "training_step (model.py:42)", None, 60.1),
    }
    line = hang.report_line(stacks, 4, 60, tmp_path)
    assert line == (
        "hang: no step finished for 60 s (hang_timeout_s); rank 2 on n2 is stuck in training_step "
        "(model.py:42); rank(s) 1, 3 wrote no stack (hung outside Python, or lost); the other ranks wait in "
        f"all_reduce. Every rank's stack: {tmp_path}"
    )
    waiting = {r: hang.RankStack(r, "n1", "waiting", "f (b.py:2)", "barrier", 5.0) for r in range(2)}
    assert "; every rank waits in barrier." in hang.report_line(waiting, 2, 5, tmp_path)


def test_a_half_written_stack_file_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "rank1.partial").write_text('{"rank": 1')
    (tmp_path / "rank2.txt").write_text("not json\n")
    assert hang.read_rank_stacks(tmp_path) == {}


def test_a_non_positive_hang_timeout_is_one_line_before_the_run(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    run = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "fit", "--config",
         str(REPO / "tests/foundation/tiny.yaml"),
         f"--trainer.default_root_dir={tmp_path}", "--trainer.callbacks+=HangWatchdog",
         "--trainer.callbacks.hang_timeout_s=0"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    ours = [ln for ln in run.stderr.splitlines() if ln.startswith("itwinai-lightning")]
    assert ours == ["itwinai-lightning: error: HangWatchdog.hang_timeout_s must be > 0 seconds, got 0.0"]
    assert "Traceback" not in run.stderr
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing started, nothing written


def test_a_fit_that_raised_leaves_no_watchdog_behind(tmp_path: Path) -> None:
    """A process that lives on after a failed fit (a notebook, a warm Ray actor) is not ended later."""
    import subprocess
    import sys
    import textwrap

    child = textwrap.dedent(
        f"""
        import threading, time
        import lightning.pytorch as pl
        from itwinai_lightning.callbacks import HangWatchdog
        from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser

        class Fails(SpectrogramDenoiser):
            def training_step(self, batch, batch_idx):
                if batch_idx == 3:
                    raise ValueError("boom")
                return super().training_step(batch, batch_idx)

        trainer = pl.Trainer(default_root_dir={str(tmp_path)!r}, max_epochs=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False,
                             callbacks=[HangWatchdog(hang_timeout_s=0.5, poll_s=0.05)])
        try:
            trainer.fit(Fails(width=8, depth=2), SpectrogramDataModule(num_samples=64, batch_size=8))
        except ValueError:
            pass
        time.sleep(2)  # four timeouts: a watchdog left running would have ended this process (124)
        print("alive", [t.name for t in threading.enumerate() if t.name.startswith("itwinai-hang")])
        """
    )
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "alive []"
