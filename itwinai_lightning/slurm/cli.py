"""``itwinai-lightning slurm``: render (and submit) an sbatch script for a config.

::

    python -m itwinai_lightning slurm --config run.yaml --slurm.preset juwels --slurm.nodes 2 \
        [--slurm.submit true]
    python -m itwinai_lightning slurm latest-checkpoint RUN_DIR --since MARKER  # the job script's resume
    python -m itwinai_lightning slurm recover RUN_DIR --job ID ...  # the job script's recovery decision

Writes ``<job_dir>/config.yaml`` (the fully resolved LightningCLI config the job runs) and
``<job_dir>/job.sbatch``; prints the script path, and with ``slurm.submit`` the job id.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from itwinai_lightning.errors import UserError
from itwinai_lightning.sections import config_paths, split_section

if TYPE_CHECKING:
    from itwinai_lightning.slurm.options import SlurmOptions

USAGE = (
    "Render an sbatch script that runs 'fit' (or 'tune', 'predict': --slurm.command) on the resolved config, "
    "preemption-safe (checkpoint, requeue, resume); --slurm.submit true submits it. "
    "'itwinai-lightning slurm latest-checkpoint RUN_DIR --since MARKER' prints the checkpoint a resumed job "
    "starts from (written after MARKER, by this job)."
)


def _latest_checkpoint(argv: list[str]) -> int:
    from itwinai_lightning.runs.newest import latest_checkpoint

    usage = "usage: itwinai-lightning slurm latest-checkpoint RUN_DIR [--since MARKER]"
    if len(argv) not in (1, 3) or (len(argv) == 3 and argv[1] != "--since"):
        raise UserError(usage)
    since = None
    if len(argv) == 3:
        marker = Path(argv[2])
        if not marker.exists():
            return 0  # nothing this job wrote yet
        since = marker.stat().st_mtime
    found = latest_checkpoint(argv[0], since)
    if found is not None:
        print(found)
    return 0


def _sbatch(script: Path, test_only: bool, env: dict[str, str] | None = None) -> str:
    exe = shutil.which("sbatch")
    if exe is None:
        raise UserError(
            "slurm.submit: 'sbatch' is not on PATH (not a SLURM login node?); the script is written, "
            f"submit it where SLURM is available: sbatch {script}"
        )
    args = [exe, *(["--test-only"] if test_only else ["--parsable"]), str(script)]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        last = message[-1] if message else f"exit {proc.returncode}"
        raise UserError(f"sbatch rejected {script}: {last}")
    if test_only:
        return (proc.stderr or proc.stdout).strip()
    match = re.match(r"\s*(\d+)", proc.stdout)
    if not match:
        raise UserError(f"sbatch printed no job id: {proc.stdout.strip()!r}")
    return match.group(1)


def check_partition(nodes: int, partition: str | None, env: dict[str, str] | None = None) -> None:
    """Refuse, before sbatch, a job that asks for more nodes than its partition has (when sinfo can tell)."""
    exe = shutil.which("sinfo")
    if exe is None:
        return
    args = [exe, "-h", "-o", "%P %D"] + (["-p", partition] if partition else [])
    proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False, timeout=30)
    if proc.returncode != 0:
        return
    sizes: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        name, _, count = line.partition(" ")
        if count.strip().isdigit():
            sizes[name] = sizes.get(name, 0) + int(count)
    wanted = partition or next((n for n in sizes if n.endswith("*")), None)
    if wanted is None:
        return
    size = sizes.get(wanted) or sizes.get(wanted + "*")
    if size is not None and nodes > size:
        raise UserError(
            f"slurm.nodes={nodes} but partition {wanted.rstrip('*')!r} has {size} node(s); "
            f"lower --slurm.nodes (and trainer.num_nodes) or choose another --slurm.partition"
        )


def check_site(opts: SlurmOptions, accelerator: str) -> list[str]:
    """A job that would waste an allocation: a UserError for what cannot work (a CPU run on a GPU
    partition; no account where the site requires one, when submitting), warnings for what probably
    will not (no account yet; nothing in the job provides itwinai-lightning)."""
    site = f"preset {opts.preset!r}" + (f" ({opts.description})" if opts.description else "")
    if opts.gpus_per_node > 0 and accelerator == "cpu":
        raise UserError(
            f"slurm: {site} books GPU nodes ({opts.gpus_per_node} GPUs each) but trainer.accelerator is "
            "'cpu'; set --trainer.accelerator gpu (and --trainer.devices), or --slurm.preset generic "
            "for CPU nodes"
        )
    warnings = []
    if opts.account_required and not opts.account:
        if opts.submit or opts.test_only:
            raise UserError(f"slurm.account is required by {site}: pass --slurm.account <your project>")
        warnings.append(f"{site} needs --slurm.account <your project> before the job can be submitted")
    if opts.python == "python" and not (opts.venv or opts.conda or (opts.container or {}).get("image")):
        warnings.append(
            "nothing in the job provides itwinai-lightning (it runs 'python' as found on the compute node); "
            "set --slurm.venv, --slurm.conda, --slurm.container.image or --slurm.python /path/to/python"
        )
    return warnings


def _check_sweep_is_free(tune_section: dict[str, object], run_dir: Path) -> None:
    """Before a tune job is written or queued: its sweep directory must not hold a sweep it would refuse
    (the job would queue, start, and only then fail)."""
    from itwinai_lightning.tune.cli import refuse_to_overwrite
    from itwinai_lightning.tune.settings import DEFAULTS, parse_settings

    refuse_to_overwrite(parse_settings({**DEFAULTS, **tune_section}, str(run_dir)))


def _take_resume(config: dict[str, object]) -> Path | None:
    """``--resume DIR`` for a job: the rule of ``fit --resume`` applied now, before anything is written or
    submitted (a different training: one line, exit 2). The job then runs in ``DIR`` (its run directory)
    from ``DIR``'s newest complete checkpoint, and its requeues from the checkpoints it writes there."""
    from itwinai_lightning.runs.resume import resume_point
    from itwinai_lightning.slurm.config import portable

    resume = config.pop("resume", None)
    if not resume:
        return None
    if config.get("ckpt_path") or config.get("run_dir"):
        raise UserError(
            "--resume names the run and its checkpoint: give it without --ckpt_path and --run_dir"
        )
    directory = portable(Path(str(resume)).expanduser().resolve())
    checkpoint, note = resume_point(directory, config)
    print(f"itwinai-lightning: {note}", file=sys.stderr)
    config["run_dir"] = str(directory)
    config["ckpt_path"] = str(checkpoint) if checkpoint is not None else None
    return directory


