"""A real N-node SLURM cluster on one machine: one network namespace per node, a bridge, munge.

Each node is a network namespace with its own address on a private bridge and its own host name (a UTS
namespace per process started on it), the names are in ``/etc/hosts``, ``slurmctld`` runs in the host
namespace and one ``slurmd`` runs on each node. Jobs started with ``srun``/``sbatch`` therefore run on
"different hosts": different addresses, different ``hostname``; the file system and PID space are shared.

By hand::

    python -m tests.helpers.cluster start --nodes 2 /tmp/c2    # prints 'export SLURM_CONF=...'
    python -m tests.helpers.cluster stop /tmp/c2

Everything a cluster makes (namespaces, bridge, veths, ``/etc/hosts`` lines, daemons, processes left in
its namespaces) is listed in ``<dir>/cluster.json`` and removed by :func:`stop`. A cluster whose owner
process died without stopping it (a killed test session) is removed by the next :func:`start` on this
machine. Two clusters at once (two test sessions) get different subnets, names and ports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REGISTRY = Path("/run/itwinai-test-clusters")
HOSTS = Path("/etc/hosts")
SUBNET_BASE = "10.78"
MARK = "# itwinai-test-cluster"

#: slurm.conf lines every test cluster shares (one node on localhost or N in namespaces): real munge
#: authentication, no cgroups, no accounting, requeue allowed, state under the cluster's directory.
COMMON_CONF = """\
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
SlurmctldPidFile={d}/slurmctld.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmctldDebug=info
SlurmdDebug=info
MinJobAge=600
KillWait=10
JobRequeue=1
PreemptType=preempt/none
"""
CONF_TEMPLATE = (
    """\
ClusterName=itl{tag}
SlurmctldHost={ctld_host}({gateway})
SlurmdSpoolDir={d}/spool_%n
SlurmdPidFile={d}/slurmd.%n.pid
SlurmdLogFile={d}/slurmd.%n.log
SlurmdParameters=config_overrides
SlurmdTimeout={slurmd_timeout}
"""
    + COMMON_CONF
    + """\
{extra}{nodes}
PartitionName=debug Nodes={node_list} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
)
NODE_LINE = (
    "NodeName={name} NodeAddr={addr} CPUs={cpus} SocketsPerBoard=1 CoresPerSocket={cpus} "
    "ThreadsPerCore=1 RealMemory=8000 State=UNKNOWN"
)
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")


@dataclass
class Cluster:
    """A running cluster: its directory, slurm.conf and nodes (name, address, network namespace)."""

    directory: Path
    tag: int
    nodes: list[str]
    addresses: list[str]
    netns: list[str]
    bridge: str
    gateway: str
    ctld_port: int
    owner_pid: int = field(default_factory=os.getpid)

    @property
    def conf(self) -> Path:
        return self.directory / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """Environment for sbatch/srun/scontrol and the jobs they start."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, check=check, timeout=timeout
        )

    def on_node(self, index: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run on node ``index`` (0-based): in its network namespace, under its host name."""
        script = f'hostname {self.nodes[index]} && exec "$@"'
        return [
            "nsenter", f"--net=/var/run/netns/{self.netns[index]}", "unshare", "--uts",
            "sh", "-c", script, "sh", *argv,
        ]  # fmt: skip

    def kill_node(self, index: int) -> int:
        """Node ``index`` dies: SIGKILL to everything on it (its slurmd, slurmstepd, the job's ranks), as a
        power loss would; its address stays (peers see connections refused, not silence). How many died."""
        pids = _pids_in(self.netns[index])
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        out = ""
        while time.time() < deadline:
            out = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout
            states = dict(line.split() for line in out.strip().splitlines() if len(line.split()) == 2)
            if len(states) == len(self.nodes) and all(s == "idle" for s in states.values()):
                return
            time.sleep(0.5)
        raise TimeoutError(f"nodes not idle after {timeout}s ({out.strip()!r}); logs in {self.directory}")

    def job_state(self, job_id: str) -> str:
        out = self.run("scontrol", "show", "job", job_id, "-o", check=False).stdout
        for item in out.split():
            if item.startswith("JobState="):
                return item.split("=", 1)[1]
        return "UNKNOWN"

    def wait_job(self, job_id: str, timeout: float = 300) -> str:
        """Wait until the job leaves the queue; return its final state (e.g. COMPLETED)."""
        deadline = time.time() + timeout
        state = "UNKNOWN"
        while time.time() < deadline:
            state = self.job_state(job_id)
            if state in FINAL_STATES:
                return state
            time.sleep(1)
        raise TimeoutError(f"job {job_id} still {state} after {timeout}s")

    def save(self) -> None:
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        (self.directory / "cluster.json").write_text(json.dumps(data, indent=1))
        REGISTRY.mkdir(parents=True, exist_ok=True)
        (REGISTRY / f"{self.tag}.json").write_text(json.dumps(data))

    @classmethod
    def load(cls, path: Path) -> Cluster:
        data = json.loads(path.read_text())
        data["directory"] = Path(data["directory"])
        return cls(**data)


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def missing_tools() -> list[str]:
    """Executables a cluster needs that this machine lacks (empty: a cluster can start)."""
    need = ("ip", "nsenter", "unshare", "slurmctld", "slurmd", "munged", "sinfo", "srun")
    return [exe for exe in need if shutil.which(exe) is None and not Path(f"/usr/sbin/{exe}").exists()]


