"""Every private API of Lightning, torch and yProv4ML this package relies on, in one place.

Where no public API does the job, the private one is reached here and nowhere else, and
:data:`TOUCH_POINTS` names it with the versions it is tested with (the dependency ranges in
``pyproject.toml``). ``tests/architecture/test_compat.py`` checks that each still exists and that no other
module reaches a private name of these libraries; when an upgrade breaks one, that test names it.

Protected hooks the strategies *override* (``_configure_launcher``, ``_setup_model``...) are listed in
:data:`OVERRIDDEN_HOOKS` and checked the same way. Nothing heavy is imported at module level: the names
load on first use.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, NamedTuple

#: the versions every touch point below is tested with (kept equal to pyproject.toml's ranges)
LIGHTNING_RANGE = ">=2.4,<2.7"
TORCH_RANGE = ">=2.2,<2.15"
YPROV_RANGE = "==3.2.3 or >=3.2.8,<3.3"


class TouchPoint(NamedTuple):
    """One private name: the module that holds it, the name (``Class()._attr``: an attribute every instance
    has), what it is used for, the tested range."""

    module: str
    name: str
    why: str
    tested: str


TOUCH_POINTS: tuple[TouchPoint, ...] = (
    TouchPoint(
        "lightning.pytorch.cli",
        "LightningCLI._parser",
        "the subcommand's parser, to dump the resolved config the way the run saves it",
        LIGHTNING_RANGE,
    ),
    TouchPoint(
        "lightning.pytorch.core.module",
        "LightningModule()._trainer",
        "the Trainer a module is attached to, or None (the public property raises when there is none)",
        LIGHTNING_RANGE,
    ),
    TouchPoint(
        "lightning.pytorch.trainer.trainer",
        "Trainer()._accelerator_connector",
        "the cluster environment Lightning chose, whose SLURM auto-requeue the requeue callback turns off",
        LIGHTNING_RANGE,
    ),
    TouchPoint(
        "lightning.pytorch.trainer.trainer",
        "Trainer()._checkpoint_connector",
        "the checkpoint's content for a background save, without Trainer.save_checkpoint's barrier",
        LIGHTNING_RANGE,
    ),
    TouchPoint(
        "lightning.pytorch.core.optimizer",
        "_init_optimizers_and_lr_schedulers",
        "a tune trial's fresh optimizer hyper-parameters over restored optimizer state (PBT)",
        LIGHTNING_RANGE,
    ),
    TouchPoint(
        "lightning.pytorch.strategies.launchers",
        "_SubprocessScriptLauncher",
        "the ranks Lightning's own launcher started, killed when a peer is lost",
        LIGHTNING_RANGE,
    ),
    TouchPoint(
        "lightning.pytorch.strategies.ddp",
        "DDPStrategy()._lightning_module",
        "the module a strategy holds while reporting a lost peer (the public property may be unset then)",
        LIGHTNING_RANGE,
    ),
    TouchPoint(
        "lightning.pytorch.strategies.fsdp",
        "_METADATA_FILENAME",
        "the file of a sharded FSDP checkpoint Lightning reads its trainer state from (background saves)",
        LIGHTNING_RANGE,
    ),
    TouchPoint(
        "torch.distributed.distributed_c10d",
        "_set_pg_timeout",
        "the collective timeout set after a longer rendezvous timeout",
        TORCH_RANGE,
    ),
    TouchPoint(
        "torch.distributed.algorithms._checkpoint.checkpoint_wrapper",
        "apply_activation_checkpointing",
        "FSDP activation checkpointing of the named layer classes (the path Lightning uses too)",
        TORCH_RANGE,
    ),
    TouchPoint(
        "sys",
        "_current_frames",
        "the stack of a hung training thread, read by the hang watchdog's thread",
        "CPython 3.11-3.13 (documented in the sys module)",
    ),
    TouchPoint(
        "yprov4ml.functs",
        "_requirements_lookup",
        "keep yProv4ML from walking and writing the user's working directory for requirements.txt",
        YPROV_RANGE,
    ),
)

#: protected hooks of Lightning's classes that this package's subclasses override: (class, hook)
OVERRIDDEN_HOOKS: tuple[tuple[str, str], ...] = (
    ("lightning.pytorch.strategies.ddp:DDPStrategy", "_configure_launcher"),
    ("lightning.pytorch.strategies.ddp:DDPStrategy", "_get_process_group_backend"),
    ("lightning.pytorch.strategies.fsdp:FSDPStrategy", "_setup_model"),
    ("lightning.pytorch.strategies.deepspeed:DeepSpeedStrategy", "_configure_launcher"),
    ("lightning.pytorch.strategies.parallel:ParallelStrategy", "_configure_launcher"),  # horovod
)  # fmt: skip


# -- Lightning --------------------------------------------------------------------------------------------
def cli_parser(cli: Any, subcommand: str | None) -> Any:
    """The parser of ``subcommand`` (or the only one) of a LightningCLI."""
    return cli._parser(subcommand)


def attached_trainer(module: Any) -> Any:
    """The Trainer ``module`` is attached to, or None."""
    return getattr(module, "_trainer", None)


def dump_checkpoint(trainer: Any) -> dict[str, Any]:
    """What ``Trainer.save_checkpoint`` writes (every callback's and the module's ``on_save_checkpoint``
    included), without saving it."""
    return trainer._checkpoint_connector.dump_checkpoint(False)  # type: ignore[no-any-return]


def cluster_environment_of(trainer: Any) -> Any:
    """The cluster environment Lightning's accelerator connector chose for ``trainer``, or None."""
    connector = getattr(trainer, "_accelerator_connector", None)
    return getattr(connector, "cluster_environment", None) if connector is not None else None


