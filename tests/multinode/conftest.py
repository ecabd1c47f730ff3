"""The 2-node cluster (network namespaces + real SLURM, tests/helpers/cluster.py) for the whole session."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import cluster as mc
from tests.helpers.engines import require


def running_cluster(
    tmp_path_factory: pytest.TempPathFactory, nodes: int, **options: Any
) -> Iterator[mc.Cluster]:
    """An ``nodes``-node cluster (``options``: :func:`tests.helpers.cluster.start`'s), stopped afterwards;
    a missing tool or a failed start is a skip, and with CI=true a failure (:func:`require`)."""
    what = f"a {nodes}-node test cluster"
    missing = mc.missing_tools()
    require(not missing, f"{what} ({', '.join(missing)})", "apt-get install iproute2 slurmd ...")
    require(os.geteuid() == 0, what, "needs root for network namespaces")
    directory = tmp_path_factory.mktemp(f"cluster{nodes}")
    try:
        cluster = mc.start(directory, nodes=nodes, **options)
    except (OSError, TimeoutError, RuntimeError, subprocess.SubprocessError) as err:
        require(False, what, f"start failed: {err}")
        raise
    try:
        yield cluster
    finally:
        mc.stop(directory)


@pytest.fixture(scope="session")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mc.Cluster]:
    """Two nodes, one CPU each as SLURM sees them (so a 2-task job spans both nodes)."""
    yield from running_cluster(tmp_path_factory, 2, cpus=1)


@pytest.fixture
def node_env(two_nodes: mc.Cluster, python_env: dict[str, str]) -> dict[str, str]:
    """Child environment for srun/sbatch on the 2-node cluster."""
    return {**python_env, "SLURM_CONF": str(two_nodes.conf)}
