"""``ItwinaiCLI``: the LightningCLI behind ``fit | validate | test | predict``, importable and subclassable.

    from itwinai_lightning.cli.lightning import ItwinaiCLI

    class MyCLI(ItwinaiCLI):
        def add_arguments_to_parser(self, parser): ...

It differs from LightningCLI in what it does around a run, never in the config language:

* user mistakes are one :class:`~itwinai_lightning.errors.UserError` line (the parser's errors, a
  constructor's ``UserError`` that jsonargparse wrapped, a Trainer argument Lightning rejected);
* every run gets a directory of its own under ``trainer.default_root_dir`` (``version_N``, ``latest``
  names the newest; :mod:`itwinai_lightning.runs.run_dir`): the Trainer's ``default_root_dir`` is that
  directory, checkpoints go to its ``checkpoints/`` and Lightning's default logger to its
  ``tensorboard/`` (or ``csv/``), so the layout is one whatever the loggers;
* the resolved config is saved redacted into the run directory and the RunRecord;
* ``--ckpt_path`` is resolved to one checkpoint before anything is built (a file, a run directory,
  ``last``/``best``, ``models:/...`` or ``module``; see :mod:`itwinai_lightning.runs.ckpt_path`), and
  ``validate``/``test``/``predict`` without one, or without the module's step method, are one line;
* options are never abbreviated (``--trainer.max_epoch`` is an error with a did-you-mean);
* every Trainer gets ``--default_callbacks`` (``[TimingMonitor]`` for fit) where the config has none of
  that class, then :class:`~itwinai_lightning.callbacks.redact.RedactCheckpointSecrets` and the
  RunRecord's writer, last.

This module imports Lightning; ``itwinai_lightning.cli`` imports it only when a LightningCLI command runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from itwinai_lightning import compat
from itwinai_lightning.cli.messages import condense, trainer_error
from itwinai_lightning.errors import UserError, collecting
from itwinai_lightning.inference.model_source import is_registry_uri
from itwinai_lightning.runs import layout, run_dir
from itwinai_lightning.runs.config_saving import RecordingSaveConfigCallback


class ItwinaiParser(LightningArgumentParser):
    """A parser whose errors are one-line :class:`UserError` s, and that takes no abbreviated option
    (``--trainer.max_epoch`` is refused with a did-you-mean instead of being read as ``max_epochs``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        raise UserError(condense(message)) from ex


def user_error_in(err: BaseException, created: Sequence[UserError] = ()) -> UserError | None:
    """The :class:`UserError` a library wrapped (jsonargparse turns a constructor's error into a generic
    "does not validate"): along the exception's cause/context chain, else the latest of ``created`` whose
    message the wrapping error repeats."""
    seen: set[int] = set()
    node: BaseException | None = err
    while node is not None and id(node) not in seen:
        if isinstance(node, UserError):
            return node
        seen.add(id(node))
        node = node.__cause__ or node.__context__
    return next((e for e in reversed(created) if str(e) and str(e) in str(err)), None)


def _require_step(model: Any, step: str, stage: str) -> None:
    """``validate``/``test`` on a module that does not define the stage's step: one line, before the run."""
    from lightning.pytorch import LightningModule

    if getattr(type(model), step, None) is getattr(LightningModule, step):
        raise UserError(
            f"{stage}: {type(model).__name__} defines no {step}(); add one to the module, or run "
            f"{'validate' if stage == 'test' else 'fit'} instead"
        )


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _say(note: str | None) -> None:
    """One line on stdout from the first process of the job (every rank resolves the same)."""
    if note is None:
        return
    from itwinai_lightning.launch.where import detect

    if detect().rank == 0:
        print(f"itwinai-lightning: {note}", flush=True)


class ItwinaiCLI(LightningCLI):
    """LightningCLI with one-line errors, redacted config saving, secret-free checkpoints and a RunRecord."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", ItwinaiParser)
        kwargs.setdefault("save_config_callback", RecordingSaveConfigCallback)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", True)
        self._root: tuple[Any, Any] | None = None  # the config's trainer section and its default_root_dir
        self.run_dir: Path | None = None  #: this run's directory, once chosen
        self._runs = bool(kwargs.get("run", True))  # run=False: built to be inspected (tune) or run later
        pinned = os.environ.get(run_dir.PIN_ENV)
        try:
            super().__init__(*args, **kwargs)
        finally:  # the pin is for the processes this run starts, not for a later run in this process
            _restore_env(run_dir.PIN_ENV, pinned)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--default_callbacks",
            type=list[str] | None,
            default=None,
            help="callbacks added unless the config has one of that class (default for fit: "
            "[TimingMonitor], so every record has its wall time and samples/s; [] for none)",
        )
        parser.add_argument(
            "--resume",
            type=str | None,
            default=None,
            help="fit: continue the run in this directory from its newest complete checkpoint (its model, "
            "data, optimizer, seed, precision and strategy must be the same; none yet: start in it)",
        )
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="this run's directory exactly (default: a new version_N under trainer.default_root_dir, "
            "or the run a fit's --ckpt_path belongs to; ROOT/latest names the newest)",
        )

    def before_instantiate_classes(self) -> None:
        """``--ckpt_path`` resolved to one checkpoint (:mod:`itwinai_lightning.runs.ckpt_path`), a
        ``models:/name/version`` fetched, before any model is built; no checkpoint is one line."""
        subcommand = getattr(self, "subcommand", None)
        if subcommand not in (None, "fit"):
            from itwinai_lightning import quiet

            quiet.not_fitting()
        # without subcommands (run=False: a tune trial) the config is the section itself
        section: Any = self.config.get(subcommand) if subcommand else self.config
        trainer = section.get("trainer") if section is not None else None
        if trainer is None:
            return
        root = run_dir.root_of(trainer.get("default_root_dir"))
        stage = str(subcommand or "fit")
        resume = section.get("resume") if stage == "fit" else None
        if resume:
            self._take_resume(section, subcommand, Path(resume))
        if "ckpt_path" in section:
            self._resolve_ckpt(section, stage, root)
        self._place(section, trainer, root, stage)
        if stage == "fit" and self.run_dir is not None and not section.get("ckpt_path"):
            self._resume_a_restart(section)

    def _take_resume(self, section: Any, subcommand: str | None, directory: Path) -> None:
        """``--resume DIR``: DIR is the run directory; its newest checkpoint, if the training is the same."""
        import yaml

        from itwinai_lightning.runs.resume import resume_point

        if section.get("ckpt_path") or section.get("run_dir"):
            raise UserError(
                "--resume names the run and its checkpoint: give it without --ckpt_path and --run_dir"
            )
        parser = compat.cli_parser(self, subcommand)
        new_config = yaml.safe_load(parser.dump(section, skip_none=False, skip_check=True)) or {}
        checkpoint, note = resume_point(directory, new_config)
        _say(note)
        section["run_dir"] = str(directory)
        if checkpoint is not None:
            section["ckpt_path"] = str(checkpoint)

    def _resume_a_restart(self, section: Any) -> None:
        """A torchrun restart of this run resumes from the run's newest complete checkpoint."""
        from itwinai_lightning.launch.where import detect
        from itwinai_lightning.runs import restarts

        restart = restarts.attempt_number()
        if not restart or self.run_dir is None:
            return
        checkpoint, note = restarts.resume_point(self.run_dir, restart)
        _say(note)
        if checkpoint is not None:
            section["ckpt_path"] = str(checkpoint)
        if detect().rank == 0:
            restarts.record_restart(self.run_dir, restart, checkpoint)

    def _resolve_ckpt(self, section: Any, stage: str, root: Path) -> None:
        from itwinai_lightning.runs.ckpt_path import resolve

        choice = resolve(section.get("ckpt_path"), stage, str(root))
        _say(choice.note)
        section["ckpt_path"] = choice.path
        uri = choice.path
        if uri is not None and is_registry_uri(uri):
            from itwinai_lightning.inference.model_source import fetch_checkpoint

            path, downloaded = fetch_checkpoint(str(uri))
            how = "downloaded to" if downloaded else "a cached copy reused from"
            _say(f"ckpt_path {uri}: {how} {path}")
            section["ckpt_path"] = str(path)

    def _place(self, section: Any, trainer: Any, root: Path, stage: str) -> None:
        """Choose this run's directory; the Trainer is built with it as ``default_root_dir`` while the
        saved config keeps the user's root (a re-run of the saved config is a new run, not this one)."""
        explicit = section.get("run_dir")
        if explicit is None and not self._runs:
            return  # built only to be inspected: no run, so no run directory
        placed = run_dir.choose(root, explicit=explicit, ckpt_path=section.get("ckpt_path"), stage=stage)
        _say(placed.note)
        if placed.note is not None:
            from itwinai_lightning import quiet

            quiet.continuing()
        self.run_dir = placed.path
        self._root = (trainer, trainer.get("default_root_dir"))
        trainer["default_root_dir"] = str(placed.path)
        if explicit is None:  # the processes Lightning's launcher starts re-run this command: same directory
            os.environ[run_dir.PIN_ENV] = str(placed.path)

    def before_validate(self) -> None:
        _require_step(self.model, "validation_step", "validate")

    def before_test(self) -> None:
        _require_step(self.model, "test_step", "test")

    def instantiate_classes(self) -> None:
        with collecting() as created:
            try:
                super().instantiate_classes()
            except (ValueError, TypeError) as err:
                found = user_error_in(err, created)
                if found is not None and found is not err:
                    raise found from err
                raise
            finally:
                if self._root is not None:  # the saved config names the root, as the user wrote it
                    trainer, value = self._root
                    trainer["default_root_dir"] = value

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        from itwinai_lightning.callbacks import defaults as default_callbacks
        from itwinai_lightning.callbacks.redact import RedactCheckpointSecrets
        from itwinai_lightning.records.writer import RecordWriter

        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError) as err:  # Lightning's checks of Trainer arguments
            raise UserError(trainer_error(err)) from err
        subcommand = getattr(self, "subcommand", None)
        section: Any = self.config.get(subcommand) if subcommand else self.config
        wanted = section.get("default_callbacks") if section is not None else None
        if wanted is None:
            wanted = default_callbacks.FIT_DEFAULTS if subcommand in (None, "fit") else ()
        trainer.callbacks.extend(default_callbacks.missing(trainer.callbacks, wanted))  # type: ignore[attr-defined]
        if self.run_dir is not None:
            logger = (section.get("trainer") or {}).get("logger") if section is not None else None
            layout.apply(trainer, self.run_dir, default_logger=logger in (None, True))
        # no secret in a checkpoint's hyperparameters; the run's one record writer, after all others
        trainer.callbacks.extend([RedactCheckpointSecrets(), RecordWriter()])  # type: ignore[attr-defined]
        return trainer
