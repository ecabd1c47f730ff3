"""A real one-node SLURM cluster on localhost (slurmctld + slurmd + munge), started for the tests.

Usage outside pytest (e.g. to try the SLURM features by hand)::

    python -m tests.helpers.slurm_cluster start /tmp/slurm   # prints 'export SLURM_CONF=...'
    python -m tests.helpers.slurm_cluster stop /tmp/slurm
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.cluster import COMMON_CONF, FINAL_STATES, ensure_munge, free_port_pair

CONF_TEMPLATE = (
    """\
ClusterName=itwinai-test
SlurmctldHost=localhost(127.0.0.1)
SlurmdSpoolDir={d}/spool
SlurmdPidFile={d}/slurmd.pid
SlurmdLogFile={d}/slurmd.log
"""
    + COMMON_CONF
    + """\
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} SocketsPerBoard=1 CoresPerSocket={cpus} \\
ThreadsPerCore=1 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
)


@dataclass
class SlurmCluster:
    directory: Path
    conf: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses that use this cluster (sbatch, srun, squeue, sacct...)."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, check=check, timeout=timeout
        )

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            if out == "idle":
                return
            time.sleep(0.5)
        raise TimeoutError(f"slurm node not idle after {timeout}s; logs in {self.directory}")

    def wait_job(self, job_id: str, timeout: float = 300) -> str:
        """Wait until the job leaves the queue; return its final state from scontrol (e.g. COMPLETED)."""
        deadline = time.time() + timeout
        state = "UNKNOWN"
        while time.time() < deadline:
            out = self.run("scontrol", "show", "job", job_id, "-o", check=False).stdout
            for field in out.split():
                if field.startswith("JobState="):
                    state = field.split("=", 1)[1]
            if state in FINAL_STATES:
                return state
            time.sleep(1)
        raise TimeoutError(f"job {job_id} still {state} after {timeout}s")


def start(directory: Path, cpus: int | None = None, port_base: int | None = None) -> SlurmCluster:
    """Start munged (if needed), slurmctld and slurmd with state under ``directory``."""
    port_base = port_base or free_port_pair()
    for exe in ("slurmctld", "slurmd", "munged", "sinfo"):
        if shutil.which(exe) is None and not Path(f"/usr/sbin/{exe}").exists():
            raise FileNotFoundError(
                f"{exe} not installed (apt-get install slurmd slurmctld slurm-client munge)"
            )
    directory.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (directory / sub).mkdir(exist_ok=True)
    cpus = cpus or os.cpu_count() or 2
    conf = directory / "slurm.conf"
    conf.write_text(CONF_TEMPLATE.format(d=directory, cpus=cpus, ctld_port=port_base, d_port=port_base + 1))
    ensure_munge()
    env = dict(os.environ, SLURM_CONF=str(conf))
    subprocess.run(["/usr/sbin/slurmctld", "-f", str(conf), "-c"], env=env, check=True)
    subprocess.run(["/usr/sbin/slurmd", "-f", str(conf), "-N", "localhost", "-c"], env=env, check=True)
    cluster = SlurmCluster(directory, conf)
    try:
        cluster.wait_idle()
    except TimeoutError:
        stop(directory)
        raise
    return cluster


def stop(directory: Path) -> None:
    """Stop the daemons by their pid files (munged is shared and left running)."""
    for name in ("slurmd", "slurmctld"):
        pid_file = directory / f"{name}.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
    time.sleep(0.5)


if __name__ == "__main__":
    cmd, where = sys.argv[1], Path(sys.argv[2]).resolve()
    if cmd == "start":
        c = start(where)
        print(f"export SLURM_CONF={c.conf}")
    else:
        stop(where)