def reap_stale() -> list[int]:
    """Stop clusters whose owner process is gone (a test session that was killed); return their tags."""
    reaped = []
    if not REGISTRY.is_dir():
        return reaped
    for entry in REGISTRY.glob("*.json"):
        try:
            cluster = Cluster.load(entry)
        except (OSError, ValueError, TypeError):
            entry.unlink(missing_ok=True)
            continue
        if not _alive(cluster.owner_pid):
            _teardown(cluster)
            reaped.append(cluster.tag)
    return reaped


def _free_tag() -> int:
    """A subnet octet (10.78.<tag>.0/24) no interface of this machine uses and no live cluster holds."""
    used = _sh("ip", "-4", "-o", "addr").stdout
    taken = {int(p.stem) for p in REGISTRY.glob("*.json")} if REGISTRY.is_dir() else set()
    for tag in range(1, 255):
        if tag not in taken and f" {SUBNET_BASE}.{tag}." not in used:
            return tag
    raise OSError("no free 10.78.x.0/24 subnet for a test cluster")


def free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
            port = int(s.getsockname()[1])
        if port >= 65535:
            continue
        with socket.socket() as t:
            try:
                t.bind(("0.0.0.0", port + 1))
            except OSError:
                continue
        return port
    raise OSError("no free pair of ports for slurmctld/slurmd")