def build(argv: list[str]) -> tuple[Path, Path, dict[str, object]]:
    """Render the job files; return ``(script_path, config_path, options_as_dict)``."""
    from dataclasses import asdict

    from itwinai_lightning.launch.sbatch import JobLayout, cpus_per_task
    from itwinai_lightning.slurm import config as jobcfg
    from itwinai_lightning.slurm.options import SlurmOptions
    from itwinai_lightning.slurm.script import render

    section, rest = split_section(argv, "slurm")
    opts = SlurmOptions.from_section(section)
    tune_section: dict[str, object] = {}
    if opts.command == "tune":
        tune_section, rest = split_section(rest, "tune")
    config = jobcfg.resolve_lightning_config(rest, "predict" if opts.command == "predict" else "fit")
    continued = _take_resume(config) if opts.command == "fit" else None
    jobcfg.check_nodes(config, opts.nodes, opts.command)
    if opts.submit or opts.test_only:  # before anything is written or submitted
        check_partition(opts.nodes, opts.partition)
    devices = jobcfg.devices_per_node(config, opts.gpus_per_node)
    accelerator = str((config.get("trainer") or {}).get("accelerator") or "auto")
    for warning in check_site(opts, accelerator):
        print(f"itwinai-lightning: warning: {warning}", file=sys.stderr)
    if opts.gpus_per_node > 0 and accelerator in jobcfg.GPU_ACCELERATORS and devices > opts.gpus_per_node:
        raise UserError(
            f"trainer.devices={devices} but preset {opts.preset!r} has {opts.gpus_per_node} GPUs per node; "
            f"use --trainer.devices {opts.gpus_per_node} (or fewer) and more --slurm.nodes"
        )
    if opts.launcher == "srun":
        tasks = opts.ntasks_per_node or devices
        if tasks > devices:
            raise UserError(
                f"slurm.ntasks_per_node={tasks} is more tasks per node than devices per node "
                f"(trainer.devices={devices}); one task drives one device: set slurm.ntasks_per_node "
                f"to {devices} or raise trainer.devices"
            )
        if tasks < devices:
            raise UserError(
                f"slurm.ntasks_per_node={tasks} is fewer than trainer.devices={devices}: with srun every "
                "device needs its own task; drop slurm.ntasks_per_node or lower trainer.devices"
            )
    else:
        if opts.ntasks_per_node not in (None, 1):
            raise UserError(
                f"slurm.ntasks_per_node={opts.ntasks_per_node} with slurm.launcher {opts.launcher}: it "
                "starts one task per node that starts the ranks itself; drop slurm.ntasks_per_node"
            )
        tasks = 1
    uses_gpus = opts.gpus_per_node > 0 and accelerator in jobcfg.GPU_ACCELERATORS
    gpus = (opts.gpus_per_node if opts.launcher == "ray" else devices) if uses_gpus else 0
    cpus = cpus_per_task(opts, tasks)
    job_name = opts.job_name or f"itwinai-{opts.command}"
    run_dir = continued if continued is not None else jobcfg.run_dir_of(config, job_name)
    job_dir = jobcfg.portable(Path(opts.job_dir).expanduser()) if opts.job_dir else run_dir / "slurm"
    config = jobcfg.adapt_for_job(
        config,
        num_nodes=1
        if opts.command == "tune"
        else opts.nodes,  # a trial's layout is tune's (workers_per_trial)
        devices=devices,
        run_dir=run_dir,
        requeue=bool(opts.requeue) and opts.command == "fit",  # a sweep is stopped by its driver (Ray Tune)
        signal_name=opts.signal,
        check_every_n_steps=opts.check_every_n_steps,
        time_limit_margin_s=opts.time_limit_margin_s,
        checkpoint_every_min=opts.checkpoint_every_min if opts.command == "fit" else 0.0,
    )
    if opts.command == "tune":  # trials start fresh: 'tune' accepts none of fit's own arguments
        config = jobcfg.without_fit_arguments(config)
        _check_sweep_is_free(tune_section, run_dir)
    if opts.command == "predict":
        config, added = jobcfg.for_predict(config, run_dir)
        if added:
            where = run_dir / "version_N" / "predictions"
            print(
                f"itwinai-lightning: predictions go to {where}, the job's run directory "
                "(ShardedPredictionWriter added)"
            )
    config_path = jobcfg.save_config(
        config, job_dir / "config.yaml", extra={"tune": tune_section} if opts.command == "tune" else None
    )
    if opts.command in ("fit", "predict"):  # what the job will parse must parse here too
        jobcfg.resolve_lightning_config(["--config", str(config_path)], opts.command)
    layout = JobLayout(
        run_dir=run_dir,
        job_dir=job_dir,
        config_path=config_path,
        devices_per_node=devices,
        tasks_per_node=tasks,
        cpus_per_task=cpus,
        gpus_per_node=gpus,
        horovod=jobcfg.uses_horovod(config),
    )
    sources = config_paths(argv)
    script = job_dir / "job.sbatch"
    script.write_text(render(opts, layout, job_name, source=", ".join(sources)))
    script.chmod(0o755)
    return script, config_path, asdict(opts)


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        from itwinai_lightning.settings_help import help_text
        from itwinai_lightning.slurm.options import SlurmOptions

        print(help_text("itwinai-lightning slurm", USAGE, SlurmOptions, "slurm"))
        return 0
    if argv and argv[0] == "latest-checkpoint":
        return _latest_checkpoint(argv[1:])
    if argv and argv[0] == "recover":
        from itwinai_lightning.slurm import recovery

        return recovery.main(argv[1:])
    if not argv:
        raise UserError(
            "slurm needs a config: itwinai-lightning slurm --config run.yaml [--slurm.preset NAME]"
        )
    script, config_path, opts = build(argv)
    print(f"sbatch script: {script}")
    print(f"job config:    {config_path}")
    if opts.get("test_only"):
        print(_sbatch(script, test_only=True))
    if opts.get("submit"):
        job_id = _sbatch(script, test_only=False)
        print(f"submitted job {job_id}")
    return 0
