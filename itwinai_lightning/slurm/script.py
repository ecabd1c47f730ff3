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
from itwinai_lightning.launch.failure_note import ERROR_SUFFIX, NOTE_ENV
from itwinai_lightning.launch.sbatch import REQUEUE_FLAG_ENV, REQUEUE_FLAG_NAME, JobLayout, env_path, q
from itwinai_lightning.slurm.options import SlurmOptions
from itwinai_lightning.slurm.recovery import RECOVERY_LOG_ENV, RECOVERY_LOG_NAME

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
    command = '-m itwinai_lightning fit --config "$CONFIG" "${RESUME[@]}"'
    launch = sbatch.launch_lines(opts, job, command, restarts=opts.max_restarts)
    if not (opts.requeue and opts.max_restarts > 0):
        lines += [*launch, "STATUS=$?"]
    else:
        lines += [
            f'export {NOTE_ENV}={env_path(job.run_dir)}"/{NOTE_NAME}"',
            f"export {RECOVERY_LOG_ENV}={env_path(job.run_dir / RECOVERY_LOG_NAME)}",
            f'rm -f "${NOTE_ENV}" "${NOTE_ENV}{ERROR_SUFFIX}"',
            *launch[:-1],
            f"{launch[-1]} &",
            *_watch_lines(),
        ]
    lines += [
        "",
        "# --- requeue: the run saved a checkpoint at a safe point and asked for it (preemption/time limit)",
        f'if [ -f "${REQUEUE_FLAG_ENV}" ]; then',
        '  echo "itwinai-lightning: checkpoint saved; requeueing job ${SLURM_JOB_ID}"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "  exit 0",
        "fi",
    ]
    if opts.requeue and opts.max_restarts > 0:
        lines += _recover_lines(opts)
    lines.append('exit "$STATUS"')
    return lines


#: The ranks' failure note of one start of the job (see :mod:`itwinai_lightning.launch.failure_note`).
NOTE_NAME = ".failure-$SLURM_JOB_ID-${SLURM_RESTART_COUNT:-0}.json"
#: Seconds srun may go on after a rank noted a failure: srun waits for a lost node's tasks until SLURM
#: declares the node down (SlurmdTimeout, often minutes); the surviving ranks have ended by then.
LAUNCH_GRACE_S = 15


def _watch_lines() -> list[str]:
    """Wait for the launch in the background; end a launch that outlives a rank's failure note."""
    return [
        "LAUNCH=$!",
        'NOTED=""',
        'while kill -0 "$LAUNCH" 2>/dev/null; do',
        f'  if [ -z "$NOTED" ] && [ -f "${NOTE_ENV}" ]; then NOTED=$SECONDS; fi',
        f'  if [ -n "$NOTED" ] && [ $((SECONDS - NOTED)) -ge {LAUNCH_GRACE_S} ]; then',
        f'    echo "itwinai-lightning: a rank noted a failure {LAUNCH_GRACE_S} s ago and srun still waits'
        ' (for a lost node); ending it" >&2',
        '    kill -KILL "$LAUNCH" 2>/dev/null',
        "  fi",
        "  sleep 1",
        "done",
        'wait "$LAUNCH"',
        "STATUS=$?",
    ]


def _recover_lines(opts: SlurmOptions) -> list[str]:
    """After a failed launch: probe every node, ask ``slurm recover``, requeue without the lost nodes."""
    return [
        "",
        "# --- recover: a failed launch is requeued without the nodes that no longer answer, up to",
        f"# slurm.max_restarts ({opts.max_restarts}) times; the rules: itwinai_lightning/slurm/recovery.py",
        'if [ "$STATUS" -ne 0 ]; then',
        '  ALLOCATED="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | tr "\\n" " ")"',
        '  HEALTHY="$(timeout -k 5 30 srun --overlap --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 '
        '--kill-on-bad-exit=0 printenv SLURMD_NODENAME 2>/dev/null | tr "\\n" " ")"',
        '  EXCLUDED="$(scontrol show job -o "$SLURM_JOB_ID" | grep -o "ExcNodeList=[^ ]*" | cut -d= -f2)"',
        '  case "$EXCLUDED" in ""|"(null)") EXCLUDED="" ;; *) EXCLUDED="$(scontrol show hostnames "$EXCLUDED"'
        ' | tr "\\n" " ")" ;; esac',
        '  PARTITION_NODES="$(sinfo -h -N ${SLURM_JOB_PARTITION:+-p "$SLURM_JOB_PARTITION"} -o "%N %t")"',
        '  PLAN="$("${PY[@]}" -m itwinai_lightning slurm recover "$RUN_DIR" --job "$SLURM_JOB_ID" '
        '--restart "${SLURM_RESTART_COUNT:-0}" --status "$STATUS" --nodes "$ALLOCATED" --healthy "$HEALTHY" '
        f'--excluded "$EXCLUDED" --partition "$PARTITION_NODES" --note "${NOTE_ENV}" '
        f'--max-restarts {opts.max_restarts})"',
        '  if [ "${PLAN%% *}" = requeue ]; then',
        '    EXCLUDE="${PLAN#requeue}"',
        '    EXCLUDE="${EXCLUDE# }"',
        "    trap '' TERM  # requeuehold ends the job's processes: this shell makes its last two calls first",
        '    if scontrol requeuehold "$SLURM_JOB_ID"; then',
        '      [ -z "$EXCLUDE" ] || scontrol update JobId="$SLURM_JOB_ID" ExcNodeList="$EXCLUDE"',
        '      scontrol release "$SLURM_JOB_ID"',
        "      exit 0",
        "    fi",
        "  fi",
        "fi",
    ]


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
