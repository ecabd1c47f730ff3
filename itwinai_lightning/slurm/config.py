"""Resolve the run's LightningCLI config (without building a Trainer) and adapt it for the job.

The job must run exactly what the user asked for: the config is parsed by the same LightningCLI that
``fit`` uses, and its full dump (every default filled in, ``seed_everything`` fixed) is what the job
script runs. Nothing is instantiated, so rendering a GPU job works on a login node without GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from itwinai_lightning.errors import UserError
from itwinai_lightning.inference.model_source import is_registry_uri

REQUEUE_CALLBACK = "itwinai_lightning.slurm.requeue.SlurmRequeue"
TIMED_CALLBACK = "itwinai_lightning.callbacks.timed_checkpoint.TimedCheckpoint"
GPU_ACCELERATORS = ("gpu", "cuda", "rocm", "auto")


def resolve_lightning_config(lightning_argv: Sequence[str], subcommand: str = "fit") -> dict[str, Any]:
    """Parse ``<subcommand> <lightning_argv>`` with the project's LightningCLI; return the resolved config."""
    from itwinai_lightning.cli.run import resolve_config

    return resolve_config(lightning_argv, subcommand)


WRITER = "itwinai_lightning.inference.ShardedPredictionWriter"


def for_predict(config: dict[str, Any], run_dir: Path) -> tuple[dict[str, Any], bool]:
    """A predict job's config: its ``--ckpt_path`` resolved now (:mod:`itwinai_lightning.runs.ckpt_path`),
    a file made absolute, and a :class:`ShardedPredictionWriter` added when none is configured (``True``
    then)."""
    from itwinai_lightning.runs.ckpt_path import MODULE_WEIGHTS, resolve

    out = dict(config)
    root = (out.get("trainer") or {}).get("default_root_dir")
    choice = resolve(out.get("ckpt_path"), "predict", root)  # the job gets exactly this checkpoint
    if choice.note:
        print(f"itwinai-lightning: {choice.note}", flush=True)
    if choice.path is None:
        out["ckpt_path"] = MODULE_WEIGHTS
    elif not is_registry_uri(choice.path):
        out["ckpt_path"] = str(portable(Path(choice.path).expanduser().resolve()))
    trainer = dict(out.get("trainer") or {})
    callbacks = list(trainer.get("callbacks") or [])
    has_writer = any(
        isinstance(c, dict) and str(c.get("class_path", "")).endswith("ShardedPredictionWriter")
        for c in callbacks
    )
    if not has_writer:  # its default output_dir: the job's own run directory (version_N/predictions)
        callbacks.append({"class_path": WRITER})
    trainer["callbacks"] = callbacks
    out["trainer"] = trainer
    return out, not has_writer


def devices_per_node(config: dict[str, Any], gpus_per_node: int) -> int:
    """How many ranks each node runs, from ``trainer.devices`` (and the preset for ``auto``)."""
    trainer = config.get("trainer") or {}
    devices = trainer.get("devices", "auto")
    accelerator = str(trainer.get("accelerator") or "auto")
    if isinstance(devices, list):
        return len(devices)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    if accelerator in GPU_ACCELERATORS and gpus_per_node > 0:
        return gpus_per_node
    if accelerator == "cpu" and devices in ("auto", None):
        return 1
    raise UserError(
        f"trainer.devices is {devices!r}: set it to the number of devices per node "
        "(e.g. --trainer.devices 4) so the job knows how many tasks to start per node"
    )


#: Strategies whose processes Lightning starts itself on one machine: they cannot span nodes.
SINGLE_NODE_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook", "dp", "single_device")


