"""Command lines for one grid point under each launcher, and the sbatch script for SLURM submission.

Every grid point is the ordinary ``python -m itwinai_lightning fit`` with the user's config and overrides,
plus the strategy, the device count, the per-worker batch size, the monitoring callbacks and its own
``--run_dir`` (so it writes its own RunRecord there).

The command of each launcher is the launcher table's (:mod:`itwinai_lightning.launch.table`); a ``ray``
strategy (``ray_ddp``) runs under the ``local`` command, as Ray starts the workers itself.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itwinai_lightning.errors import UserError
from itwinai_lightning.launch import sbatch, table
from itwinai_lightning.slurm.options import SlurmOptions

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


#: ``benchmark.slurm`` keys of its own; every other key is a ``slurm:`` key (same name, same type)
OWN_SLURM_KEYS = ("wait", "poll_s")
#: ``slurm:`` keys each grid point decides for itself
POINT_DECIDES = ("nodes", "command", "launcher", "submit", "test_only", "requeue", "job_name", "job_dir")
#: earlier ``benchmark.slurm`` names -> the ``slurm:`` key that says the same
RENAMED = {
    "tasks_per_node": "ntasks_per_node",
    "sbatch_options": "sbatch (a mapping, e.g. {qos: normal, exclusive: null})",
    "qos": "sbatch: {qos: ...}",
    "reservation": "sbatch: {reservation: ...}",
}


def slurm_options(section: Mapping[str, Any]) -> SlurmOptions:
    """The ``benchmark.slurm`` section as the ``slurm:`` options of a grid point's job (its preset merged,
    validated); each error names ``benchmark.slurm.<key>``. Without a venv, conda, container or python of
    its own, the job runs this interpreter."""
    for key in section:
        if key in RENAMED:
            raise UserError(f"benchmark.slurm.{key} is now {RENAMED[key]}, as in the slurm: section")
        if key in POINT_DECIDES:
            raise UserError(f"benchmark.slurm.{key}: each grid point sets it; drop it")
    own = {k: v for k, v in section.items() if k not in OWN_SLURM_KEYS}
    try:
        opts = SlurmOptions.from_section({**own, "requeue": False})
    except UserError as err:
        raise UserError(re.sub(r"(?<![\w.])slurm\.", "benchmark.slurm.", str(err))) from None
    if not (own.get("python") or opts.venv or opts.conda or (opts.container or {}).get("image")):
        opts.python = sys.executable
    return opts


def render_sbatch(point: GridPoint, run_dir: str, fit: Sequence[str], *, opts: SlurmOptions) -> str:
    """The point's sbatch script (the one renderer: directives, environment, then one ``srun`` of the fit
    and the runner's bookkeeping of its outcome). ``opts.nodes`` and ``opts.ntasks_per_node`` are the
    point's."""
    tasks = opts.ntasks_per_node or point.workers
    where = Path(run_dir)
    job = sbatch.JobLayout(
        run_dir=where,
        job_dir=where,
        config_path=where / "config.yaml",
        devices_per_node=tasks,
        tasks_per_node=tasks,
        cpus_per_task=sbatch.cpus_per_task(opts, tasks),
        gpus_per_node=opts.gpus_per_node,
    )
    err = f"{run_dir}/fit.stderr"
    body = [
        f"# --- the grid point {point.name}: one srun of the fit, then its record is marked done or failed",
        f'{sbatch.srun(opts, job, tasks)} "${{PY[@]}}" -m itwinai_lightning {shlex.join(fit)}'
        f" 2> >(tee {shlex.quote(err)} >&2)",
        "rc=$?",
        f'"${{PY[@]}}" -m itwinai_lightning.benchmark.finish {shlex.quote(run_dir)} "$rc" {shlex.quote(err)}',
        'exit "$rc"',
    ]
    head = sbatch.header("'itwinai-lightning benchmark'", f"the grid point {point.name}")
    return sbatch.script(opts, job, f"bench-{point.name}", head, body)
