"""``python -m itwinai_lightning tune --config base.yaml --config search.yaml [--tune.key VALUE ...]``.

The ``tune:`` section (see :mod:`itwinai_lightning.tune.settings`) is split from the LightningCLI
arguments; everything else is the ordinary ``fit`` configuration every trial starts from. All checks
(options, distributions, that every searched key exists in the LightningCLI config and accepts the
sampled values) run before Ray is imported; a mistake prints one line and exits 2.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from itwinai_lightning.errors import UserError
from itwinai_lightning.sections import MISSING, config_paths, get_dotted, split_section, value_of
from itwinai_lightning.tune.guard_marker import check_aborted, replace_aborted
from itwinai_lightning.tune.search_space import Distribution, override_args
from itwinai_lightning.tune.settings import DEFAULTS, TuneSettings, parse_settings

HELP_INTRO = (
    "Ray Tune hyper-parameter search over any LightningCLI config: each trial is the ordinary fit with the "
    "sampled values as dotted overrides. Outputs: a live progress table, <output_dir>/<name>/results.csv "
    "and best.yaml, which 'itwinai-lightning fit --config best.yaml' re-runs. Example: itwinai-lightning "
    "tune --config configs/quickstart.yaml --config configs/tune_asha.yaml"
)


def _parse_base(
    lightning_argv: list[str], space: dict[str, Distribution]
) -> tuple[int, dict[str, Any], list[Any]]:
    """Build the LightningCLI once (no Ray) to check the base config and every searched key and value.

    Returns the base ``trainer.max_epochs``, the base trainer settings and the base run's loggers.
    """
    from itwinai_lightning.cli.run import run_lightning_cli

    quiet = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    try:
        cli = run_lightning_cli(lightning_argv, run=False)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    parser = cli.parser
    for key, dist in space.items():
        for value in dist.values_to_check():
            try:
                config = parser.parse_args([*lightning_argv, *override_args({key: value})])
            except UserError as err:
                raise UserError(f"tune.search_space.{key} (value {value!r}): {err}") from None
            if get_dotted(config, key, MISSING) is MISSING:
                raise UserError(
                    f"tune.search_space.{key}: not a key of the LightningCLI config; "
                    "check the spelling (e.g. model.init_args.lr) with: itwinai-lightning fit --print_config"
                )
    max_epochs = cli.trainer.max_epochs
    trainer = {"enable_progress_bar": get_dotted(cli.config, "trainer.enable_progress_bar", MISSING)}
    if max_epochs is None or max_epochs < 1:
        max_epochs = 1000
    return int(max_epochs), trainer, list(cli.trainer.loggers)


def prepare(argv: list[str]) -> tuple[TuneSettings, list[str], int, dict[str, Any], list[Any]]:
    """Everything before Ray: split the section, validate options, search space and keys. Nothing is
    written until all of it passed, and an existing sweep is never overwritten."""
    with tempfile.TemporaryDirectory(prefix="itwinai-tune-") as scratch:
        values, scratch_argv = split_section(argv, "tune", DEFAULTS, workdir=scratch)
        settings = parse_settings(values, value_of(scratch_argv, "trainer.default_root_dir"))
        refuse_to_overwrite(settings)
        max_epochs, base_trainer, loggers = _parse_base(_absolute_configs(scratch_argv), settings.space)
    replace_aborted(settings.experiment_dir)
    settings.experiment_dir.mkdir(parents=True, exist_ok=True)
    # keep the config copies without the tune: section next to the results (resume needs them)
    copies = settings.experiment_dir / "configs"
    values, lightning_argv = split_section(argv, "tune", DEFAULTS, workdir=copies)
    return settings, _absolute_configs(lightning_argv), max_epochs, base_trainer, loggers


#: files that show a directory already holds a sweep (ours, or Ray's experiment state)
SWEEP_MARKERS = ("results.csv", "best.yaml", "tuner.pkl")


def refuse_to_overwrite(settings: TuneSettings) -> None:
    """A new sweep into the directory of an earlier one would replace its results: say so instead.

    A sweep stopped on a user error is the exception: the corrected command replaces it (and resuming it
    is refused), see :mod:`itwinai_lightning.tune.guard_marker`."""
    if not settings.experiment_dir.is_dir() or check_aborted(settings.experiment_dir, settings.resume):
        return
    if settings.resume:
        return
    found = [name for name in SWEEP_MARKERS if (settings.experiment_dir / name).exists()]
    if found:
        raise UserError(
            f"tune: {settings.experiment_dir} already holds a sweep ({found[0]}); pass --tune.resume true to "
            f"continue it, or --tune.name NEW for a new one (output_dir/name)"
        )


def _absolute_configs(argv: list[str]) -> list[str]:
    from itwinai_lightning.sections import config_positions

    out = list(argv)
    for at, path, inline in config_positions(argv):
        out[at] = f"--config={Path(path).resolve()}" if inline else str(Path(path).resolve())
    return out


def stopped_for_requeue() -> bool:
    """The job script forwarded the preemption signal (Ray Tune saved the sweep and ended): its flag."""
    import os

    from itwinai_lightning.launch.sbatch import REQUEUE_FLAG_ENV

    flag = os.environ.get(REQUEUE_FLAG_ENV)
    return bool(flag) and Path(flag).exists()


def main(argv: list[str]) -> int:
    """Run the sweep; 0 when at least one trial finished, 1 when all failed, 2 on bad input."""
    if any(a in ("-h", "--help") for a in argv):
        from itwinai_lightning.settings_help import help_text
        from itwinai_lightning.tune.settings import TuneSettings

        print(help_text("itwinai-lightning tune", HELP_INTRO, TuneSettings, "tune"))
        return 0
    if not config_paths(argv):
        raise UserError(
            "tune needs a base config: itwinai-lightning tune --config base.yaml --config search.yaml"
        )
    settings, lightning_argv, max_epochs, base_trainer, loggers = prepare(argv)

    from itwinai_lightning.tune import results
    from itwinai_lightning.tune.launcher import run_sweep
    from itwinai_lightning.tune.tracking import finish_parent, start_parent

    tracking = start_parent(loggers, settings)
    grid = run_sweep(settings, lightning_argv, max_epochs, tracking)
    if stopped_for_requeue():
        print(
            f"tune: the sweep stopped to be requeued; its state is saved in {settings.experiment_dir} and "
            "the requeued job resumes it (finished trials kept, running ones from their last checkpoint)",
            flush=True,
        )
        return 0
    rows = results.collect(grid, settings, max_epochs)
    results.write_csv(rows, settings, settings.experiment_dir / "results.csv")
    best = results.best_row(rows, settings)
    if best is not None:
        results.write_best_yaml(best, settings, base_trainer, settings.experiment_dir / "best.yaml")
    results.print_summary(rows, settings, best)
    if tracking is not None:
        finish_parent(
            tracking, settings.metric, best.metric if best else None, best.trial_id if best else None
        )
    if best is None or math.isnan(best.metric):
        print(f"tune: no trial reported {settings.metric!r}; see the errors above")
        return 1
    return 0
