"""Backends of one fan-out open one at a time; a hung open gives the turn away after ``wait_s``."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

from itwinai_lightning.loggers.backends import Backend, RunContext
from itwinai_lightning.loggers.fanout import start_workers
from itwinai_lightning.loggers.spool import Spool, spool_dir
from itwinai_lightning.loggers.worker import BackendWorker, OpenTurn


class TimedOpenBackend(Backend):
    """Sleeps ``open_s`` in open and records when each open began and ended (monotonic seconds)."""

    kind = "timed"

    def __init__(self, open_s: float, name: str) -> None:
        super().__init__("zero", name)
        self.open_s = open_s
        self.opened: tuple[float, float] | None = None
        self.steps: list[int] = []
        self.opening = threading.Event()

    def open(self, ctx: RunContext) -> None:
        began = time.monotonic()
        self.opening.set()
        time.sleep(self.open_s)
        self.opened = (began, time.monotonic())

    def log_metrics(self, metrics: Any, step: int, timestamp: float) -> None:
        self.steps.append(step)


def _metric(step: int) -> dict[str, Any]:
    return {"kind": "metrics", "step": step, "time": time.time(), "data": {"loss": 1.0 / (step + 1)}}


def _stop_all(workers: list[BackendWorker]) -> None:
    for worker in workers:
        worker.stop(timeout_s=10.0)


def test_backends_of_one_fan_out_open_one_after_another(tmp_path: Path) -> None:
    backends = [TimedOpenBackend(0.3, f"b{i}") for i in range(3)]
    workers = start_workers(backends, {"run_dir": str(tmp_path), "rank": 0}, 1000, retry_interval_s=5.0)
    for step in range(5):
        for worker in workers:
            worker.submit(_metric(step))
    _stop_all(workers)

    spans = sorted(b.opened for b in backends if b.opened is not None)
    assert len(spans) == 3
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"opens overlap: {spans}"
    # total ≥ 3 x 0.3 s proves they did not run side by side; every record still arrived, in order
    assert spans[-1][1] - spans[0][0] >= 0.9 - 0.01
    assert all(b.steps == [0, 1, 2, 3, 4] for b in backends)


def test_a_hung_open_holds_the_turn_for_at_most_wait_s(tmp_path: Path) -> None:
    turn = OpenTurn(wait_s=0.3)
    ctx = RunContext(run_dir=str(tmp_path))
    directory = spool_dir(tmp_path)
    hung, quick = TimedOpenBackend(3.0, "hung"), TimedOpenBackend(0.0, "quick")
    first = BackendWorker(hung, ctx, Spool(directory, "hung"), linger_s=0.0, open_turn=turn)
    first.submit(_metric(0))
    assert hung.opening.wait(5.0)  # the hung backend is inside its open, holding the turn
    t0 = time.monotonic()
    second = BackendWorker(quick, ctx, Spool(directory, "quick"), linger_s=0.0, open_turn=turn)
    second.submit(_metric(0))
    second.stop(timeout_s=5.0)

    assert quick.steps == [0]
    assert quick.opened is not None and hung.opened is None
    waited = quick.opened[0] - t0
    assert 0.25 <= waited < 2.0, f"quick backend waited {waited:.2f} s for a turn of at most 0.3 s"
    first.stop(timeout_s=10.0)
    assert hung.steps == [0]
