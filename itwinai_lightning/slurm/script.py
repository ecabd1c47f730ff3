"""Render an sbatch script from :class:`SlurmOptions` (preset + config) and the saved run config.

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

import shlex
from dataclasses import dataclass
from pathlib import Path

from itwinai_lightning.slurm.options import SlurmOptions

#: Environment variable through which the script tells the requeue callback where to leave its request.
REQUEUE_FLAG_ENV = "ITWINAI_REQUEUE_FLAG"
REQUEUE_FLAG_NAME = ".requeue"
#: Marker a job leaves in its run dir on its first start (``<prefix><job id>``): it resumes only from
#: checkpoints newer than it.
JOB_MARKER_PREFIX = ".job-"
#: The job's Ray token file (mode 600) in the job directory.
RAY_TOKEN_NAME = "ray-auth-token"


@dataclass(frozen=True)
class JobLayout:
    """Where the job's files live and how many ranks it runs."""

    run_dir: Path
    job_dir: Path
    config_path: Path
    devices_per_node: int
    tasks_per_node: int
    cpus_per_task: int
    gpus_per_node: int
    horovod: bool = False


def _q(value: object) -> str:
    return shlex.quote(str(value))


def _env_path(path: Path) -> str:
    """A path for an exported variable: made absolute on the compute node (``$PWD`` is the submit
    directory there), since the processes that read it may run elsewhere."""
    return _q(path) if path.is_absolute() else f'"$PWD"/{_q(path)}'


def _directives(opts: SlurmOptions, job: JobLayout, job_name: str) -> list[str]:
    d: dict[str, object | None] = {
        "job-name": job_name,
        "nodes": opts.nodes,
        "ntasks-per-node": job.tasks_per_node,
        "cpus-per-task": job.cpus_per_task,
    }
    if job.gpus_per_node > 0:
        d["gpus-per-node"] = job.gpus_per_node
    d["time"] = opts.time
    if opts.partition:
        d["partition"] = opts.partition
    if opts.account:
        d["account"] = opts.account
    d["output"] = job.job_dir / "%x-%j.out"
    d["error"] = job.job_dir / "%x-%j.err"
    d["open-mode"] = "append"  # a requeued job appends to the same files
    if opts.requeue:
        d["signal"] = f"{opts.signal}@{opts.signal_seconds}"
        d["requeue"] = None
    for key, value in (opts.sbatch or {}).items():
        d[str(key).lstrip("-").replace("_", "-")] = value
    lines = []
    for key, value in d.items():
        lines.append(f"#SBATCH --{key}" if value is None else f"#SBATCH --{key}={value}")
    return lines


def _home(path: str) -> str:
    """A path for the compute node's shell: ``~`` becomes ``$HOME`` there (not the render machine's home);
    the rest is quoted."""
    if path == "~" or path.startswith("~/"):
        rest = path[2:]
        return '"$HOME"' + (f"/{_q(rest)}" if rest else "")
    return _q(path)


def _or_stop(command: str, what: str, fix: str) -> str:
    """``command``, and when it fails: one line naming it and the fix, and the job ends (exit 1)."""
    said = f"itwinai-lightning: {what} failed on $(hostname); {fix}".replace('"', '\\"')
    return f'{command} || {{ echo "{said}" >&2; exit 1; }}'


def _environment(opts: SlurmOptions) -> list[str]:
    lines = ["# --- environment (preset + config); a step that fails ends the job with one line"]
    if opts.module_purge:
        lines.append("module purge")
    if opts.modules:
        names = " ".join(_q(m) for m in opts.modules)
        lines.append(_or_stop(f"module load {names}", f"'module load {names}'", "check slurm.modules"))
    if opts.venv:
        venv = str(opts.venv).rstrip("/")
        lines.append(
            _or_stop(f"source {_home(venv + '/bin/activate')}", f"activating {venv}", "check slurm.venv")
        )
    if opts.conda:
        lines.append(
            _or_stop(
                "command -v conda >/dev/null",
                "finding conda",
                "load it first (slurm.modules, e.g. Miniconda3, or a slurm.setup line)",
            )
        )
        lines.append('eval "$(conda shell.bash hook)"')
        lines.append(
            _or_stop(
                f"conda activate {_q(opts.conda)}", f"'conda activate {opts.conda}'", "check slurm.conda"
            )
        )
    for key, value in (opts.env or {}).items():
        # values may use shell variables (${SLURM_JOB_ID}): double quotes keep them expanding
        text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")
        if text == "~" or text.startswith("~/"):  # the compute node's home, not the render machine's
            text = "$HOME" + text[1:]
        lines.append(f'export {key}="{text}"')
    lines.append('export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"')
    lines.extend(str(line) for line in opts.setup or [])
    container = opts.container or {}
    if container.get("image"):
        parts = [str(container.get("runtime") or "apptainer"), "exec"]
        if container.get("gpu_flag") and opts.gpus_per_node > 0:
            parts.append(str(container["gpu_flag"]))
        for bind in container.get("binds") or []:
            parts += ["--bind", str(bind)]
        parts += [str(a) for a in container.get("args") or []]
        parts.append(str(container["image"]))
        lines.append("CONTAINER=(" + " ".join(_q(p) for p in parts) + ")")
    else:
        lines.append("CONTAINER=()")
    lines.append(f'PY=("${{CONTAINER[@]}}" {_q(opts.python)})')
    return lines


