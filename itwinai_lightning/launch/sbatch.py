"""The one renderer of sbatch scripts: ``#SBATCH`` directives, the job's environment, and the launch step
(``srun`` of every rank, ``srun`` + torchrun per node, or a Ray cluster inside the allocation).

``itwinai-lightning slurm`` (fit, predict, tune) and ``benchmark --benchmark.submit`` compose their scripts
from these parts; both read the same ``slurm:`` keys (:class:`SbatchOptions`: what the renderer reads of
:class:`itwinai_lightning.slurm.options.SlurmOptions`). Everything is data: no site-specific shell functions.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from itwinai_lightning.launch import container, mpi_match
from itwinai_lightning.launch.shellwords import node_text

#: Environment variable through which a job script tells the run where to leave (fit) or look for (tune)
#: the request to be requeued.
REQUEUE_FLAG_ENV = "ITWINAI_REQUEUE_FLAG"
REQUEUE_FLAG_NAME = ".requeue"
#: The job's Ray token file (mode 600) in the job directory.
RAY_TOKEN_NAME = "ray-auth-token"


class SbatchOptions(Protocol):
    """The keys of a ``slurm:`` section the renderer reads (see ``SlurmOptions`` for their meaning)."""

    nodes: int
    cpus_per_task: int | None
    cpus_per_node: int | None
    time: str
    partition: str | None
    account: str | None
    requeue: bool | None
    signal: str
    signal_seconds: int
    sbatch: dict[str, Any]
    module_purge: bool
    modules: list[str]
    venv: str | None
    conda: str | None
    env: dict[str, Any]
    setup: list[str]
    container: dict[str, Any]
    gpus_per_node: int
    python: str
    mpi: str | None
    srun_args: list[str]
    launcher: str | None
    master_port: int
    ray_port: int


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


def split_into_nodes(workers: int, per_node: int | None) -> tuple[int, int]:
    """(nodes, tasks per node) for ``workers`` processes of at most ``per_node`` a node (all on one node when
    ``per_node`` is None); ValueError when they do not divide evenly."""
    per = min(workers, per_node) if per_node else workers
    if workers % per:
        raise ValueError(f"{workers} workers do not split evenly into nodes of {per} tasks")
    return workers // per, per


def cpus_per_task(opts: SbatchOptions, tasks_per_node: int) -> int:
    """``slurm.cpus_per_task``, else the node's cores shared by its tasks, else 1."""
    if opts.cpus_per_task:
        return opts.cpus_per_task
    return max(1, opts.cpus_per_node // tasks_per_node) if opts.cpus_per_node else 1


def q(value: object) -> str:
    """``value`` quoted for the job's shell."""
    return shlex.quote(str(value))


def env_path(path: Path) -> str:
    """A path for an exported variable: made absolute on the compute node (``$PWD`` is the submit
    directory there), since the processes that read it may run elsewhere."""
    return q(path) if path.is_absolute() else f'"$PWD"/{q(path)}'


def directives(opts: SbatchOptions, job: JobLayout, job_name: str) -> list[str]:
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
    if opts.requeue:  # to the job steps (the ranks); a tune driver runs in the batch shell (B:)
        batch = "B:" if opts.launcher == "ray" else ""
        d["signal"] = f"{batch}{opts.signal}@{opts.signal_seconds}"
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
        return '"$HOME"' + (f"/{q(rest)}" if rest else "")
    return q(path)


def _or_stop(command: str, what: str, fix: str) -> str:
    """``command``, and when it fails: one line naming it and the fix, and the job ends (exit 1)."""
    said = f"itwinai-lightning: {what} failed on $(hostname); {fix}".replace('"', '\\"')
    return f'{command} || {{ echo "{said}" >&2; exit 1; }}'


def environment(opts: SbatchOptions) -> list[str]:
    lines = ["# --- environment (preset + config); a step that fails ends the job with one line"]
    if opts.module_purge:
        lines.append("module purge")
    if opts.modules:
        names = " ".join(q(m) for m in opts.modules)
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
            _or_stop(f"conda activate {q(opts.conda)}", f"'conda activate {opts.conda}'", "check slurm.conda")
        )
    for key, value in (opts.env or {}).items():
        # values may use shell variables (${SLURM_JOB_ID}) and ~ (the compute node's home): double quotes
        lines.append(f'export {key}="{node_text(value)}"')
    lines.append('export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"')
    lines.extend(str(line) for line in opts.setup or [])
    return lines


def container_lines(opts: SbatchOptions, job: JobLayout) -> list[str]:
    """``CONTAINER=(...)`` (see :mod:`.container`) and ``PY``, the job's Python, inside it when there is one;
    after the move to the submit directory, which the container binds."""
    own = [env_path(job.run_dir), env_path(job.job_dir)]
    prefix = container.prefix_lines(opts.container or {}, opts.gpus_per_node > 0, own, list(opts.env or {}))
    mpi = []
    if (opts.container or {}).get("image") and (job.horovod or opts.mpi):
        mpi = [  # the ranks' MPI inside the image is checked against it (launch.mpi_match)
            f'export {mpi_match.HOST_ENV}="$(mpirun --version 2>/dev/null | head -n 1)"'
        ]
    return [
        "# --- the container every Python command of the job runs in (slurm.container)",
        *mpi,
        *prefix,
        f'PY=("${{CONTAINER[@]}}" {q(opts.python)})',
    ]


