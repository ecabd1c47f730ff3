"""Failure isolation and the queue-full policy, with real training runs (no servers needed)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser
from itwinai_lightning.loggers import MultiLogger
from itwinai_lightning.loggers.spool import Spool, spool_dir
from tests.loggers.helpers import ExplodingBackend, SlowBackend

HELPERS = "tests.loggers.helpers"


def _fit(run_dir: Path, logger: MultiLogger | bool, max_epochs: int = 2) -> SpectrogramDenoiser:
    pl.seed_everything(7, workers=True)
    model = SpectrogramDenoiser(width=8, depth=2)
    data = SpectrogramDataModule(num_samples=64, val_samples=32, batch_size=8, seed=3)
    flags = dict(enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer = pl.Trainer(
        default_root_dir=run_dir, max_epochs=max_epochs, logger=logger, log_every_n_steps=1,
        accelerator="cpu", deterministic=True, **flags,
    )  # fmt: skip
    trainer.fit(model, data)
    return model


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_backend_raising_on_every_call_changes_nothing(tmp_path: Path, isolation: str) -> None:
    reference = _fit(tmp_path / "plain", logger=False)
    exploding = ExplodingBackend(name="broken")
    # in a tracking process the backend is rebuilt there: give it by class path, as YAML would
    given = exploding if isolation == "thread" else {"type": f"{HELPERS}:ExplodingBackend", "name": "broken"}
    logger = MultiLogger(
        backends=["csv", given], experiment="iso", flush_timeout_s=10, retry_interval_s=0.2,
        isolation=isolation,
    )  # fmt: skip
    model = _fit(tmp_path / "run", logger=logger)

    # same weights, bit for bit: tracking failures do not touch training
    for (name, a), (_, b) in zip(reference.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    train_points = [r for r in rows if r["key"] == "train_loss"]
    assert len(train_points) == 16  # 64 samples / batch 8 = 8 steps x 2 epochs, every step logged
    if isolation == "thread":
        assert exploding.calls >= 2  # tried, then retried

    summary = json.loads((tmp_path / "run" / "tracking_summary.json").read_text())
    by_name = {row["backend"]: row for row in summary["backends"]}
    assert by_name["csv"]["spooled"] == 0 and by_name["csv"]["healthy"]
    broken = by_name["broken"]
    assert not broken["healthy"] and broken["delivered"] == 0
    assert "ConnectionError" in broken["errors"][0]
    spooled = Spool(spool_dir(tmp_path / "run"), "broken").read()
    assert broken["spooled"] == len(spooled) == by_name["csv"]["delivered"]  # every record kept, none lost
    assert sum(1 for r in spooled if r["kind"] == "metrics" and "train_loss" in r["data"]) == 16
    record = json.loads((tmp_path / "run" / "run_record.json").read_text())
    assert record["sections"]["tracking"]["backends"][1]["spooled"] == len(spooled)


def test_slow_backend_never_stalls_and_overflow_is_spooled_then_delivered(tmp_path: Path) -> None:
    slow = SlowBackend(delay_s=0.02)
    logger = MultiLogger(
        backends=[slow], run_dir=str(tmp_path), queue_size=2, flush_timeout_s=60, isolation="thread"
    )
    start = time.perf_counter()
    for step in range(300):
        logger.log_metrics({"a": float(step), "b": 2.0 * step}, step=step)
    submit_s = time.perf_counter() - start
    assert submit_s < 1.0, f"300 log calls took {submit_s:.2f} s: the training thread waited for the backend"
    worker = logger._workers[0]
    assert worker.overflowed > 0  # the queue of 2 was full: records went to disk instead of blocking
    logger.finalize("success")
    steps = [step for step, _ in slow.metrics]
    assert sorted(steps) == list(range(300))  # all delivered exactly once
    assert steps == sorted(steps)  # and in order, spool first
    assert logger.summary is not None and logger.summary["backends"][0]["spooled"] == 0


def test_flush_timeout_leaves_records_on_disk(tmp_path: Path) -> None:
    slow = SlowBackend(delay_s=0.5)
    logger = MultiLogger(
        backends=[slow], run_dir=str(tmp_path), flush_timeout_s=0.3, queue_size=1000, isolation="thread"
    )
    for step in range(50):
        logger.log_metrics({"x": float(step)}, step=step)
    logger.finalize("success")
    row = logger.summary["backends"][0]  # type: ignore[index]
    assert row["timed_out"]
    kept = Spool(spool_dir(tmp_path), "slow").read()
    delivered = {step for step, _ in slow.metrics}
    spooled = {r["step"] for r in kept}
    assert delivered | spooled == set(range(50))  # nothing lost: delivered or on disk


def test_bad_backend_config_is_one_clear_error() -> None:
    from itwinai_lightning.errors import UserError

    with pytest.raises(UserError, match="nosuch"):
        MultiLogger(backends=["nosuch"])
    with pytest.raises(UserError, match="ranks"):
        MultiLogger(backends=[{"type": "csv", "ranks": "some"}])


def test_automatic_retry_delivers_everything_once_backend_recovers(tmp_path: Path) -> None:
    from tests.loggers.helpers import FlakyBackend

    flaky = FlakyBackend(failures=3)
    logger = MultiLogger(
        backends=[flaky], run_dir=str(tmp_path), retry_interval_s=0.05, flush_timeout_s=30, isolation="thread"
    )
    for step in range(200):
        logger.log_metrics({"m": float(step)}, step=step)
        if step % 50 == 0:
            time.sleep(0.1)  # let the worker fail, back off and retry while training goes on
    logger.finalize("success")
    assert [s for s, _ in flaky.metrics] == list(range(200))  # all, once, in order
    row = logger.summary["backends"][0]  # type: ignore[index]
    assert row["healthy"] and row["spooled"] == 0 and row["delivered"] == 200
    assert "TimeoutError" in row["errors"][0]
    assert not (tmp_path / "tracking_spool" / "flaky.jsonl").exists()