def _srun(opts: SlurmOptions, job: JobLayout, tasks_per_node: int) -> str:
    parts = ["srun", f"--nodes={opts.nodes}", f"--ntasks-per-node={tasks_per_node}"]
    parts.append(f"--cpus-per-task={job.cpus_per_task}")
    if job.horovod and opts.mpi:
        parts.append(f"--mpi={opts.mpi}")
    parts += [str(a) for a in opts.srun_args or []]
    return " ".join(_q(p) for p in parts)


def _launch_predict(opts: SlurmOptions, job: JobLayout) -> list[str]:
    lines = [
        f"CONFIG={_q(job.config_path)}",
        "",
        f"# --- launch ({opts.launcher}): every rank predicts its share",
    ]
    return [*lines, *_launch_lines(opts, job, '-m itwinai_lightning predict --config "$CONFIG"'), 'exit "$?"']


def _launch_lines(opts: SlurmOptions, job: JobLayout, command: str) -> list[str]:
    if opts.launcher == "torchrun":
        return [
            'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
            f'{_srun(opts, job, 1)} "${{PY[@]}}" -m torch.distributed.run --nnodes="$SLURM_JOB_NUM_NODES" '
            f"--nproc-per-node={job.devices_per_node} --rdzv-backend=c10d "
            f'--rdzv-endpoint="$MASTER_ADDR:{opts.master_port}" --rdzv-id="$SLURM_JOB_ID" {command}',
        ]
    return [f'{_srun(opts, job, job.tasks_per_node)} "${{PY[@]}}" {command}']


def _launch_fit(opts: SlurmOptions, job: JobLayout) -> list[str]:
    flag = job.run_dir / REQUEUE_FLAG_NAME
    lines = [
        "# --- resume: the newest checkpoint THIS job wrote (after its marker); none on the first start,",
        "# whatever an earlier run left in the run dir",
        f"RUN_DIR={_q(job.run_dir)}",
        f"CONFIG={_q(job.config_path)}",
        f"export {REQUEUE_FLAG_ENV}={_env_path(flag)}",
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
    lines += _launch_lines(opts, job, '-m itwinai_lightning fit --config "$CONFIG" "${RESUME[@]}"')
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


def _launch_ray(opts: SlurmOptions, job: JobLayout) -> list[str]:
    gpus = job.gpus_per_node
    cpus = job.cpus_per_task
    port = opts.ray_port
    token = job.job_dir / RAY_TOKEN_NAME
    return [
        "# --- a Ray cluster inside the allocation: head on the first node, one worker per other node",
        f"CONFIG={_q(job.config_path)}",
        "# token authentication: a fresh token per job, readable by this user only; every Ray process of the",
        "# job reads it from RAY_AUTH_TOKEN_PATH. Attach from a login node with the same two variables set.",
        "export RAY_AUTH_MODE=token",
        f"export RAY_AUTH_TOKEN_PATH={_env_path(token)}",
        '(umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d " \\n" > "$RAY_AUTH_TOKEN_PATH")',
        'if [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then echo "itwinai-lightning: no Ray token" >&2; exit 1; fi',
        'mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        'HEAD="${NODES[0]}"',
        'HEAD_IP="$(srun --nodes=1 --ntasks=1 -w "$HEAD" hostname --ip-address | awk \'{print $1}\')"',
        f'export RAY_ADDRESS="$HEAD_IP:{port}"',
        f'srun --nodes=1 --ntasks=1 -w "$HEAD" "${{CONTAINER[@]}}" ray start --head '
        f'--node-ip-address="$HEAD_IP" --port={port} --num-cpus={cpus} --num-gpus={gpus} --block &',
        'for _ in $(seq 60); do "${CONTAINER[@]}" ray status --address "$RAY_ADDRESS" >/dev/null 2>&1'
        " && break; sleep 2; done",
        'for NODE in "${NODES[@]:1}"; do',
        f'  srun --nodes=1 --ntasks=1 -w "$NODE" "${{CONTAINER[@]}}" ray start --address "$RAY_ADDRESS" '
        f"--num-cpus={cpus} --num-gpus={gpus} --block &",
        "done",
        "sleep 5",
        "",
        "# --- launch (ray): the tune driver runs on the head node and uses the whole allocation",
        '"${PY[@]}" -m itwinai_lightning tune --config "$CONFIG"',
        "STATUS=$?",
        '"${CONTAINER[@]}" ray stop --force >/dev/null 2>&1 || true',
        'exit "$STATUS"',
    ]


def render(opts: SlurmOptions, job: JobLayout, job_name: str, source: str = "") -> str:
    """The sbatch script text."""
    header = [
        "#!/bin/bash",
        f"# Generated by 'itwinai-lightning slurm' (preset: {opts.preset})"
        + (f" from {source}." if source else "."),
        f"# Runs: {opts.command} --config {job.config_path}",
        "# Relative paths are relative to the directory it was rendered in: submit it from there.",
    ]
    if opts.launcher == "ray":
        body = _launch_ray(opts, job)
    else:
        body = _launch_predict(opts, job) if opts.command == "predict" else _launch_fit(opts, job)
    here = [
        "# --- relative paths (below and in the job config) are relative to the submit directory",
        'cd "${SLURM_SUBMIT_DIR:-.}" || exit 1',
    ]
    parts = [*header, *_directives(opts, job, job_name), "", *_environment(opts), "", *here, "", *body]
    return "\n".join(parts) + "\n"
