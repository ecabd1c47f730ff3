"""KeptASHA: ASHA's rungs survive a restored sweep (Ray restores the scheduler as it was at the start)."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.helpers.engines import require_module


def _asha(state_dir: Path) -> Any:
    require_module("ray", 'pip install "itwinai-lightning[ray]"')
    from itwinai_lightning.tune.kept_asha import KeptASHA

    scheduler = KeptASHA(str(state_dir), time_attr="training_iteration", max_t=8, grace_period=1,
                         reduction_factor=2)  # fmt: skip
    scheduler.set_search_properties("val_loss", "min")
    return scheduler


def _rung(scheduler: Any, milestone: int) -> dict:
    (bracket,) = scheduler._brackets
    return next(recorded for at, recorded in bracket._rungs if at == milestone)


def test_rungs_recorded_before_a_restore_are_there_after_it(tmp_path: Path) -> None:
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    first = _asha(tmp_path)
    # what Ray pickles at the sweep's start (tuner.pkl): the scheduler before any result
    at_start = pickle.dumps(first)
    for trial in (a, b):
        first.on_trial_add(None, trial)
    assert first.on_trial_result(None, a, {"training_iteration": 1, "val_loss": 0.5}) == "CONTINUE"
    first.on_trial_result(None, a, {"training_iteration": 2, "val_loss": 0.4})
    assert (tmp_path / "asha-state.pkl").is_file()

    restored = pickle.loads(at_start)  # Tuner.restore: the start-of-sweep scheduler, empty rungs
    assert _rung(restored, 1) == {}
    restored.on_trial_add(None, a)  # the restored trials come back
    restored.on_trial_add(None, b)
    assert _rung(restored, 1) == {"a": -0.5} and _rung(restored, 2) == {"a": -0.4}
    # and it decides with them: b is worse than a at the first milestone -> stopped
    assert restored.on_trial_result(None, b, {"training_iteration": 1, "val_loss": 0.9}) == "STOP"
