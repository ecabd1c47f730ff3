"""Render the ``slurm`` subcommand's sbatch script from :class:`SlurmOptions` (preset + config) and the saved
run config, with the one sbatch renderer (:mod:`itwinai_lightning.launch.sbatch`).

The script has four parts, all from data (no site-specific shell functions):

1. ``#SBATCH`` directives: nodes, tasks and GPUs per node, CPUs per task, time, partition, account,
   output paths, the preemption signal (``--signal=USR1@N``, delivered to the job *steps*, i.e. to every
   training rank) and ``--requeue``, plus any extra directives of the preset/config;
2. environment set-up: ``module`` lines, a venv or conda environment, exported variables, extra lines;
3. resume: the newest checkpoint this job wrote (if any) becomes ``--ckpt_path``; an earlier run's
   checkpoints in the same run dir are never resumed from;
4. launch: ``srun`` (DDP, DeepSpeed, Horovod), ``srun`` + torchrun per node, or a Ray cluster for ``tune``;
   then, when the run left a requeue request, ``scontrol requeue $SLURM_JOB_ID`` from the batch shell.
"""

from __future__ import annotations

from itwinai_lightning.launch import sbatch
from itwinai_lightning.launch.sbatch import JobLayout, env_path, q
from itwinai_lightning.slurm.options import SlurmOptions

#: Environment variable through which the script tells the requeue callback where to leave its request.
REQUEUE_FLAG_ENV = "ITWINAI_REQUEUE_FLAG"
REQUEUE_FLAG_NAME = ".requeue"
#: Marker a job leaves in its run dir on its first start (``<prefix><job id>``): it resumes only from
#: checkpoints newer than it.
JOB_MARKER_PREFIX = ".job-"

__all__ = ["JobLayout", "render"]


def _launch_predict(opts: SlurmOptions, job: JobLayout) -> list[str]:
    lines = [
        f"CONFIG={q(job.config_path)}",
        "",
        f"# --- launch ({opts.launcher}): every rank predicts its share",
    ]
    command = '-m itwinai_lightning predict --config "$CONFIG"'
    return [*lines, *sbatch.launch_lines(opts, job, command), 'exit "$?"']


def _launch_fit(opts: SlurmOptions, job: JobLayout) -> list[str]:
    flag = job.run_dir / REQUEUE_FLAG_NAME
    lines = [
        "# --- resume: the newest checkpoint THIS job wrote (after its marker); none on the first start,",
        "# whatever an earlier run left in the run dir",
        f"RUN_DIR={q(job.run_dir)}",
        f"CONFIG={q(job.config_path)}",
        f"export {REQUEUE_FLAG_ENV}={env_path(flag)}",
        f'rm -f "${REQUEUE_FLAG_ENV}"',
        'mkdir -p "$RUN_DIR"',
        f'JOB_MARKER="$RUN_DIR/{JOB_MARKER_PREFIX}$SLURM_JOB_ID"',
        '[ -e "$JOB_MARKER" ] || touch "$JOB_MARKER"',
        'CKPT="$("${PY[@]}" -m itwinai_lightning slurm latest-checkpoint "$RUN_DIR" --since "$JOB_MARKER")"',
        "RESUME=()",
        'if [ -n "$CKPT" ]; then RESUME=(--ckpt_path "$CKPT"); fi',
        'echo "itwinai-lightning: job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0}'
        ' on ${SLURM_JOB_NODELIST}; resume from: ${CKPT:-<none>}"',
        "",
        f"# --- launch ({opts.launcher})",
    ]
    lines += sbatch.launch_lines(opts, job, '-m itwinai_lightning fit --config "$CONFIG" "${RESUME[@]}"')
    lines += [
        "STATUS=$?",
        "",
        "# --- requeue: the run saved a checkpoint at a safe point and asked for it (preemption/time limit)",
        f'if [ -f "${REQUEUE_FLAG_ENV}" ]; then',
        '  echo "itwinai-lightning: checkpoint saved; requeueing job ${SLURM_JOB_ID}"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "  exit 0",
        "fi",
        'exit "$STATUS"',
    ]
    return lines


def render(opts: SlurmOptions, job: JobLayout, job_name: str, source: str = "") -> str:
    """The sbatch script text."""
    head = sbatch.header(
        f"'itwinai-lightning slurm' (preset: {opts.preset})" + (f" from {source}" if source else ""),
        f"{opts.command} --config {job.config_path}",
    )
    if opts.launcher == "ray":
        body = sbatch.ray_cluster_lines(opts, job)
    else:
        body = _launch_predict(opts, job) if opts.command == "predict" else _launch_fit(opts, job)
    return sbatch.script(opts, job, job_name, head, body)
