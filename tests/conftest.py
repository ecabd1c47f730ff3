"""Shared fixtures. Engine fixtures skip locally when the engine is missing and fail under CI=true."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.childenv import child_env
from tests.helpers.engines import require, require_executable

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real one-node SLURM (localhost) for the whole session. ``cluster.env`` has SLURM_CONF."""
    from tests.helpers import slurm_cluster as sc

    require_executable("slurmctld", "apt-get install slurmd slurmctld slurm-client munge")
    directory = tmp_path_factory.mktemp("slurm")
    try:
        cluster = sc.start(directory)
    except (OSError, TimeoutError) as err:
        require(False, "a local SLURM cluster", f"start failed: {err}")
        raise
    yield cluster
    sc.stop(directory)


@pytest.fixture(scope="session")
def image() -> object:
    """The package's image from the Containerfile (:mod:`tests.helpers.image`): built once per machine and
    code change, reused from podman's cache."""
    from tests.helpers import image as images

    return images.build()


@pytest.fixture
def python_env() -> dict[str, str]:
    """Environment for child processes: this interpreter's path first, the repo importable, quiet warnings."""
    return child_env()


#: tests that share one engine run on one pytest-xdist worker (``--dist loadgroup``): one SLURM cluster,
#: one 2-node cluster, one local Ray at a time; so do the tests of one costly module fixture (a real
#: benchmark grid, a wheel in a venv, a trained gallery), which would otherwise be built once per worker;
#: every other test goes to whichever worker is free. Largest groups first: they are handed out first, and
#: the single tests fill the gaps (longest-first keeps the two workers' ends close).
ENGINE_GROUPS = (
    ("ray", "ray_tmp"),
    ("multinode", "two_nodes"),
    ("slurm", "slurm_cluster"),
    ("container", "image"),
    ("wheel", "venv_python"),
    ("grid", "grids"),
    ("documented", "checkout"),
    ("run-outputs", "gallery"),
    ("predict-fit", "checkpoint"),
)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (it suffixes node ids with them)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank: dict[str, int] = {}
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        for index, (group, fixture) in enumerate(ENGINE_GROUPS):
            if fixture in fixtures or item.get_closest_marker(group) is not None:
                item.add_marker(pytest.mark.xdist_group(group))
                rank[item.nodeid] = index
                break
    items.sort(key=lambda item: rank.get(item.nodeid, len(ENGINE_GROUPS)))  # stable: groups first
