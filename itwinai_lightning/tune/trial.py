"""One trial = the ordinary fit path with the sampled overrides, reporting each epoch to Ray.

``fit_trial`` builds the trial's run with :func:`itwinai_lightning.cli.run_lightning_cli` (``run=False``) from
the sweep's base arguments plus ``--<dotted.key>=<value>`` overrides, adds :class:`TuneReporter`, and calls
``trainer.fit`` -- from the trial's latest Tune checkpoint when Ray hands one over (resume, PBT exploit).
Runs in Ray worker processes; Ray is imported inside functions only.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from typing_extensions import override

from itwinai_lightning import compat
from itwinai_lightning.secrets import redact
from itwinai_lightning.tune.search_space import override_args, plain_values

CHECKPOINT_FILE = "trial.ckpt"
PARAMS_FILE = "params.jsonl"
CONFIG_FILE = "trial_config.yaml"

#: reports one epoch: (metrics, directory holding CHECKPOINT_FILE) -> True when Tune stopped the trial
ReportFn = Callable[[dict[str, float], str], "bool | None"]


class TuneReporter(pl.Callback):
    """Reports every training epoch to Ray (Tune or Train) with a checkpoint, and records the trial's params.

    ==========================  ======================================================================
    reported key                meaning (unit)
    ==========================  ======================================================================
    every scalar in             as logged by the model (e.g. ``val_loss`` MSE, ``val_psnr`` dB)
    ``trainer.callback_metrics``
    ``epoch``                   epochs completed (count)
    ``lr``                      learning rate of the first optimizer's first param group (as used)
    ``trial_train_time_s``      seconds spent inside ``trainer.fit`` epochs so far in this process
    ==========================  ======================================================================

    On (re)start it appends to ``<run_dir>/params.jsonl``: start epoch, whether a checkpoint was restored,
    the trial's sampled params, the optimizer's learning rate actually in use and the PIDs of all ranks
    (``rank_pids``). In a multi-rank trial rank 0 reports and broadcasts whether Tune stopped the trial,
    so that every rank ends the fit together (the ranks stay usable for the next trial). After a restore, the
    optimizers' hyper-parameters (lr, momentum, weight decay, ...) are reset to the values this trial was
    configured with, so a PBT-mutated value really takes effect instead of the checkpoint's old one.
    """

    def __init__(self, report: ReportFn, params: Mapping[str, Any], trial_id: str, restored: bool) -> None:
        self._report = report
        self._restored = restored
        self._params = dict(params)
        self._trial_id = trial_id
        self._epoch_start = 0.0
        self._train_time_s = 0.0

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        restored = self._restored
        if restored:
            _reset_optimizer_hparams(trainer, pl_module)
        pids = trainer.strategy.all_gather(torch.tensor([os.getpid()], dtype=torch.int64))
        if trainer.is_global_zero:
            entry = {
                "trial_id": self._trial_id,
                "start_epoch": trainer.current_epoch,
                "restored": restored,
                "params": self._params,
                "optimizer_lr": _current_lr(trainer),
                "rank_pids": [int(pid) for pid in pids.reshape(-1).tolist()],
                "time": time.time(),
            }
            run_dir = Path(trainer.default_root_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / PARAMS_FILE, "a") as handle:
                handle.write(json.dumps(entry) + "\n")
            for logger in trainer.loggers:
                logger.log_hyperparams({"tune_trial_id": self._trial_id, **self._params})

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._train_time_s += time.perf_counter() - self._epoch_start
        metrics: dict[str, float] = {}
        for key, value in trainer.callback_metrics.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                metrics[key] = float(value.item())
            elif isinstance(value, int | float):
                metrics[key] = float(value)
        metrics["epoch"] = trainer.current_epoch + 1
        lr = _current_lr(trainer)
        if lr is not None:
            metrics["lr"] = lr
        metrics["trial_train_time_s"] = self._train_time_s
        with tempfile.TemporaryDirectory(prefix="itwinai-trial-") as directory:
            trainer.save_checkpoint(os.path.join(directory, CHECKPOINT_FILE))
            stop = bool(self._report(metrics, directory))
        if trainer.world_size > 1:
            stop = bool(trainer.strategy.broadcast(stop, src=0))
        if stop:
            trainer.should_stop = True
        self._epoch_start = time.perf_counter()


def _current_lr(trainer: pl.Trainer) -> float | None:
    if not trainer.optimizers or not trainer.optimizers[0].param_groups:
        return None
    return float(trainer.optimizers[0].param_groups[0]["lr"])


def _reset_optimizer_hparams(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """Keep the restored optimizer *state* (moments) but this trial's configured hyper-parameters."""
    fresh_optimizers, fresh_schedulers = compat.fresh_optimizers(pl_module)
    for restored, fresh in zip(trainer.optimizers, fresh_optimizers, strict=False):
        for group, fresh_group in zip(restored.param_groups, fresh.param_groups, strict=False):
            for key, value in fresh_group.items():
                if key != "params":
                    group[key] = value
    for config, fresh_config in zip(trainer.lr_scheduler_configs, fresh_schedulers, strict=False):
        base_lrs = getattr(fresh_config.scheduler, "base_lrs", None)
        if base_lrs is not None and hasattr(config.scheduler, "base_lrs"):
            config.scheduler.base_lrs = list(base_lrs)


def trial_args(base_argv: Sequence[str], config: Mapping[str, Any], run_dir: Path) -> list[str]:
    return [
        *base_argv,
        *override_args(config),
        f"--run_dir={run_dir}",
        "--trainer.enable_progress_bar=false",
    ]


def fit_trial(
    base_argv: Sequence[str],
    config: Mapping[str, Any],
    run_dir: Path,
    trial_id: str,
    report: ReportFn,
    checkpoint: Any | None,
    extra_args: Sequence[str] = (),
    tracking: Any = None,
) -> None:
    """Build the run exactly as ``fit`` would (plus overrides) and train it, reporting each epoch.

    ``tracking`` (a :class:`~itwinai_lightning.tune.tracking.SweepTracking`) makes the run's MLflow run a
    child of the sweep's parent run.
    """
    from itwinai_lightning.cli.run import run_lightning_cli

    params = plain_values(config)
    cli = run_lightning_cli([*trial_args(base_argv, params, run_dir), *extra_args], run=False)
    trainer = cli.trainer
    if tracking is not None:
        from itwinai_lightning.tune.tracking import adopt_trial

        adopt_trial(trainer.loggers, tracking, trial_id)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        dumped = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False, skip_check=True)) or {}
        (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(redact(dumped), sort_keys=False))
    trainer.callbacks.append(  # type: ignore[attr-defined]
        TuneReporter(report, params, trial_id, restored=checkpoint is not None)
    )
    if checkpoint is None:
        trainer.fit(cli.model, datamodule=cli.datamodule)
        return
    with checkpoint.as_directory() as directory:
        trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=os.path.join(directory, CHECKPOINT_FILE))