def srun(opts: SbatchOptions, job: JobLayout, tasks_per_node: int) -> str:
    parts = ["srun", f"--nodes={opts.nodes}", f"--ntasks-per-node={tasks_per_node}"]
    parts.append(f"--cpus-per-task={job.cpus_per_task}")
    if job.horovod and opts.mpi:
        parts.append(f"--mpi={opts.mpi}")
    parts += [str(a) for a in opts.srun_args or []]
    return " ".join(q(p) for p in parts)


def launch_lines(opts: SbatchOptions, job: JobLayout, command: str, restarts: int = 0) -> list[str]:
    """The launch step; under torchrun, ``restarts`` > 0 lets torchrun restart a failed worker group that
    many times inside the allocation (the restarted workers resume from the run's newest checkpoint)."""
    if opts.launcher == "torchrun":
        again = f"--max-restarts={restarts} " if restarts > 0 else ""
        return [
            'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
            f'{srun(opts, job, 1)} "${{PY[@]}}" -m torch.distributed.run --nnodes="$SLURM_JOB_NUM_NODES" '
            f"--nproc-per-node={job.devices_per_node} {again}--rdzv-backend=c10d "
            f'--rdzv-endpoint="$MASTER_ADDR:{opts.master_port}" --rdzv-id="$SLURM_JOB_ID" {command}',
        ]
    return [f'{srun(opts, job, job.tasks_per_node)} "${{PY[@]}}" {command}']


def ray_cluster_lines(opts: SbatchOptions, job: JobLayout) -> list[str]:
    gpus = job.gpus_per_node
    cpus = job.cpus_per_task
    port = opts.ray_port
    token = job.job_dir / RAY_TOKEN_NAME
    return [
        "# --- a Ray cluster inside the allocation: head on the first node, one worker per other node",
        f"CONFIG={q(job.config_path)}",
        "# token authentication: a fresh token per job, readable by this user only; every Ray process of the",
        "# job reads it from RAY_AUTH_TOKEN_PATH. Attach from a login node with the same two variables set.",
        "export RAY_AUTH_MODE=token",
        f"export RAY_AUTH_TOKEN_PATH={env_path(token)}",
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
        *_tune_driver_lines(opts, job),
        "# --- end this job's Ray and nothing else: its srun steps pass SIGTERM to 'ray start --block',",
        "# which stops that node's Ray processes ('ray stop' would stop every Ray of the user on the node)",
        "kill $(jobs -p) 2>/dev/null",
        "wait",
        *(_tune_requeue_lines() if opts.requeue else []),
        'exit "$STATUS"',
    ]


def _tune_driver_lines(opts: SbatchOptions, job: JobLayout) -> list[str]:
    """The tune driver; with requeue: in the background, the preemption signal forwarded to it (Ray Tune
    saves the sweep's state and ends on SIGUSR1), and a requeued job resumes the sweep."""
    command = '"${PY[@]}" -m itwinai_lightning tune --config "$CONFIG"'
    if not opts.requeue:
        return [command, "STATUS=$?"]
    flag = job.run_dir / REQUEUE_FLAG_NAME
    signal = opts.signal.upper().removeprefix("SIG")
    return [
        f"export {REQUEUE_FLAG_ENV}={env_path(flag)}",
        f'rm -f "${REQUEUE_FLAG_ENV}"',
        "RESUME=()",
        'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then RESUME=(--tune.resume true); fi',
        'echo "itwinai-lightning: job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0}'
        ' on ${SLURM_JOB_NODELIST}${RESUME:+; resuming the sweep}"',
        f'trap \'touch "${REQUEUE_FLAG_ENV}"; kill -USR1 "$DRIVER" 2>/dev/null\' {signal}',
        f'{command} "${{RESUME[@]}}" &',
        "DRIVER=$!",
        'wait "$DRIVER"',
        "STATUS=$?",
        "# a trapped signal ends a wait early: wait until the driver has ended",
        'while kill -0 "$DRIVER" 2>/dev/null; do wait "$DRIVER"; STATUS=$?; done',
    ]


def _tune_requeue_lines() -> list[str]:
    return [
        "# --- requeue: the sweep's state is saved; the requeued job resumes it",
        f'if [ -f "${REQUEUE_FLAG_ENV}" ]; then',
        '  echo "itwinai-lightning: sweep state saved; requeueing job ${SLURM_JOB_ID}"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "  exit 0",
        "fi",
    ]


def header(tool: str, runs: str) -> list[str]:
    """The script's first lines: the shebang, who generated it and what it runs."""
    return [
        "#!/bin/bash",
        f"# Generated by {tool}.",
        f"# Runs: {runs}",
        "# Relative paths are relative to the directory it was rendered in: submit it from there.",
    ]


#: Relative paths in the script and the job config are relative to the submit directory.
SUBMIT_DIR = [
    "# --- relative paths (below and in the job config) are relative to the submit directory",
    'cd "${SLURM_SUBMIT_DIR:-.}" || exit 1',
]


def script(
    opts: SbatchOptions, job: JobLayout, job_name: str, head: Sequence[str], body: Sequence[str]
) -> str:
    """A whole sbatch script: ``head``, directives, environment, the move to the submit dir, ``body``."""
    parts = [*head, *directives(opts, job, job_name), "", *environment(opts), "", *SUBMIT_DIR, ""]
    parts += [*container_lines(opts, job), "", *body]
    return "\n".join(parts) + "\n"


__all__ = [
    "JobLayout",
    "SbatchOptions",
    "container_lines",
    "cpus_per_task",
    "directives",
    "environment",
    "launch_lines",
    "ray_cluster_lines",
    "script",
    "split_into_nodes",
    "srun",
]  # fmt: skip
