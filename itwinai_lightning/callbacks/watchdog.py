"""``HangWatchdog``: a run in which no rank finishes a step for ``hang_timeout_s`` ends, saying which rank
is stuck, on which host, in which frame, instead of sitting in a collective until the job's time limit.

A batch that ends (train, validation, test, predict) is the heartbeat: one ``time.monotonic()`` stored, no
lock, no communication (its cost on the step is measured in ``benchmarks/bench_watchdog.py``). A daemon
thread per rank wakes every ``poll_s``; once a heartbeat has been seen (the first step, with its compile
and rendezvous, is not timed) and none came for ``hang_timeout_s``, every rank writes its stacks to
``<run_dir>/hang/rank<N>.txt`` (:mod:`itwinai_lightning.monitoring.hang`), rank 0 waits up to ``grace_s``
for the others' files, prints one line (``itwinai-lightning: error: hang: ... rank 1 on node2 is stuck in
training_step (model.py:42) ...``), records it in the RunRecord (``status: failed``, section ``hang``) and
every rank exits with status 124, so the launcher (torchrun, srun, mpirun) ends the job.

Logs nothing to the loggers; the RunRecord's ``hang`` section holds ``timeout_s`` (s), ``ranks`` (each
rank's ``state``, ``host``, ``frame``, ``collective``, ``waited_s`` in s) and ``line``.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from itwinai_lightning import compat, per_trainer, records
from itwinai_lightning.errors import UserError
from itwinai_lightning.launch import failure_note
from itwinai_lightning.monitoring import hang


class HangWatchdog(Callback):
    """End a hung run with one line naming the stuck rank (see the module docstring).

    Args:
        hang_timeout_s: seconds without a finished batch on this rank before the run counts as hung.
        poll_s: how often the watchdog thread looks (default: a tenth of the timeout, at most 10 s).
        grace_s: how long rank 0 waits for the other ranks' stack files before it reports.
    """

    def __init__(
        self, hang_timeout_s: float = 1200.0, poll_s: float | None = None, grace_s: float = 15.0
    ) -> None:
        if hang_timeout_s <= 0:
            raise UserError(f"HangWatchdog.hang_timeout_s must be > 0 seconds, got {hang_timeout_s!r}")
        self.hang_timeout_s = float(hang_timeout_s)
        self.poll_s = float(poll_s) if poll_s else min(10.0, self.hang_timeout_s / 10)
        self.grace_s = float(grace_s)
        self._beat: float | None = None
        self._stop: threading.Event | None = None  # made in setup: the callback stays picklable until then
        self._thread: threading.Thread | None = None
        self._trainer: pl.Trainer | None = None
        self._training_thread = threading.get_ident()

    # -- heartbeat ------------------------------------------------------------------------------------
    def _tick(self, *_: Any) -> None:
        self._beat = time.monotonic()

    on_train_batch_end = on_validation_batch_end = on_test_batch_end = on_predict_batch_end = _tick  # type: ignore[assignment]
    on_train_epoch_end = on_validation_end = on_save_checkpoint = _tick  # type: ignore[assignment]

    # -- lifetime -------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        self._training_thread = threading.get_ident()  # the main thread, or a Tune trial's thread
        self._beat = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, args=(self._stop,), name="itwinai-hang-watchdog", daemon=True
        )
        self._thread.start()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stand_down()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Lightning calls no teardown hook after an exception: a process that lives on (a notebook, a warm
        # Ray actor) must not keep a watchdog whose last heartbeat only grows older
        self._stand_down()

    def _stand_down(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.poll_s + 1)
        self._thread = None

    def __getstate__(self) -> dict[str, Any]:
        """Shipped to other processes (spawn, Ray) without its thread, event and Trainer."""
        state = dict(self.__dict__)
        state.update(_stop=None, _thread=None, _trainer=None)
        return state

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(self.poll_s):
            beat = self._beat
            if beat is not None and time.monotonic() - beat > self.hang_timeout_s:
                self._fire(time.monotonic() - beat)
                return

    # -- a hang ---------------------------------------------------------------------------------------
    def _fire(self, waited_s: float) -> None:
        try:
            self._say(waited_s)
        finally:  # whatever went wrong in saying it, a hung rank must not stay
            os._exit(hang.EXIT_HANG)

    def _say(self, waited_s: float) -> None:
        trainer = self._trainer
        assert trainer is not None
        rank, world = trainer.global_rank, trainer.world_size
        per_trainer.put(trainer, per_trainer.HANG_REPORTED, True)
        stderr = hang.silence()  # what the dying main thread says next is noise: the line is the last word
        directory = Path(records.run_dir_of(trainer)) / hang.HANG_DIR
        frame = hang.thread_frame(self._training_thread)
        if frame is not None:
            stopped = hang.where_stopped(frame, rank, socket.gethostname(), waited_s)
            hang.write_rank_stack(directory, stopped)
        if rank == 0:
            self._report(trainer, directory, world, stderr)
            return
        # exit right after rank 0 has reported, before a launcher's SIGTERM reaches this rank
        deadline = time.monotonic() + self.grace_s + 10
        while time.monotonic() < deadline and not (directory / hang.REPORTED).exists():
            time.sleep(0.05)
        if (
            not (directory / hang.REPORTED).exists()
            and min(hang.read_rank_stacks(directory), default=rank) == rank
        ):
            self._report(trainer, directory, world, stderr)  # rank 0 is gone: the lowest rank left says it

    def _report(self, trainer: pl.Trainer, directory: Path, world: int, stderr: int) -> None:
        deadline = time.monotonic() + self.grace_s
        stacks = hang.read_rank_stacks(directory)
        while len(stacks) < world and time.monotonic() < deadline:
            time.sleep(0.2)
            stacks = hang.read_rank_stacks(directory)
        line = hang.report_line(stacks, world, self.hang_timeout_s, directory)
        stuck_hosts = [s.host for s in stacks.values() if s.state == "stuck"]
        failure_note.write(
            "hang", stuck_hosts, trainer.global_rank, int(trainer.global_step), str(directory.parent)
        )
        ranks = {str(r): {k: v for k, v in vars(s).items() if k != "rank"} for r, s in sorted(stacks.items())}
        try:
            records.contribute(
                trainer,
                fields={"status": "failed", "error": line},
                section="hang",
                section_values={"timeout_s": self.hang_timeout_s, "ranks": ranks, "line": line},
            )
            records.recorder_of(trainer).flush()
        except Exception as err:  # a record that cannot be written must not keep the line from being said
            os.write(stderr, f"itwinai-lightning: warning: the RunRecord was not updated ({err})\n".encode())
        os.write(stderr, f"itwinai-lightning: error: {line}\n".encode())
        (directory / hang.REPORTED).touch()  # the other ranks exit now; rank 0 exits right after
        launcher = trainer.strategy.launcher
        if isinstance(launcher, compat.SubprocessScriptLauncher) and launcher.procs:
            launcher.kill(signal.SIGKILL)  # ranks Lightning started would outlive rank 0
