"""Stop a sweep at the first result that lacks ``tune.metric``: a typo is one line, not a failed sweep.

Ray Tune's own check raises deep in its controller (a long traceback after the first trial ran).
Instead the driver lets such a result through and this stopper ends every trial at once; ``tune``
then exits 2 naming the metrics the model does log, with a did-you-mean.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

from ray.tune.stopper import Stopper

from itwinai_lightning.errors import UserError

#: keys every result carries that are not the model's metrics
RAY_KEYS = ("epoch", "lr", "trial_train_time_s", "training_iteration", "time_this_iter_s", "done",
            "timesteps_total", "episodes_total", "trial_id", "experiment_id", "date", "timestamp",
            "time_total_s", "pid", "hostname", "node_ip", "config", "time_since_restore",
            "iterations_since_restore", "checkpoint_dir_name", "should_checkpoint")  # fmt: skip


class MissingMetric(Stopper):
    """Stops all trials once a result arrives without ``metric``; remembers what the result had."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.available: list[str] | None = None
        # Ray checks every result for the metric itself and raises; this stopper does it instead
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if self.metric in result or self.available is not None:
            return self.available is not None
        self.available = sorted(k for k in result if k not in RAY_KEYS and not k.startswith("timing/"))
        return True

    def stop_all(self) -> bool:
        return self.available is not None

    def check(self) -> None:
        """Raise the one-line error when a result lacked the metric."""
        if self.available is None:
            return
        close = difflib.get_close_matches(self.metric, self.available, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        logged = ", ".join(self.available) or "nothing"
        raise UserError(
            f"tune.metric '{self.metric}' is not logged by the model{hint}; after the first epoch it logs: "
            f"{logged}. The sweep was stopped; fix tune.metric and run again"
        )
