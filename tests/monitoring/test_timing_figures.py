"""TimingMonitor's figures, computed from known inputs: one rank's epoch, the epoch across ranks, the run."""

from __future__ import annotations

import math

import pytest

from itwinai_lightning.monitoring import timing_figures as figures


def test_one_rank_epoch_subtracts_validation_and_takes_percentiles_of_the_steps() -> None:
    durations = [0.4, 0.1, 0.2, 0.3]  # unordered, as the steps came
    out = figures.local_epoch(10.0, 2.5, durations, 4, 64, first_step_s=1.5, first_batch_size=16)
    assert out["train_time_s"] == 7.5 and out["val_time_s"] == 2.5 and out["wall_time_s"] == 10.0
    assert out["step_time_mean_s"] == pytest.approx(0.25)
    assert out["step_time_p50_s"] == pytest.approx(0.25)  # between 0.2 and 0.3
    assert out["step_time_p99_s"] == pytest.approx(0.397, abs=1e-9)
    assert set(out) == set(figures.GATHERED)
    assert "step_time_p50_s" not in figures.local_epoch(1.0, 0.0, [], 0, 0, None, None)


def test_the_epoch_across_ranks_is_paced_by_the_slowest_rank_and_sums_the_samples() -> None:
    rank0 = figures.local_epoch(10.0, 2.0, [0.2, 0.2], 2, 32, 1.0, 16)
    rank1 = figures.local_epoch(12.0, 2.0, [0.3, 0.3], 2, 32, 1.4, 16)
    cols = {key: [r[key] for r in (rank0, rank1)] for key in figures.GATHERED}
    out = figures.combine_ranks(cols, ranks=2, accumulate_grad_batches=4)  # type: ignore[arg-type]
    assert out["ranks"] == 2 and out["train_time_s"] == 10.0  # rank 1's 12 - 2
    assert out["train_time_s_ranks"] == {"min": 8.0, "mean": 9.0, "max": 10.0}
    assert out["samples"] == 64 and out["samples_per_s"] == pytest.approx(6.4)
    assert out["time_to_first_step_s"] == 1.4 and out["global_batch_size"] == 2 * 16 * 4
    assert out["step_time_p50_s"] == pytest.approx(0.3) and out["steps"] == 2


def test_the_run_summary_is_over_every_epoch() -> None:
    epochs = [
        {"samples": 64, "train_time_s": 8.0, "wall_time_s": 10.0, "time_to_first_step_s": 1.4,
         "step_time_p50_s": 0.3},
        {"samples": 64, "train_time_s": 8.0, "wall_time_s": 9.0, "step_time_p50_s": 0.2},
        {"samples": 64, "train_time_s": 4.0, "wall_time_s": 5.0, "step_time_p50_s": 0.25},
    ]  # fmt: skip
    out = figures.run_summary(epochs)
    assert out["total_samples"] == 192 and out["samples_per_s"] == pytest.approx(9.6)
    assert out["mean_epoch_time_s"] == pytest.approx(8.0) and out["epochs_completed"] == 3
    assert out["time_to_first_step_s"] == 1.4 and out["step_time_p50_s"] == 0.25  # the median epoch's
    assert figures.run_summary([]) == {}
    assert figures.without_missing({"a": None, "b": math.nan, "c": 0.0}) == {"c": 0.0}
