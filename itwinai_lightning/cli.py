"""``python -m itwinai_lightning`` / ``itwinai-lightning``: LightningCLI plus the package's own subcommands.

* ``fit | validate | test | predict`` -- :class:`ItwinaiCLI`, a LightningCLI: composable ``--config`` files
  (later wins), dotted overrides, ``--print_config``, any LightningModule/DataModule by class path, and this
  package's strategies (``hpc_ddp``, ...), callbacks and loggers by short name.
* ``tune | benchmark | slurm | env | logs | profile`` -- dispatched to their packages, imported only when
  asked for, so ``--help`` and ``fit`` never import Ray, MLflow, W&B, DeepSpeed or Horovod.

User mistakes (bad YAML, unknown class path or key, missing file or extra) print one line and exit 2.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from itwinai_lightning.errors import UserError, exit_with_error

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningCLI

#: Subcommands outside LightningCLI: name -> (module exposing ``main(argv) -> int``, one-line help).
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "tune": ("itwinai_lightning.tune.cli", "Ray Tune hyper-parameter search over any config"),
    "benchmark": ("itwinai_lightning.benchmark.cli", "scaling grid over strategies x workers, with a report"),
    "slurm": ("itwinai_lightning.slurm.cli", "render (and submit) an sbatch script for a config"),
    "env": ("itwinai_lightning.envinfo", "what this node looks like: launcher, ranks, devices, versions"),
    "logs": ("itwinai_lightning.loggers.cli", "tracking spools: 'logs replay RUN_DIR' re-sends spooled records"),
    "profile": ("itwinai_lightning.profiling.cli", "'profile report RUN_DIR' rebuilds the hotspot summary"),
}
LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train (and validate) a model",
    "validate": "run one validation epoch",
    "test": "run one test epoch",
    "predict": "run inference",
}


def _overview() -> str:
    lines = [
        "usage: itwinai-lightning <command> [--config FILE ...] [--section.key VALUE ...]",
        "",
        "PyTorch Lightning from a laptop to an HPC system. Commands:",
    ]
    for name, text in LIGHTNING_COMMANDS.items():
        lines.append(f"  {name:<10} {text}")
    for name, (_, text) in EXTRA_COMMANDS.items():
        lines.append(f"  {name:<10} {text}")
    lines += [
        "",
        "Run 'itwinai-lightning <command> --help' for a command's options.",
        "Example: python -m itwinai_lightning fit --config configs/quickstart.yaml --trainer.max_epochs 2",
    ]
    return "\n".join(lines)


def _register_short_names() -> None:
    """Import (cheaply) what makes ``hpc_ddp``, ``GPUMonitor``, ``MultiLogger`` ... resolvable by name."""
    for module in ("itwinai_lightning.strategies", "itwinai_lightning.callbacks", "itwinai_lightning.loggers"):
        importlib.import_module(module)


_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>")


def _condense(message: str) -> str:
    """jsonargparse nests errors over many lines; keep the ones that name the key and the problem."""
    lines = [ln.strip().lstrip("- ").strip() for ln in message.strip().splitlines()]
    lines = [ln for ln in lines if ln]
    if len(lines) <= 1:
        return lines[0] if lines else message
    head = lines[0].rstrip(":")
    useful = [ln for ln in lines[1:] if not ln.startswith(_NOISE)]
    if not useful:
        return head
    detail = useful[0]
    if detail.endswith(":") and len(useful) > 1:
        detail = f"{detail} {useful[1]}"
    return f"{head}: {detail}"


def _cli_class() -> type[LightningCLI]:
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    from itwinai_lightning.config_saving import RecordingSaveConfigCallback

    class _Parser(LightningArgumentParser):
        def error(self, message: str, ex: Exception | None = None) -> NoReturn:
            raise UserError(_condense(message)) from ex

    class ItwinaiCLI(LightningCLI):
        """LightningCLI with one-line errors, redacted config saving and a RunRecord header."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("parser_class", _Parser)
            kwargs.setdefault("save_config_callback", RecordingSaveConfigCallback)
            kwargs.setdefault("save_config_kwargs", {"overwrite": True})
            kwargs.setdefault("subclass_mode_model", True)
            kwargs.setdefault("subclass_mode_data", True)
            kwargs.setdefault("auto_configure_optimizers", True)
            super().__init__(*args, **kwargs)

    return ItwinaiCLI


def run_lightning_cli(
    args: Sequence[str], run: bool = True, from_sys_argv: bool = False, **kwargs: Any
) -> LightningCLI:
    """Build (and by default run) the LightningCLI on ``args``; the path every fit/tune/benchmark run takes.

    ``from_sys_argv``: ``args`` are ``sys.argv[1:]``; let LightningCLI read them itself (no warning).
    """
    _register_short_names()
    return _cli_class()(args=None if from_sys_argv else list(args), run=run, **kwargs)


def _dispatch(name: str, argv: list[str]) -> int:
    module_name = EXTRA_COMMANDS[name][0]
    module = importlib.import_module(module_name)
    entry: Callable[[list[str]], int | None] = module.main
    return int(entry(argv) or 0)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point. Exits 2 with one line on user errors."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_overview())
        raise SystemExit(0 if args else 2)
    try:
        if args[0] in EXTRA_COMMANDS:
            raise SystemExit(_dispatch(args[0], args[1:]))
        if args[0] not in LIGHTNING_COMMANDS and not args[0].startswith("-"):
            known = ", ".join([*LIGHTNING_COMMANDS, *EXTRA_COMMANDS])
            raise UserError(f"unknown command {args[0]!r}; choose one of: {known}")
        run_lightning_cli(args, from_sys_argv=argv is None)
    except UserError as err:
        if os.environ.get("ITWINAI_DEBUG"):
            raise
        exit_with_error(str(err))