def check_nodes(config: dict[str, Any], nodes: int, command: str) -> None:
    """One line (UserError) when ``slurm.nodes`` cannot be what the config runs on."""
    trainer = config.get("trainer") or {}
    num_nodes = trainer.get("num_nodes")
    if isinstance(num_nodes, int) and num_nodes > 1 and num_nodes != nodes:
        raise UserError(
            f"slurm.nodes={nodes} but trainer.num_nodes={num_nodes}; they must agree: "
            f"set --slurm.nodes {num_nodes} or drop trainer.num_nodes (the job sets it from slurm.nodes)"
        )
    strategy = trainer.get("strategy")
    name = strategy.get("class_path", "") if isinstance(strategy, dict) else str(strategy or "")
    if command in ("fit", "predict") and nodes > 1 and name.rsplit(".", 1)[-1] in SINGLE_NODE_STRATEGIES:
        raise UserError(
            f"slurm.nodes={nodes} but trainer.strategy {name!r} starts its processes on one machine only; "
            "use hpc_ddp (or hpc_deepspeed, horovod) across nodes, or --slurm.nodes 1"
        )


def without_fit_arguments(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the top-level keys that are ``Trainer.fit`` arguments (``ckpt_path``,
    ``weights_only``...): the ``fit`` dump has them, ``tune`` (whose trials start fresh) rejects them."""
    import inspect

    from lightning.pytorch import Trainer

    objects = ("self", "model", "train_dataloaders", "val_dataloaders", "datamodule")
    fit_only = set(inspect.signature(Trainer.fit).parameters) - set(objects)
    return {key: value for key, value in config.items() if key not in fit_only}


def uses_horovod(config: dict[str, Any]) -> bool:
    strategy = (config.get("trainer") or {}).get("strategy")
    text = strategy.get("class_path", "") if isinstance(strategy, dict) else str(strategy or "")
    return "horovod" in text.lower()


def adapt_for_job(
    config: dict[str, Any],
    *,
    num_nodes: int,
    devices: int,
    run_dir: Path,
    requeue: bool,
    signal_name: str,
    check_every_n_steps: int,
    time_limit_margin_s: float | None = None,
    checkpoint_every_min: float = 0.0,
) -> dict[str, Any]:
    """Set nodes/devices/run dir and add the requeue callback (once) to the resolved config, and a
    TimedCheckpoint every ``checkpoint_every_min`` minutes unless the config has one (0: none)."""
    out = dict(config)
    trainer = dict(out.get("trainer") or {})
    trainer["num_nodes"] = num_nodes
    if not isinstance(trainer.get("devices"), list):
        trainer["devices"] = devices
    trainer["default_root_dir"] = str(run_dir)
    callbacks = list(trainer.get("callbacks") or [])
    callbacks = [c for c in callbacks if not _is_requeue(c)]
    if checkpoint_every_min > 0 and not any(_is_timed(c) for c in callbacks):
        callbacks.append({"class_path": TIMED_CALLBACK, "init_args": {"every_min": checkpoint_every_min}})
    if requeue:
        callbacks.append(
            {
                "class_path": REQUEUE_CALLBACK,
                "init_args": {
                    "signal": signal_name,
                    "check_every_n_steps": check_every_n_steps,
                    "time_limit_margin_s": time_limit_margin_s,
                },
            }
        )
    trainer["callbacks"] = callbacks or None
    out["trainer"] = trainer
    return out


def _is_timed(callback: Any) -> bool:
    name = callback.get("class_path", "") if isinstance(callback, dict) else ""
    return name in (TIMED_CALLBACK, "TimedCheckpoint")


def _is_requeue(callback: Any) -> bool:
    return isinstance(callback, dict) and callback.get("class_path") == REQUEUE_CALLBACK


def run_dir_of(config: dict[str, Any], job_name: str) -> Path:
    """The root of the job's runs: ``trainer.default_root_dir``, else ``runs/<job name>``; relative to
    the directory the job is rendered (and submitted) from when it lies below it (:func:`portable`)."""
    root = (config.get("trainer") or {}).get("default_root_dir")
    return portable(Path(root or Path("runs") / job_name).expanduser().resolve())


def portable(path: Path) -> Path:
    """``path`` relative to the current directory when it lies below it, else absolute: a job script
    and its config carry no render machine's absolute path for what sits in the submit directory."""
    absolute = path.resolve()
    try:
        return absolute.relative_to(Path.cwd().resolve())
    except ValueError:
        return absolute


def save_config(config: dict[str, Any], path: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the job's config (owner-readable only: it may hold credentials the run needs)."""
    data = dict(config)
    if extra:
        data.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(0o600)
    return path
