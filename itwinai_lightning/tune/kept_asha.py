"""ASHA whose rungs survive a restored sweep.

``Tuner.restore`` unpickles the scheduler as it was when the sweep *started* (Ray saves the Tuner once):
an ASHA scheduler comes back with empty rungs, so a trial resumed past a milestone is never compared at it
and the trials that arrive later are judged against fewer results than the sweep had. ``KeptASHA`` writes
its state (Ray's own ``save``: rungs, the trials' brackets, the stop count) next to the experiment after
every result it records (a few kB; written atomically) and reads it back on its first call after a restore.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler

#: The state file in the experiment directory.
STATE_NAME = "asha-state.pkl"


class KeptASHA(AsyncHyperBandScheduler):
    """``ASHAScheduler`` with its rungs kept in ``<experiment dir>/asha-state.pkl`` (see the module)."""

    def __init__(self, state_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._state_file = str(Path(state_dir) / STATE_NAME)
        self._loaded = False

    def _load_once(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if Path(self._state_file).exists():
            keep = self._state_file
            self.restore(keep)  # Ray's own: the saved __dict__
            self._state_file, self._loaded = keep, True

    def _keep(self) -> None:
        partial = f"{self._state_file}.partial"
        self.save(partial)
        os.replace(partial, self._state_file)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._load_once()
        if trial.trial_id in self._trial_info:  # a restored trial keeps its bracket (and its rung records)
            return
        super().on_trial_add(tune_controller, trial)
        self._keep()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        self._load_once()
        action = super().on_trial_result(tune_controller, trial, result)
        self._keep()
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        self._load_once()
        super().on_trial_complete(tune_controller, trial, result)
        self._keep()

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._load_once()
        self._trial_info.pop(trial.trial_id, None)
        self._keep()