def strategy_module(strategy: Any) -> Any:
    """The LightningModule a strategy holds, or None."""
    return getattr(strategy, "_lightning_module", None)


def fresh_optimizers(module: Any) -> tuple[list[Any], list[Any]]:
    """The optimizers and scheduler configs ``module.configure_optimizers`` makes now."""
    from lightning.pytorch.core.optimizer import _init_optimizers_and_lr_schedulers

    return _init_optimizers_and_lr_schedulers(module)  # type: ignore[no-any-return]


_CLASSES = {
    "SubprocessScriptLauncher": ("lightning.pytorch.strategies.launchers", "_SubprocessScriptLauncher"),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    """``SubprocessScriptLauncher``: Lightning's private class, imported on first use."""
    if name not in _CLASSES:
        raise AttributeError(name)
    import importlib

    module, attr = _CLASSES[name]
    return getattr(importlib.import_module(module), attr)


# -- torch ------------------------------------------------------------------------------------------------
def set_collective_timeout(timeout: timedelta) -> bool:
    """Set the default process group's collective timeout; False where torch has no way to."""
    import torch.distributed

    setter = getattr(torch.distributed.distributed_c10d, "_set_pg_timeout", None)
    if setter is None:
        return False
    setter(timeout)
    return True


def fsdp_metadata_filename() -> str:
    """The file in a sharded FSDP checkpoint directory that holds everything but the sharded tensors."""
    from lightning.pytorch.strategies import fsdp

    return str(fsdp._METADATA_FILENAME)


def activation_checkpointing() -> tuple[Any, Any, Any]:
    """torch's ``(CheckpointImpl, apply_activation_checkpointing, checkpoint_wrapper)``."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    return CheckpointImpl, apply_activation_checkpointing, checkpoint_wrapper


# -- CPython ----------------------------------------------------------------------------------------------
def current_frames() -> dict[int, Any]:
    """Every thread's current frame by thread id (``sys._current_frames``: documented, underscore-named)."""
    import sys

    return sys._current_frames()


# -- yProv4ML ---------------------------------------------------------------------------------------------
#: the module functions yProv4ML's ``end_run`` calls to find and to write ``requirements.txt``
PROV_REQUIREMENTS_LOOKUP = "_requirements_lookup"
PROV_REQUIREMENTS_WRITER = "_generate_requirements"  # from 3.2.8
