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

CONF_TEMPLATE = """\
ClusterName=itwinai-test
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MinJobAge=600
KillWait=10
JobRequeue=1
PreemptType=preempt/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} SocketsPerBoard=1 CoresPerSocket={cpus} \
ThreadsPerCore=1 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


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
            if state in (
                "COMPLETED",
                "FAILED",
                "CANCELLED",
                "TIMEOUT",
                "NODE_FAIL",
                "OUT_OF_MEMORY",
                "PREEMPTED",
            ):
                return state
            time.sleep(1)
        raise TimeoutError(f"job {job_id} still {state} after {timeout}s")


def _munge_running() -> bool:
    return subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0


def _free_port_pair() -> int:
    """A port p with p and p+1 both free (slurmctld, slurmd), so parallel test sessions never collide."""
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as t:
            try:
                t.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise OSError("no free pair of ports for slurmctld/slurmd")


def start(directory: Path, cpus: int | None = None, port_base: int | None = None) -> SlurmCluster:
    """Start munged (if needed), slurmctld and slurmd with state under ``directory``."""
    port_base = port_base or _free_port_pair()
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
    if not _munge_running():
        for sub in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            os.makedirs(sub, exist_ok=True)
            shutil.chown(sub, "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["/usr/sbin/mungekey", "--create"], check=False)
            shutil.chown("/etc/munge/munge.key", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
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
