"""An MPI run whose ranks are in a container (the hybrid model): the MPI inside must match the host's.

``mpirun`` (or ``srun --mpi=pmix``) on the host starts the ranks; each rank's MPI library, inside the
image, connects back to the host's launcher daemon. That works only when both are the same implementation
and the same major.minor version (Open MPI 4.1 with Open MPI 4.1; their wire protocol and PMIx differ
between releases). A mismatch otherwise ends in a hang or pages of MPI errors, so a rank started inside a
container under an MPI launcher compares the two first and stops with one line (exit 2) when they differ.

The host's MPI is named by :data:`HOST_ENV` (the first line of ``mpirun --version``): a SLURM job with a
container and an MPI strategy sets it in its batch shell; by hand: ``export ITWINAI_HOST_MPI="$(mpirun
--version | head -n 1)"``. Without it nothing is checked. The image's MPI is mpi4py's
``MPI.Get_library_version()`` (no MPI_Init needed).
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping

from itwinai_lightning.errors import UserError

HOST_ENV = "ITWINAI_HOST_MPI"
#: variables a process started by an MPI launcher has (Open MPI, PMIx, Hydra/PMI)
MPI_LAUNCH_ENV = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE")
#: variables a container runtime sets inside (podman/docker: ``container``; Apptainer, Singularity)
CONTAINER_ENV = ("container", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER")
_FAMILIES = (("Open MPI", r"open ?mpi"), ("MPICH", r"mpich|hydra"), ("Intel MPI", r"intel"))
_VERSION = re.compile(r"(\d+)\.(\d+)")


def parse(text: str) -> tuple[str, str] | None:
    """``("Open MPI", "4.1")`` from a version line (``mpirun (Open MPI) 4.1.4``, ``Open MPI v4.1.4, ...``,
    ``MPICH Version: 4.0``); None when it names no MPI this knows."""
    lowered = text.lower()
    family = next((name for name, pattern in _FAMILIES if re.search(pattern, lowered)), None)
    version = _VERSION.search(text)
    if family is None or version is None:
        return None
    return family, f"{version.group(1)}.{version.group(2)}"


def image_mpi() -> str | None:
    """The first line of the MPI library's version inside this Python's environment, or None."""
    if importlib.util.find_spec("mpi4py") is None:
        return None
    try:
        from mpi4py import MPI

        return str(MPI.Get_library_version()).strip().splitlines()[0]
    except Exception:  # no libmpi to load: nothing to compare
        return None


def check(env: Mapping[str, str] | None = None) -> None:
    """Raise :class:`UserError` when a containerised MPI rank's library does not match the host's."""
    env = os.environ if env is None else env
    host = env.get(HOST_ENV, "").strip()
    if not host or not any(env.get(k) for k in CONTAINER_ENV) or not any(env.get(k) for k in MPI_LAUNCH_ENV):
        return
    inside = image_mpi()
    ours, theirs = parse(inside or ""), parse(host)
    if ours is None or theirs is None or ours == theirs:
        return
    raise UserError(
        f"{HOST_ENV}: the host launches with {theirs[0]} {theirs[1]} but the container has {ours[0]} "
        f"{ours[1]}; an MPI run in a container needs the same MPI and major.minor version inside as on the "
        "host: build the image with the host's MPI (or bind the host's MPI into it), see docs/containers.md"
    )


__all__ = ["HOST_ENV", "check", "image_mpi", "parse"]
