"""The 2-node cluster (network namespaces + real SLURM, tests/helpers/cluster.py) for the whole session."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.helpers import cluster as mc
from tests.helpers.engines import require


@pytest.fixture(scope="session")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mc.Cluster]:
    """Two nodes, one CPU each as SLURM sees them (so a 2-task job spans both nodes)."""
    missing = mc.missing_tools()
    require(
        not missing, f"a 2-node test cluster ({', '.join(missing)})", "apt-get install iproute2 slurmd ..."
    )
    require(os.geteuid() == 0, "a 2-node test cluster", "needs root for network namespaces")
    directory = tmp_path_factory.mktemp("cluster2")
    try:
        cluster = mc.start(directory, nodes=2, cpus=1)
    except (OSError, TimeoutError, RuntimeError, subprocess.SubprocessError) as err:
        require(False, "a 2-node test cluster", f"start failed: {err}")
        raise
    try:
        yield cluster
    finally:
        mc.stop(directory)


@pytest.fixture
def node_env(two_nodes: mc.Cluster, python_env: dict[str, str]) -> dict[str, str]:
    """Child environment for srun/sbatch on the 2-node cluster."""
    return {**python_env, "SLURM_CONF": str(two_nodes.conf)}