def ensure_munge() -> None:
    if _sh("pgrep", "-x", "munged", check=False).returncode == 0:
        return
    for sub in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        os.makedirs(sub, exist_ok=True)
        shutil.chown(sub, "munge", "munge")
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(["/usr/sbin/mungekey", "--create"], check=False)
        shutil.chown("/etc/munge/munge.key", "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)


def _network(cluster: Cluster) -> None:
    br = cluster.bridge
    _sh("ip", "link", "add", br, "type", "bridge")
    _sh("ip", "addr", "add", f"{cluster.gateway}/24", "dev", br)
    _sh("ip", "link", "set", br, "up")
    for i, (ns, addr) in enumerate(zip(cluster.netns, cluster.addresses, strict=True)):
        veth = f"itv{cluster.tag}x{i}"
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _sh("ip", "link", "set", veth, "master", br)
        _sh("ip", "link", "set", veth, "up")
        _sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        _sh("ip", "-n", ns, "link", "set", "eth0", "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        # no default route: a DNS query (reverse look-ups by c10d) fails at once instead of timing out
    mark = f"{MARK} {cluster.tag}"
    lines = [f"{addr} {name} {mark}" for addr, name in zip(cluster.addresses, cluster.nodes, strict=True)]
    with HOSTS.open("a") as fh:
        fh.write("\n".join(lines) + "\n")


def start(
    directory: Path, nodes: int = 2, cpus: int = 2, slurmd_timeout: int = 30, extra_conf: Sequence[str] = ()
) -> Cluster:
    """Start an ``nodes``-node cluster with state under ``directory``; wait until every node is idle.
    ``slurmd_timeout``: seconds until slurmctld declares a silent node down (sites use 300);
    ``extra_conf``: further slurm.conf lines a test needs (a site's own settings)."""
    missing = missing_tools()
    if missing:
        raise FileNotFoundError(
            f"{', '.join(missing)} not installed (apt-get install iproute2 util-linux slurmd slurmctld "
            "slurm-client munge)"
        )
    if os.geteuid() != 0:
        raise PermissionError("a multi-node test cluster needs root (network namespaces)")
    reap_stale()
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "state").mkdir(exist_ok=True)
    tag = _free_tag()
    port = free_port_pair()
    cluster = Cluster(
        directory=directory,
        tag=tag,
        nodes=[f"itl{tag}n{i + 1}" for i in range(nodes)],
        addresses=[f"{SUBNET_BASE}.{tag}.{11 + i}" for i in range(nodes)],
        netns=[f"itl{tag}n{i + 1}" for i in range(nodes)],
        bridge=f"itlbr{tag}",
        gateway=f"{SUBNET_BASE}.{tag}.1",
        ctld_port=port,
    )
    cluster.save()  # first, so that a failure below is still cleaned up
    try:
        _network(cluster)
        node_lines = [
            NODE_LINE.format(name=n, addr=a, cpus=cpus)
            for n, a in zip(cluster.nodes, cluster.addresses, strict=True)
        ]
        cluster.conf.write_text(
            CONF_TEMPLATE.format(
                tag=tag,
                ctld_host=socket.gethostname(),
                gateway=cluster.gateway,
                ctld_port=port,
                d_port=port + 1,
                d=directory,
                slurmd_timeout=slurmd_timeout,
                extra="".join(f"{line}\n" for line in extra_conf),
                nodes="\n".join(node_lines),
                node_list=",".join(cluster.nodes),
            )
        )
        ensure_munge()
        env = cluster.env
        subprocess.run(["/usr/sbin/slurmctld", "-f", str(cluster.conf), "-c"], env=env, check=True)
        for i, name in enumerate(cluster.nodes):
            slurmd = ["/usr/sbin/slurmd", "-f", str(cluster.conf), "-N", name, "-c"]
            subprocess.run(cluster.on_node(i, slurmd), env=env, check=True)
        cluster.wait_idle()
    except BaseException:
        stop(directory)
        raise
    return cluster


def _pids_in(netns: str) -> list[int]:
    out = _sh("ip", "netns", "pids", netns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _teardown(cluster: Cluster) -> None:
    """Remove everything ``cluster`` made; safe to call twice and on a half-made cluster."""
    d = cluster.directory
    pid_files = [d / "slurmctld.pid", *[d / f"slurmd.{n}.pid" for n in cluster.nodes]]
    for pid_file in pid_files:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
    for sig in (signal.SIGTERM, signal.SIGKILL):  # whatever still runs on a node (ranks, ray, slurmstepd)
        pids = [p for ns in cluster.netns for p in _pids_in(ns)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + 5
        while pids and time.time() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
    for ns in cluster.netns:
        _sh("ip", "netns", "delete", ns, check=False)
    _sh("ip", "link", "delete", cluster.bridge, check=False)
    with contextlib.suppress(OSError):
        mark = f"{MARK} {cluster.tag}"
        kept = [ln for ln in HOSTS.read_text().splitlines() if not ln.endswith(mark)]
        HOSTS.write_text("\n".join(kept) + "\n")
    (REGISTRY / f"{cluster.tag}.json").unlink(missing_ok=True)


def stop(directory: Path) -> None:
    """Stop the cluster in ``directory`` (munged is shared and left running)."""
    state = directory.resolve() / "cluster.json"
    if state.exists():
        _teardown(Cluster.load(state))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.helpers.cluster", description=__doc__)
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("directory", type=Path)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs each node offers to SLURM")
    args = parser.parse_args(argv)
    if args.action == "stop":
        stop(args.directory)
        return 0
    cluster = start(args.directory, nodes=args.nodes, cpus=args.cpus)
    cluster.owner_pid = 1  # started by hand: lives until 'stop', never reaped as stale
    cluster.save()
    print(f"export SLURM_CONF={cluster.conf}")
    for name, addr, ns in zip(cluster.nodes, cluster.addresses, cluster.netns, strict=True):
        shell = f"nsenter --net=/var/run/netns/{ns} unshare --uts sh -c 'hostname {name}; sh'"
        print(f"# node {name} {addr}: {shell}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
