"""LightningCLI bootstrapping: the one path every fit, tune trial, benchmark point and job config takes
through :class:`~itwinai_lightning.cli.lightning.ItwinaiCLI`. Importing this module imports no Lightning;
building the CLI does (with this package's short names registered first)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from itwinai_lightning.errors import UserError

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningCLI


def register_short_names() -> None:
    """Import (cheaply) what makes ``hpc_ddp``, ``GPUMonitor``, ``MultiLogger`` ... resolvable by name."""
    for module in (
        "itwinai_lightning.strategies",
        "itwinai_lightning.callbacks",
        "itwinai_lightning.loggers.multi",
        "itwinai_lightning.loggers.provenance",
        "itwinai_lightning.loggers.registry",
        "itwinai_lightning.inference.writer",
    ):
        importlib.import_module(module)


def cli_class() -> type[LightningCLI]:
    from itwinai_lightning.cli.lightning import ItwinaiCLI

    return ItwinaiCLI


def _import_lightning() -> None:
    """Import Lightning (through this package's registrations); a broken torch pairing is one line.

    A torchvision (or torchaudio) built for another torch makes ``import lightning`` fail deep inside
    torchmetrics; the user needs the pairing and the pip line, not that traceback.
    """
    try:
        register_short_names()
    except (ImportError, RuntimeError, OSError):
        from itwinai_lightning.extras import torch_companion_problems

        problems = torch_companion_problems()
        if not problems:
            raise
        problem, fix = problems[0]
        raise UserError(f"lightning does not import: {problem}; {fix}") from None


def run_lightning_cli(
    args: Sequence[str], run: bool = True, from_sys_argv: bool = False, **kwargs: Any
) -> LightningCLI:
    """Build (and by default run) the LightningCLI on ``args``; the path every fit/tune/benchmark run takes.

    ``from_sys_argv``: ``args`` are ``sys.argv[1:]``; let LightningCLI read them itself (no warning).
    """
    from itwinai_lightning import quiet

    quiet.install()
    _import_lightning()
    return cli_class()(args=None if from_sys_argv else list(args), run=run, **kwargs)


def resolve_config(args: Sequence[str], subcommand: str = "fit") -> dict[str, Any]:
    """Parse and validate `<subcommand> <args>` as the CLI would; build nothing; return the resolved config.

    For callers that must know the full config without instantiating the model, data or Trainer (e.g.
    rendering a GPU job script on a CPU-only login node).
    """
    import warnings

    import yaml

    register_short_names()

    class _ParseOnly(cli_class()):  # type: ignore[misc]
        def before_instantiate_classes(self) -> None:
            return None  # e.g. a models:/ checkpoint is fetched by the run, not by whoever renders its job

        def instantiate_classes(self) -> None:
            return None

        def _run_subcommand(self, subcommand: str) -> None:
            return None

    import logging

    seed_log = logging.getLogger("lightning.fabric.utilities.seed")  # nothing is seeded: no "Seed set to"
    level = seed_log.level
    seed_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():  # args given in-process while sys.argv holds another command
            warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
            cli = _ParseOnly(args=[subcommand, *args], run=True)
    finally:
        seed_log.setLevel(level)
    from itwinai_lightning import compat

    text = compat.cli_parser(cli, subcommand).dump(cli.config[subcommand], skip_none=False, skip_check=True)
    return yaml.safe_load(text) or {}
