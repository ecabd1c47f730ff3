"""``fit --resume DIR``: continue the run in ``DIR``, the same rule however it is re-run.

* ``DIR`` holds a complete checkpoint and the run's saved ``config.yaml`` names the same training (the keys
  in :data:`SAME`) -> the fit continues in ``DIR`` from its newest complete checkpoint, and says so;
* the training differs -> one line naming the first key that differs, exit 2, before anything is built;
* no checkpoint yet -> the fit starts from scratch in ``DIR``, and says so.

A requeued SLURM job and a torchrun restart continue the same way (:mod:`.newest`, :mod:`.restarts`).
What may change on a resume: the stopping point (``max_epochs``...), the loggers and callbacks, the
number of devices and nodes, timeouts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from itwinai_lightning.errors import UserError
from itwinai_lightning.runs.newest import latest_checkpoint
from itwinai_lightning.sections import get_dotted

#: what must be the same for a checkpoint of the run to be continued
SAME = (
    "seed_everything",
    "model",
    "data",
    "optimizer",
    "lr_scheduler",
    "trainer.precision",
    "trainer.accumulate_grad_batches",
    "trainer.strategy.class_path",
)
SAVED_CONFIG = "config.yaml"


def _strategy_name(config: Mapping[str, Any]) -> Any:
    strategy = get_dotted(config, "trainer.strategy")
    return strategy.get("class_path") if isinstance(strategy, Mapping) else strategy


def first_difference(saved: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """The first key of :data:`SAME` whose value differs, with both values; None when all agree."""
    for key in SAME:
        if key == "trainer.strategy.class_path":
            before, now = _strategy_name(saved), _strategy_name(new)
        else:
            before, now = get_dotted(saved, key), get_dotted(new, key)
        if before != now:
            return _deepest(key, before, now)
    return None


def _deepest(key: str, before: Any, now: Any) -> tuple[str, Any, Any]:
    """The innermost key where two values differ (``model.init_args.optimizer``, not ``model``)."""
    while isinstance(before, Mapping) and isinstance(now, Mapping):
        inner = next((k for k in [*before, *now] if before.get(k) != now.get(k)), None)
        if inner is None:
            break
        key, before, now = f"{key}.{inner}", before.get(inner), now.get(inner)
    return key, before, now


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def resume_point(run_dir: Path, new_config: Mapping[str, Any]) -> tuple[Path | None, str]:
    """The checkpoint ``fit --resume run_dir`` continues from (None: from scratch) and the line saying so;
    UserError when the run's saved config trains something else."""
    if not run_dir.is_dir():
        raise UserError(f"--resume {run_dir}: no such run directory; give a run directory (ROOT/version_N)")
    saved_path = run_dir / SAVED_CONFIG
    newest = latest_checkpoint(run_dir)
    if newest is None:
        return None, f"--resume {run_dir}: no complete checkpoint there; training starts from scratch in it"
    if saved_path.is_file():
        saved = yaml.safe_load(saved_path.read_text()) or {}
        difference = first_difference(saved, new_config)
        if difference is not None:
            key, before, now = difference
            raise UserError(
                f"--resume {run_dir}: its run trained with another {key} ({_short(before)}, now "
                f"{_short(now)}); resume with its own config (--config {saved_path}) or start a new run"
            )
    return newest, f"--resume {run_dir}: the same training; continuing from {newest}"
