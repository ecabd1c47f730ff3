"""After a sweep: ``results.csv`` (one row per trial) and ``best.yaml`` (a complete config for ``fit``).

``results.csv`` columns:

=====================  ================================================================================
column                 meaning (unit)
=====================  ================================================================================
trial_id               Ray's trial id; the trial's run directory is ``trials/<trial_id>``
status                 ``completed`` | ``stopped_early`` (by the scheduler) | ``failed``
epochs                 epochs reported (count)
<metric>               the metric at the trial's last report
best_<metric>          the best value over the trial's reports
trial_time_s           wall time of the trial as Ray measured it (s)
train_time_s           time inside the trial's training epochs (s)
error                  first line of the error of a failed trial
<dotted key>           the trial's sampled value for each searched key (last, after PBT mutations)
=====================  ================================================================================
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from itwinai_lightning.sections import set_dotted
from itwinai_lightning.tune.search_space import plain_values
from itwinai_lightning.tune.settings import TuneSettings
from itwinai_lightning.tune.trial import CONFIG_FILE

_TRIAL_ID = re.compile(r"_([0-9a-f]{5}_\d{5})_")


@dataclass
class TrialRow:
    trial_id: str
    status: str
    epochs: int
    metric: float
    best_metric: float
    trial_time_s: float
    train_time_s: float
    error: str
    params: dict[str, Any] = field(default_factory=dict)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def collect(results: Any, settings: TuneSettings, max_epochs: int) -> list[TrialRow]:
    """Ray ``ResultGrid`` -> one :class:`TrialRow` per trial."""
    rows = []
    better = min if settings.mode == "min" else max
    for result in results:
        metrics = result.metrics or {}
        history = result.metrics_dataframe
        values: list[float] = []
        if history is not None and settings.metric in history:
            values = [v for v in history[settings.metric].tolist() if not math.isnan(_float(v))]
        epochs = int(metrics.get("epoch") or metrics.get("training_iteration") or 0)
        if result.error is not None:
            status = "failed"
        elif epochs < max_epochs:
            status = "stopped_early"
        else:
            status = "completed"
        error = str(result.error).strip().splitlines()[-1] if result.error is not None else ""
        # from the trial's directory name: after a PBT exploit, ``metrics`` may be the donor's last result
        match = _TRIAL_ID.search(Path(result.path).name)
        trial_id = match.group(1) if match else metrics.get("trial_id")
        rows.append(
            TrialRow(
                trial_id=str(trial_id),
                status=status,
                epochs=epochs,
                metric=_float(metrics.get(settings.metric)),
                best_metric=better(values) if values else math.nan,
                trial_time_s=_float(metrics.get("time_total_s")),
                train_time_s=_float(metrics.get("trial_train_time_s")),
                error=error[:300],
                params=plain_values({key: (result.config or {}).get(key) for key in settings.space}),
            )
        )
    return rows


def write_csv(rows: list[TrialRow], settings: TuneSettings, path: Path) -> None:
    metric = settings.metric
    header = ["trial_id", "status", "epochs", metric, f"best_{metric}"]
    header += ["trial_time_s", "train_time_s", "error"]
    header += list(settings.space)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            fixed = [row.trial_id, row.status, row.epochs, row.metric, row.best_metric]
            fixed += [row.trial_time_s, row.train_time_s, row.error]
            writer.writerow(fixed + [row.params.get(key) for key in settings.space])


def best_row(rows: list[TrialRow], settings: TuneSettings) -> TrialRow | None:
    """Best final metric among trials that did not fail."""
    candidates = [r for r in rows if r.status != "failed" and not math.isnan(r.metric)]
    if not candidates:
        return None
    sign = 1.0 if settings.mode == "min" else -1.0
    return min(candidates, key=lambda r: sign * r.metric)


def write_best_yaml(row: TrialRow, settings: TuneSettings, base_trainer: dict[str, Any], path: Path) -> None:
    """The best trial's full config, with the sweep-only trainer settings put back to the base config's."""
    trial_config = settings.experiment_dir / "trials" / row.trial_id / CONFIG_FILE
    config = yaml.safe_load(trial_config.read_text()) or {}
    set_dotted(config, "trainer.default_root_dir", str(settings.experiment_dir / "best"))
    set_dotted(config, "trainer.enable_progress_bar", base_trainer.get("enable_progress_bar"))
    if settings.workers_per_trial > 1:  # each rank ran ray_ddp on one device: fit starts all N itself
        set_dotted(config, "trainer.devices", settings.workers_per_trial)
    header = (
        f"# Best trial {row.trial_id} of sweep {settings.experiment_dir}: "
        f"{settings.metric}={row.metric:.6g} ({settings.mode}) after {row.epochs} epochs.\n"
        f"# Reproduce: python -m itwinai_lightning fit --config {path}\n"
    )
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))


def print_summary(rows: list[TrialRow], settings: TuneSettings, best: TrialRow | None) -> None:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"tune: {len(rows)} trials ({summary}); results: {settings.experiment_dir / 'results.csv'}")
    for row in rows:
        if row.status == "failed":
            print(f"tune: trial {row.trial_id} failed: {row.error}")
    if best is not None:
        params = ", ".join(f"{k}={v}" for k, v in best.params.items())
        print(f"tune: best trial {best.trial_id}: {settings.metric}={best.metric:.6g} with {params}")
        print(f"tune: best config: {settings.experiment_dir / 'best.yaml'}")
        note = fewer_epochs_note(rows, best)
        if note:
            print(f"tune: note: {note}")


def fewer_epochs_note(rows: list[TrialRow], best: TrialRow) -> str | None:
    """Said when the best trial trained fewer epochs than another (its metric is from earlier training)."""
    longest = max((r.epochs for r in rows if r.status != "failed"), default=best.epochs)
    if best.epochs >= longest:
        return None
    return (
        f"the best trial {best.trial_id} trained {best.epochs} epoch(s), others up to {longest}: "
        "its metric is from a shorter training, compare with care"
    )


def read_rows(path: Path) -> list[dict[str, Any]]:
    """``results.csv`` back as dicts, numeric columns as floats."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in ("epochs", "trial_time_s", "train_time_s"):
            row[key] = _float(row.get(key))
    return rows
