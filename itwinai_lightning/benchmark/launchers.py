"""Command lines for one grid point under each launcher, and the sbatch script for SLURM submission.

Every grid point is the ordinary ``python -m itwinai_lightning fit`` with the user's config and overrides,
plus the strategy, the device count, the per-worker batch size, the monitoring callbacks and its own
``--run_dir`` (so it writes its own RunRecord there).

The command of each launcher is the launcher table's (:mod:`itwinai_lightning.launchers`); a ``ray``
strategy (``ray_ddp``) runs under the ``local`` command, as Ray starts the workers itself.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from itwinai_lightning import launchers as table

LAUNCHERS = table.NAMES
#: Callbacks every grid point gets unless its config has one of the class (``--default_callbacks``;
#: skipped, with a warning, when not importable in this install).
DEFAULT_CALLBACKS = (
    "itwinai_lightning.callbacks.timing.TimingMonitor",
    "itwinai_lightning.callbacks.device_monitor.GPUMonitor",
)
PROFILE_CALLBACK = "itwinai_lightning.callbacks.torch_profiler.TorchProfilerBreakdown"
#: what a ``mode: predict`` point adds: every prediction written once, its loop timed
PREDICT_WRITER = "itwinai_lightning.inference.ShardedPredictionWriter"


@dataclass(frozen=True)
class GridPoint:
    """One run of the grid: a strategy at a worker count, one repetition."""

    strategy: str
    workers: int
    repetition: int

    @property
    def name(self) -> str:
        return f"{self.strategy}-w{self.workers}-r{self.repetition}"


def fit_args(
    point: GridPoint,
    lightning_argv: Sequence[str],
    run_dir: str,
    *,
    batch_key: str,
    per_worker_batch: int | None,
    callbacks: Sequence[str],
    accelerator: str | None,
    devices: int,
    num_nodes: int = 1,
    mode: str = "fit",
) -> list[str]:
    """``fit`` (or ``predict``) arguments for this grid point: the user's, then ours (later flags win)."""
    # predict measures the loop, whatever the weights: the module's own unless the user names a checkpoint
    # (placed first, so a --ckpt_path in the user's arguments or config files wins)
    args = [mode, *(["--ckpt_path", "module"] if mode == "predict" else []), *lightning_argv]
    args += ["--trainer.strategy", point.strategy]
    args += ["--trainer.devices", str(devices), "--trainer.num_nodes", str(num_nodes)]
    if accelerator:
        args += ["--trainer.accelerator", accelerator]
    if per_worker_batch is not None:
        args += [f"--{batch_key}", str(per_worker_batch)]
    if callbacks:  # added only where the config has none of that class (its own TimingMonitor is kept)
        args.append(f"--default_callbacks=[{', '.join(callbacks)}]")
    if mode == "predict":
        args += [f"--trainer.callbacks+={PREDICT_WRITER}", "--trainer.callbacks.output_dir"]
        args += [f"{run_dir}/predictions", "--trainer.callbacks.overwrite", "true"]
    args += ["--run_dir", run_dir]
    return args


def launch_command(
    launcher: str, workers: int, fit: Sequence[str], python: str | None = None, extra: Sequence[str] = ()
) -> list[str]:
    """The full argv that runs ``fit`` on ``workers`` processes with ``launcher`` on this node."""
    return table.launch_command(launcher, workers, fit, python or sys.executable, extra)


def slurm_layout(workers: int, tasks_per_node: int | None) -> tuple[int, int]:
    """(nodes, tasks per node) for ``workers`` processes; raise ValueError if they do not divide."""
    per_node = min(workers, tasks_per_node) if tasks_per_node else workers
    if workers % per_node:
        raise ValueError(f"{workers} workers do not split evenly into nodes of {per_node} tasks")
    return workers // per_node, per_node


def render_sbatch(
    point: GridPoint,
    run_dir: str,
    fit: Sequence[str],
    *,
    nodes: int,
    tasks_per_node: int,
    slurm: Mapping[str, Any],
    python: str | None = None,
) -> str:
    """A plain sbatch script: one ``srun`` of the fit, then the runner's bookkeeping of the outcome."""
    py = python or sys.executable
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=bench-{point.name}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={tasks_per_node}",
        f"#SBATCH --output={run_dir}/slurm-%j.out",
    ]
    for key in ("partition", "account", "time", "qos", "reservation"):
        if slurm.get(key):
            lines.append(f"#SBATCH --{key}={slurm[key]}")
    if slurm.get("gpus_per_node"):
        lines.append(f"#SBATCH --gpus-per-node={slurm['gpus_per_node']}")
    if slurm.get("cpus_per_task"):
        lines.append(f"#SBATCH --cpus-per-task={slurm['cpus_per_task']}")
    lines += [f"#SBATCH {opt}" for opt in slurm.get("sbatch_options") or []]
    lines += ["", "set -u", *(slurm.get("setup") or [])]
    step = ["srun", f"--ntasks-per-node={tasks_per_node}", py, "-m", "itwinai_lightning", *fit]
    err = f"{run_dir}/fit.stderr"
    lines += [
        f"{shlex.join(step)} 2> >(tee {shlex.quote(err)} >&2)",
        "rc=$?",
        f'{shlex.join([py, "-m", "itwinai_lightning.benchmark.finish", run_dir])} "$rc" {shlex.quote(err)}',
        'exit "$rc"',
        "",
    ]
    return "\n".join(lines)
