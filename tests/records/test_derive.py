"""The figures every package takes from records.derive: samples/s and a run's figure."""

from __future__ import annotations

import pytest

from itwinai_lightning.monitoring.timing_figures import STEP_KEYS, combine_ranks, run_summary
from itwinai_lightning.records import derive


def test_rate_is_amount_over_positive_seconds() -> None:
    assert derive.rate(640, 3.2) == pytest.approx(200.0)
    assert derive.rate(640, 0.0) is None and derive.rate(640, None) is None and derive.rate(None, 2) is None


def test_the_timing_figures_use_the_one_rate() -> None:
    """An epoch's samples/s sums the ranks' samples over the slowest rank's training time; the run's is
    all samples over all training time (not the mean of the epochs' rates)."""
    empty = ("wall_time_s", "val_time_s", "time_to_first_step_s", "first_batch_size", *STEP_KEYS)
    cols: dict[str, list[float]] = {k: [] for k in empty}
    cols.update(train_time_s=[2.0, 2.5], samples=[320.0, 320.0], steps=[20.0, 20.0])
    epoch = combine_ranks(cols, ranks=2, accumulate_grad_batches=1)
    assert epoch["samples_per_s"] == pytest.approx(640 / 2.5)
    epochs = [{"samples": 640, "train_time_s": 2.5, "wall_time_s": 3}, {"samples": 640, "train_time_s": 1.5}]
    assert run_summary(epochs)["samples_per_s"] == pytest.approx(1280 / 4.0)  # not mean(256, 426.7)


def test_run_figure_prefers_the_summary_then_the_epochs_mean() -> None:
    record = {"summary": {"samples_per_s": 120.0}, "epochs": [{"samples_per_s": 1.0}]}
    assert derive.run_figure(record, "samples_per_s") == 120.0
    older = {"summary": {}, "epochs": [{"gpu_util_mean_pct": {"min": 1, "mean": 40, "max": 90}},
                                       {"gpu_util_mean_pct": 60.0}, {"other": 1}]}  # fmt: skip
    assert derive.run_figure(older, "gpu_util_mean_pct") == pytest.approx(50.0)
    assert derive.run_figure({"summary": {}}, "mfu_pct") is None
