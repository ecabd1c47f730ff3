"""The container every Python command of a SLURM job runs in (``slurm.container``): the words that go in
front of ``python`` in the job script.

=====================  ==========================================================================
runtime                the prefix rendered
=====================  ==========================================================================
``apptainer``          ``apptainer exec [gpu_flag] --bind <dir> ... [args] IMAGE`` (a ``.sif`` file or
``singularity``        ``docker://...``); the host environment passes through (Apptainer's default)
``podman``             ``podman run --rm --network host --ipc host --pid host --user/--userns ...
                       --env <launcher variables> -v <dir>:<dir> ... -w <submit dir> [gpu_flag] [args]
                       IMAGE``
=====================  ==========================================================================

What every runtime gets: the submit directory (the job's working directory: configs, relative run
directories) and the job's run and job directories bound at the same path, so checkpoints, records and
logs land on the host's file system where the next job (and the batch shell's requeue) finds them. The
job's requeue, recovery and ``scontrol`` calls stay in the batch shell, outside the container.

podman shares the host's network (rendezvous, NCCL/gloo sockets), IPC (shared memory of DataLoader
workers and MPI) and PID namespace (signals reach the rank itself, py-spy can attach), runs as the
submitting user (``--user uid:gid`` as root, ``--userns=keep-id`` rootless) so files on bound paths are the
user's, and passes the launcher's environment through by name (:data:`PASS_ENV`; podman expands a
trailing ``*``) plus the keys of ``slurm.env``. ``HOME`` is ``/tmp`` inside (the image's user's home is
not the submitting user's); the host's ``/tmp`` is bound, as Apptainer does, where an MPI launched on the
host keeps its session files (the hybrid model, docs/containers.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from itwinai_lightning.errors import UserError
from itwinai_lightning.launch.shellwords import node_word

RUNTIMES = ("apptainer", "singularity", "podman")
#: What a runtime is called when ``slurm.container.runtime`` is not set.
DEFAULT_RUNTIME = "apptainer"
#: The container keys ``slurm.container`` takes.
KEYS = ("image", "runtime", "gpu_flag", "binds", "args")

#: Variables a podman container gets from the job step (srun/torchrun/mpirun and this package set them).
PASS_ENV = (
    "SLURM_*",
    "SLURMD_NODENAME",
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "TORCHELASTIC_*",
    "OMPI_*",
    "PMIX_*",
    "PMI_*",
    "HOROVOD_*",
    "ITWINAI_*",
    "OMP_NUM_THREADS",
    "NCCL_*",
    "GLOO_*",
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "MLFLOW_*",
    "WANDB_*",
    "RAY_*",
    "PYTHONUNBUFFERED",
)


def check(container: Mapping[str, Any]) -> None:
    """One line (:class:`UserError`) for a ``slurm.container`` mapping the renderer cannot use."""
    unknown = sorted(set(container) - set(KEYS))
    if unknown:
        raise UserError(f"slurm.container.{unknown[0]}: unknown key; the keys are {', '.join(KEYS)}")
    runtime = container.get("runtime") or DEFAULT_RUNTIME
    if runtime not in RUNTIMES:
        raise UserError(
            f"slurm.container.runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r} "
            "(docker: use podman, which takes the same images)"
        )
    for key in ("binds", "args"):
        value = container.get(key)
        if value is not None and not isinstance(value, list):
            raise UserError(f"slurm.container.{key} must be a list, got {value!r}")


def prefix_lines(
    container: Mapping[str, Any], gpus: bool, own_dirs: Iterable[str], env_keys: Iterable[str]
) -> list[str]:
    """Shell lines that define ``CONTAINER=(...)``, the words in front of every Python command.

    ``own_dirs``: the job's directories, already shell words (``"$PWD"/runs/x`` or a quoted absolute
    path), bound at the same path and made first (a bind source must exist). ``env_keys``: ``slurm.env``'s
    variables, passed into a podman container by name."""
    if not container.get("image"):
        return ["CONTAINER=()"]
    runtime = str(container.get("runtime") or DEFAULT_RUNTIME)
    dirs: list[str] = []
    for directory in dict.fromkeys(['"$PWD"', *own_dirs]):
        if not any(directory.startswith(f"{d}/") for d in dirs):  # below a bound one: bound with it
            dirs.append(directory)
    lines = [f"mkdir -p {' '.join(dirs)}"]
    gpu = [node_word(container["gpu_flag"])] if container.get("gpu_flag") and gpus else []
    binds = [node_word(b) for b in container.get("binds") or []]
    args = [node_word(a) for a in container.get("args") or []]
    image = node_word(container["image"])
    if runtime == "podman":
        lines += [
            "# podman: as the submitting user (root: --user; rootless: the user's own id via keep-id)",
            'CONTAINER_USER=(--user "$(id -u):$(id -g)")',
            '[ "$(id -u)" = 0 ] || CONTAINER_USER=(--userns=keep-id)',
        ]
        words = ["podman", "run", "--rm", "--network", "host", "--ipc", "host", "--pid", "host"]
        words += ['"${CONTAINER_USER[@]}"', "--env", "HOME=/tmp"]
        for name in [*PASS_ENV, *env_keys]:
            words += ["--env", node_word(name)]
        for directory in [*dirs, "/tmp"]:  # /tmp as Apptainer binds it: MPI's session directory is there
            words += ["-v", f"{directory}:{directory}"]
        for bind in binds:
            words += ["-v", bind if ":" in bind else f"{bind}:{bind}"]
        words += ["-w", '"$PWD"', *gpu, *args, image]
    else:
        words = [runtime, "exec", *gpu]
        for directory in [*dirs, *binds]:
            words += ["--bind", directory]
        words += [*args, image]
    return [*lines, "CONTAINER=(" + " ".join(words) + ")"]


__all__ = ["DEFAULT_RUNTIME", "KEYS", "PASS_ENV", "RUNTIMES", "check", "prefix_lines"]
