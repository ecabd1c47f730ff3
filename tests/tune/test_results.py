"""The sweep summary never calls a shorter-trained trial "best" without saying so."""

from __future__ import annotations

import pytest

from itwinai_lightning.tune.results import TrialRow, fewer_epochs_note

pytestmark = pytest.mark.core


def _row(trial_id: str, epochs: int, metric: float, status: str = "completed") -> TrialRow:
    return TrialRow(trial_id, status, epochs, metric, metric, 1.0, 1.0, "")


def test_a_best_trial_with_fewer_epochs_is_named_with_both_counts() -> None:
    rows = [_row("a", 1, 0.10, "stopped_early"), _row("b", 4, 0.20)]
    note = fewer_epochs_note(rows, rows[0])
    assert note is not None and "trained 1 epoch(s), others up to 4" in note and "a" in note


def test_no_note_when_the_best_trained_longest_or_others_failed() -> None:
    rows = [_row("a", 4, 0.10), _row("b", 2, 0.20, "stopped_early"), _row("c", 9, float("nan"), "failed")]
    assert fewer_epochs_note(rows, rows[0]) is None
