"""The N-node test cluster cleans up after itself, also after its owner was killed, and two do not collide."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import cluster as mc

pytestmark = [pytest.mark.slurm, pytest.mark.multinode]
REPO = Path(__file__).resolve().parents[2]


def _leftovers(c: mc.Cluster) -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    hosts = Path("/etc/hosts").read_text()
    found = [ns for ns in c.netns if ns in netns]
    found += [c.bridge] if f" {c.bridge}:" in links else []
    found += [n for n in c.nodes if n in hosts]
    found += [f"pid {p}" for p in _daemon_pids(c)]
    return found


def _daemon_pids(c: mc.Cluster) -> list[int]:
    out = subprocess.run(["pgrep", "-f", str(c.conf)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_killed_owner_is_reaped_and_two_clusters_coexist(two_nodes: mc.Cluster, tmp_path: Path) -> None:
    # a second cluster beside the session's: its own subnet, names and ports
    code = (
        "import sys, time; from pathlib import Path; from tests.helpers import cluster as mc\n"
        "c = mc.start(Path(sys.argv[1]), nodes=2, cpus=1); print(c.tag, flush=True); time.sleep(600)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "c")], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        tag = int(owner.stdout.readline())
        second = mc.Cluster.load(tmp_path / "c" / "cluster.json")
        assert tag != two_nodes.tag and set(second.nodes).isdisjoint(two_nodes.nodes)
        assert second.ctld_port not in (two_nodes.ctld_port, two_nodes.ctld_port + 1)
        run = second.run("srun", "-N", "2", "--ntasks-per-node=1", "hostname", timeout=60)
        assert sorted(run.stdout.split()) == sorted(second.nodes)

        # its owner dies without stopping it (a killed test session): the next start removes everything
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        assert _leftovers(second)
        assert tag in mc.reap_stale()
        deadline = time.time() + 10
        while _leftovers(second) and time.time() < deadline:
            time.sleep(0.2)
        assert _leftovers(second) == []
        # the session's cluster was not touched
        assert two_nodes.run("sinfo", "-h", "-N", "-o", "%T").stdout.split() == ["idle", "idle"]
    finally:
        if owner.poll() is None:
            owner.kill()
        mc.stop(tmp_path / "c")
