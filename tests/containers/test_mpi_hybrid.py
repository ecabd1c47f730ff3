"""MPI ranks in containers started by the host's mpirun (the hybrid model): they run when the image's Open
MPI is the host's, and a mismatch is one line (exit 2) before anything else."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from itwinai_lightning.errors import UserError
from itwinai_lightning.launch import container, mpi_match
from tests.helpers import image as images
from tests.helpers.engines import require_executable

REPO = Path(__file__).resolve().parents[2]
ALLREDUCE = (
    "from mpi4py import MPI; c = MPI.COMM_WORLD; "
    "open(f'rank-{c.rank}.txt', 'w').write(' '.join(map(str, [c.rank, c.size, c.allreduce(c.rank + 1)])) "
    "+ '\\n' + MPI.Get_library_version().split(',')[0])"
)


def _host_mpi() -> str:
    require_executable("mpirun", "apt-get install openmpi-bin")
    return subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def _mpirun_in_the_container(tmp_path: Path, image: images.Image, argv: str, env: dict[str, str]) -> str:
    """A script: the job's rendered CONTAINER lines, then ``mpirun -np 2 "${CONTAINER[@]}" argv``."""
    prefix = container.prefix_lines({"image": image.tag, "runtime": "podman"}, False, [], [])
    script = tmp_path / "mpi.sh"
    script.write_text("\n".join([f"cd {tmp_path}", *prefix, f'exec mpirun -np 2 "${{CONTAINER[@]}}" {argv}']))
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return str(script)


@pytest.mark.container
@pytest.mark.mpi
def test_mpirun_on_the_host_runs_ranks_in_the_image_with_the_same_open_mpi(
    tmp_path: Path, image: images.Image
) -> None:
    host = _host_mpi()
    env = images.podman_env()
    script = _mpirun_in_the_container(tmp_path, image, f'python -c "{ALLREDUCE}"', env)
    proc = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each rank's file on the bound working directory (podman interleaves the ranks' stdout)
    ranks = [(tmp_path / f"rank-{r}.txt").read_text().splitlines() for r in (0, 1)]
    assert [lines[0] for lines in ranks] == ["0 2 3", "1 2 3"]  # 1 + 2, summed over MPI
    assert {mpi_match.parse(lines[1]) for lines in ranks} == {mpi_match.parse(host)}  # the host's, x.y


@pytest.mark.container
@pytest.mark.mpi
def test_a_host_mpi_the_image_does_not_match_is_one_line_and_exit_2(
    tmp_path: Path, image: images.Image
) -> None:
    env = images.podman_env()
    env[mpi_match.HOST_ENV] = "mpirun (Open MPI) 5.0.3"  # as a host with Open MPI 5 would say
    argv = f"itwinai-lightning fit --config {REPO / 'configs' / 'quickstart.yaml'}"
    script = _mpirun_in_the_container(tmp_path, image, argv, env)
    proc = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("itwinai-lightning: error:")]
    assert ours == [
        "itwinai-lightning: error: ITWINAI_HOST_MPI: the host launches with Open MPI 5.0 but the container "
        "has Open MPI 4.1; an MPI run in a container needs the same MPI and major.minor version inside as on "
        "the host: build the image with the host's MPI (or bind the host's MPI into it), see "
        "docs/containers.md"
    ]  # once (one node), from local rank 0
    assert "Traceback" not in proc.stderr and not list(tmp_path.rglob("run_record.json"))


def test_the_check_compares_only_a_containerised_mpi_rank() -> None:
    """With this machine's mpi4py (Open MPI 4.1): which environments are checked and which pass."""
    pytest.importorskip("mpi4py")
    inside = mpi_match.parse(mpi_match.image_mpi() or "")
    assert inside is not None
    rank = {"container": "podman", "OMPI_COMM_WORLD_SIZE": "2"}
    other = "mpirun (Open MPI) 5.0.3" if inside != ("Open MPI", "5.0") else "mpirun (Open MPI) 4.1.6"
    with pytest.raises(UserError, match=r"^ITWINAI_HOST_MPI: the host launches with Open MPI"):
        mpi_match.check({**rank, mpi_match.HOST_ENV: other})
    same = f"mpirun ({inside[0]}) {inside[1]}.9"
    mpi_match.check({**rank, mpi_match.HOST_ENV: same})  # same x.y: runs
    for env in (
        {mpi_match.HOST_ENV: other, "OMPI_COMM_WORLD_SIZE": "2"},  # not in a container
        {mpi_match.HOST_ENV: other, "container": "podman"},  # not under an MPI launcher
        rank,
    ):  # no host MPI named
        mpi_match.check(env)  # fmt: skip
