"""The tracking process: backends run outside the training process; a death on either side loses little."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser
from itwinai_lightning.loggers import MultiLogger

STEPS = 16  # 64 samples / batch 8 x 2 epochs


def _fit(run_dir: Path, logger: MultiLogger, callbacks: list[pl.Callback] | None = None) -> None:
    pl.seed_everything(7)
    trainer = pl.Trainer(
        default_root_dir=run_dir, max_epochs=2, logger=logger, log_every_n_steps=1, accelerator="cpu",
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        callbacks=callbacks or [],
    )  # fmt: skip
    data = SpectrogramDataModule(num_samples=64, val_samples=16, batch_size=8)
    trainer.fit(SpectrogramDenoiser(width=8, depth=2), data)


def _steps(run_dir: Path) -> list[int]:
    rows = csv.DictReader((run_dir / "metrics.csv").open())
    return [int(r["step"]) for r in rows if r["key"] == "train_loss"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class SignalTrackingProcess(pl.Callback):
    """Sends the tracking process the signals SLURM and a terminal send to a whole process group."""

    def __init__(self, logger: MultiLogger) -> None:
        self.logger = logger
        self.sent: list[int] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step != 3:
            return
        deadline = time.monotonic() + 120
        while not (self.logger._link and self.logger._link.is_open) and time.monotonic() < deadline:
            time.sleep(0.05)  # the child is up (it ignores the signals only once it runs)
        link = self.logger._link
        if link is not None and link.pid:
            for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
                os.kill(link.pid, sig)
                self.sent.append(sig)


def test_backends_run_in_a_child_process_that_ends_with_the_run(tmp_path: Path) -> None:
    logger = MultiLogger(backends=["csv", {"type": "tests.loggers.helpers:PidBackend", "name": "where"}])
    signaller = SignalTrackingProcess(logger)
    _fit(tmp_path, logger, [signaller])
    assert len(signaller.sent) == 3 and logger._link is not None
    assert logger._link.starts == 1  # SIGUSR1/SIGTERM/SIGINT are the trainer's business: no restart
    pid_text, thread = (tmp_path / "pid_where.txt").read_text().split()
    pid = int(pid_text)
    assert pid != os.getpid() and thread == "itwinai-logger-where"  # not in the training process
    assert logger._link is not None and logger._link.pid == pid
    deadline = time.monotonic() + 60
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)  # fit returned once it reported; its interpreter then exits by itself
    assert not _alive(pid)
    assert _steps(tmp_path) == list(range(STEPS))
    summary = json.loads((tmp_path / "tracking_summary.json").read_text())
    assert [r["backend"] for r in summary["backends"]] == ["csv", "where"]  # the link itself is not a row
    assert all(r["healthy"] and r["spooled"] == 0 for r in summary["backends"])


class KillTrackingProcess(pl.Callback):
    """SIGKILLs the tracking process after ``at_step`` steps."""

    def __init__(self, logger: MultiLogger, at_step: int) -> None:
        self.logger, self.at_step = logger, at_step
        self.killed: int | None = None
        self.step = 0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step < self.at_step or self.killed is not None:
            return
        deadline = time.monotonic() + 120
        done = Path(trainer.default_root_dir, "metrics.csv")
        while not (done.exists() and _steps(done.parent)) and time.monotonic() < deadline:
            time.sleep(0.1)  # a loaded machine may take a while to start the child
        link = self.logger._link
        if link is not None and link.pid:
            # every step logged so far reaches the CSV file (link linger 0.2 s + CSV linger 0.5 s)
            while (
                not set(range(trainer.global_step)) <= set(_steps(done.parent))
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            self.killed, self.step = link.pid, trainer.global_step
            os.kill(link.pid, signal.SIGKILL)


def test_killed_tracking_process_is_restarted_and_training_goes_on(tmp_path: Path) -> None:
    logger = MultiLogger(backends=["csv"], retry_interval_s=0.2, flush_timeout_s=60)
    killer = KillTrackingProcess(logger, at_step=4)
    _fit(tmp_path, logger, [killer])
    assert killer.killed is not None and logger._link is not None
    assert logger._link.starts == 2 and logger._link.pid != killer.killed  # a new child took over
    steps = _steps(tmp_path)
    assert steps[: killer.step] == list(range(killer.step))  # delivered by the first child before it died
    # everything sent after the death was spooled by the training side and delivered by the new child
    assert set(range(killer.step, STEPS)) <= set(steps) and len(steps) == len(set(steps))
    rows = {r["backend"]: r for r in json.loads((tmp_path / "tracking_summary.json").read_text())["backends"]}
    assert rows["csv"]["healthy"] and rows["csv"]["spooled"] == 0
    assert rows["tracking-process"]["errors"]  # the death is reported, not hidden


SELF_KILLING = textwrap.dedent(
    """
    import os, signal, sys
    import lightning.pytorch as pl
    from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser
    from itwinai_lightning.loggers import MultiLogger

    class Die(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 10:
                import time
                link = trainer.logger._workers[0]  # wait until the first 10 steps have left this process
                while not (link.backend.is_open and link._queue.empty() and not link._in_flight):
                    time.sleep(0.05)
                time.sleep(0.2)
                open(os.path.join(sys.argv[1], "child.pid"), "w").write(str(trainer.logger._link.pid))
                os.kill(os.getpid(), signal.SIGKILL)

    logger = MultiLogger(backends=["csv"])
    trainer = pl.Trainer(default_root_dir=sys.argv[1], max_epochs=2, logger=logger, log_every_n_steps=1,
                         enable_progress_bar=False, enable_checkpointing=False, callbacks=[Die()])
    trainer.fit(SpectrogramDenoiser(width=8, depth=2),
                SpectrogramDataModule(num_samples=64, val_samples=16, batch_size=8))
    """
)


def test_tracking_process_flushes_when_the_training_process_is_killed(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    script = tmp_path / "train.py"
    script.write_text(SELF_KILLING)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=python_env, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 60
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(child)  # the orphan noticed, flushed and left
    # every step that had left the training process reached the file (step 9 is logged after the
    # callbacks' on_train_batch_end, i.e. after the kill)
    assert set(range(9)) <= set(_steps(tmp_path)) and _steps(tmp_path) == sorted(set(_steps(tmp_path)))


def test_replay_hands_a_left_over_link_spool_to_the_backends(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    """The trainer died with records still queued for the tracking process: ``logs replay`` delivers them."""
    from itwinai_lightning.loggers.backends import RunContext, build_backend
    from itwinai_lightning.loggers.spool import Spool, spool_dir
    from itwinai_lightning.loggers.tracking_process import LINK_NAME, TrackingProcess

    link = TrackingProcess([build_backend("csv")], queue_size=10, retry_interval_s=1.0, flush_timeout_s=5.0)
    spool = Spool(spool_dir(tmp_path), LINK_NAME)
    spool.write_meta(
        {"spec": link.spec(), "context": RunContext(run_dir=str(tmp_path)).to_dict(), "state": {}}
    )
    spool.append(
        [{"kind": "metrics", "step": s, "time": 0.0, "data": {"train_loss": 1.0 / (s + 1)}} for s in range(7)]
    )
    cmd = [sys.executable, "-m", "itwinai_lightning", "logs", "replay", str(tmp_path)]
    proc = subprocess.run(cmd, env=python_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _steps(tmp_path) == list(range(7))
    assert not spool.path.exists() and not Spool(spool_dir(tmp_path), "csv").path.exists()  # all delivered


def test_csv_backend_reopening_an_empty_file_writes_the_header_first(tmp_path: Path) -> None:
    from itwinai_lightning.loggers.backends.base import RunContext
    from itwinai_lightning.loggers.backends.csv import CSVBackend

    (tmp_path / "metrics.csv").touch()  # a tracking process killed after open, before its first flush
    backend = CSVBackend()
    backend.open(RunContext(run_dir=str(tmp_path)))
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["step,key,value,time"]  # flushed at once
    backend.log_metrics({"train_loss": 0.5}, step=3, timestamp=1.0)
    backend._fh.flush()
    assert _steps(tmp_path) == [3]
    backend._fh.close()
