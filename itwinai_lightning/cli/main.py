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
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from itwinai_lightning.cli.messages import exit_with_error
from itwinai_lightning.cli.run import run_lightning_cli
from itwinai_lightning.errors import UserError

if TYPE_CHECKING:
    pass


#: Subcommands outside LightningCLI: name -> (module exposing ``main(argv) -> int``, one-line help).
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "tune": ("itwinai_lightning.tune.cli", "Ray Tune hyper-parameter search over any config"),
    "benchmark": ("itwinai_lightning.benchmark.cli", "scaling grid over strategies x workers, with a report"),
    "slurm": ("itwinai_lightning.slurm.cli", "render (and submit) an sbatch script for a config"),
    "env": (
        "itwinai_lightning.env.cli",
        "what this node looks like: launcher, ranks, devices, versions, extras",
    ),
    "logs": (
        "itwinai_lightning.loggers.cli",
        "tracking spools: 'logs replay RUN_DIR' re-sends spooled data",
    ),
    "profile": ("itwinai_lightning.profiling.cli", "'profile report RUN_DIR' rebuilds the hotspot summary"),
    "examples": (
        "itwinai_lightning.gallery.cli",
        "list the example configs, or copy them: examples --to DIR",
    ),
    "build-horovod": (
        "itwinai_lightning.build_horovod.cli",
        "build Horovod against the installed torch and install it (no extra can: see --help)",
    ),
}
LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train (and validate) a model",
    "validate": "run one validation epoch",
    "test": "run one test epoch",
    "predict": "batch inference on any launcher (ShardedPredictionWriter; --ckpt_path models:/...)",
}


def _overview() -> str:
    lines = [
        "usage: itwinai-lightning <command> [--config FILE ...] [--section.key VALUE ...]",
        "",
        "PyTorch Lightning from a laptop to an HPC system. Commands:",
    ]
    for name, text in LIGHTNING_COMMANDS.items():
        lines.append(f"  {name:<14} {text}")
    for name, (_, text) in EXTRA_COMMANDS.items():
        lines.append(f"  {name:<14} {text}")
    lines += [
        "",
        "Run 'itwinai-lightning <command> --help' for a command's options.",
        "Example: python -m itwinai_lightning fit --config configs/quickstart.yaml --trainer.max_epochs 2",
    ]
    return "\n".join(lines)


def _precheck_configs(args: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """Read every ``--config`` file first, so a missing or malformed file is named in the error."""
    from itwinai_lightning.sections import config_paths, load_yaml_file

    configs = [(path, load_yaml_file(path)) for path in config_paths(args)]
    for line in replaced_lists(configs):
        print(f"itwinai-lightning: warning: {line}", file=sys.stderr)
    return configs


#: lists that users extend more often than they replace: a later file replacing one is said out loud
EXTENDED_LISTS = (("trainer", "callbacks"),)


def replaced_lists(configs: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """One line per later config file whose ``callbacks:`` replaces callbacks an earlier file gave."""
    out = []
    for section, key in EXTENDED_LISTS:
        earlier: tuple[str, list[Any]] | None = None
        for path, data in configs:
            node = data.get(section) if isinstance(data, dict) else None
            value = node.get(key) if isinstance(node, dict) else None
            if isinstance(value, list) and earlier is not None and earlier[1]:
                dropped = [_class_name(v) for v in earlier[1] if v not in value]
                if dropped:
                    out.append(
                        f"{path} replaces {section}.{key} of {earlier[0]} (drops {', '.join(dropped)}); "
                        f"write '{key}+:' to add to the list instead"
                    )
            if isinstance(value, list):
                earlier = (path, value)
            elif isinstance(node, dict) and isinstance(node.get(f"{key}+"), list) and earlier is not None:
                earlier = (earlier[0], [*earlier[1], *node[f"{key}+"]])
    return out


def _class_name(value: Any) -> str:
    path = value.get("class_path") if isinstance(value, dict) else value
    return str(path).rsplit(".", 1)[-1]


def _name_the_file(message: str, configs: list[tuple[str, dict[str, Any]]]) -> str:
    """Append ``(in FILE)`` to an unknown-key error when one of the config files holds that key."""
    value = re.search(r"class_path '([^']+)'", message)
    if value is not None:
        for path, data in reversed(configs):
            if _holds_value(data, value.group(1)):
                return f"{message} (in {path})"
        return message
    match = re.search(r"does not accept (?:option|nested key)s? '([^']+)'", message)
    if match is None:
        return message
    for path, data in reversed(configs):
        node: Any = data
        for part in match.group(1).split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return f"{message} (in {path})"
    return message


def _dispatch(name: str, argv: list[str]) -> int:
    module_name = EXTRA_COMMANDS[name][0]
    module = importlib.import_module(module_name)
    entry: Callable[[list[str]], int | None] = module.main
    return int(entry(argv) or 0)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point. Exits 2 with one line on user errors."""
    args = list(sys.argv[1:] if argv is None else argv)
    from itwinai_lightning import quiet

    quiet.install()
    if not args or args[0] in ("-h", "--help"):
        print(_overview())
        raise SystemExit(0 if args else 2)
    try:
        if args[0] in EXTRA_COMMANDS:
            raise SystemExit(_dispatch(args[0], args[1:]))
        if args[0] not in LIGHTNING_COMMANDS and not args[0].startswith("-"):
            known = ", ".join([*LIGHTNING_COMMANDS, *EXTRA_COMMANDS])
            raise UserError(f"unknown command {args[0]!r}; choose one of: {known}")
        from itwinai_lightning.launch import mpi_match

        mpi_match.check()  # a rank in a container under an MPI launcher: the image's MPI is the host's
        configs = _precheck_configs(args)
        try:
            cli = run_lightning_cli(args, from_sys_argv=argv is None)
        except UserError as err:
            from itwinai_lightning.cli.suggest import hint

            named = _name_the_file(str(err), configs)
            raise UserError(named + hint(str(err), [data for _, data in configs], args)) from err
        _print_summary(cli, args[0])
        from itwinai_lightning.strategies import process_group

        process_group.close()  # before interpreter teardown, see strategies.process_group
    except UserError as err:
        if os.environ.get("ITWINAI_DEBUG"):
            raise
        exit_with_error(str(err))


def _print_summary(cli: Any, subcommand: str) -> None:
    """After a fit, on global rank 0: where the outputs went and the key figures."""
    trainer = getattr(cli, "trainer", None)
    if subcommand != "fit" or trainer is None or trainer.global_rank != 0:
        return
    from pathlib import Path

    from itwinai_lightning.runs import summary as run_summary

    log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger is not None else None
    print("\n".join(run_summary.lines(Path(trainer.default_root_dir), log_dir)), flush=True)


def _holds_value(node: Any, value: str) -> bool:
    if isinstance(node, dict):
        return any(_holds_value(v, value) for v in node.values())
    if isinstance(node, list):
        return any(_holds_value(v, value) for v in node)
    return node == value
