"""Horovod's gloo rendezvous for processes that ``mpirun`` or ``srun`` started (``horovodrun`` does its own).

A gloo-only Horovod build has no MPI controller: ``hvd.init()`` finds its peers through Horovod's HTTP
rendezvous server and reads its place in the job from ``HOROVOD_*`` variables, both of which ``horovodrun``
normally provides. :func:`prepare` provides them from :func:`itwinai_lightning.launch.where.detect` instead:

=======================================  ==================================================================
global rank 0                            starts Horovod's ``RendezvousServer`` in-process (a daemon thread),
                                         bound to the main address (127.0.0.1 on one node) and the port
                                         ``rendezvous_port`` / ``MASTER_PORT`` / derived from the job id
every rank                               sets ``HOROVOD_GLOO_RENDEZVOUS_ADDR/PORT``, ``HOROVOD_CONTROLLER``,
                                         ``HOROVOD_CPU_OPERATIONS``, ``HOROVOD_RANK/SIZE``, ``LOCAL_*``,
                                         ``CROSS_*``, ``HOROVOD_HOSTNAME`` and ``HOROVOD_GLOO_IFACE``
other ranks                              wait (up to ``HOROVOD_GLOO_TIMEOUT_SECONDS``, default 30 s) until
                                         the server accepts connections, then ``hvd.init()`` may run
=======================================  ==================================================================

The host plan is Horovod's own (``get_host_assignments``) over one pseudo-host per node (``node<i>``, the
``HOROVOD_HOSTNAME`` of that node's ranks), so ranks must be placed in blocks: rank = node * tasks-per-node +
local rank (the default of ``mpirun`` and ``srun``). Horovod is imported inside the functions only.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import socket
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

from itwinai_lightning.errors import UserError
from itwinai_lightning.launch.environment import derived_port, main_address_for
from itwinai_lightning.launch.table import HOROVOD_RENDEZVOUS, RENDEZVOUS_MARK
from itwinai_lightning.launch.where import ClusterInfo

_servers: list[Any] = []  # keeps rank 0's server alive for the life of the process


def needs_rendezvous(info: ClusterInfo, env: Mapping[str, str] | None = None) -> bool:
    """True for a multi-process ``mpirun``/``srun`` launch that ``horovodrun`` did not prepare."""
    env = os.environ if env is None else env
    return info.launcher in HOROVOD_RENDEZVOUS and info.world_size > 1 and "HOROVOD_RANK" not in env


def host_plan(info: ClusterInfo) -> list[Any]:
    """Horovod ``SlotInfo`` for every rank: one pseudo-host ``node<i>`` with ``local_world_size`` slots."""
    from horovod.runner.common.util.hosts import HostInfo, get_host_assignments

    if info.num_nodes * info.local_world_size != info.world_size:
        raise UserError(
            f"horovod under {info.launcher}: {info.world_size} tasks over {info.num_nodes} node(s) is not "
            f"the same number of tasks on every node; start {info.local_world_size} task(s) per node"
        )
    hosts = [HostInfo(f"node{i}", info.local_world_size) for i in range(info.num_nodes)]
    return list(get_host_assignments(hosts, info.world_size))


def own_slot(info: ClusterInfo, plan: list[Any]) -> Any:
    """This rank's slot, checking that the launcher placed ranks in node blocks as the plan assumes."""
    slot = plan[info.rank]
    if (slot.hostname, slot.local_rank) != (f"node{info.node_rank}", info.local_rank):
        raise UserError(
            f"horovod under {info.launcher}: rank {info.rank} is local rank {info.local_rank} on node "
            f"{info.node_rank}; Horovod needs ranks placed in blocks per node (srun --distribution=block, "
            "mpirun --map-by slot)"
        )
    return slot


def gloo_iface(address: str) -> str | None:
    """The network interface this host uses to reach ``address`` (``lo`` for a loopback address)."""
    import psutil

    ip = socket.gethostbyname(address)
    if ipaddress.ip_address(ip).is_loopback:
        local_ip = ip
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # no packet is sent
            probe.connect((ip, 9))
            local_ip = probe.getsockname()[0]
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == local_ip for a in addrs):
            return str(name)
    if ipaddress.ip_address(local_ip).is_loopback:  # e.g. 127.0.1.1: served by the loopback interface
        return next((n for n, st in psutil.net_if_stats().items() if n.startswith("lo")), None)
    return None


def slot_env(slot: Any, address: str, port: int, iface: str | None) -> dict[str, str]:
    """The variables Horovod's gloo controller reads in ``hvd.init()``."""
    env = {
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": address,
        "HOROVOD_GLOO_RENDEZVOUS_PORT": str(port),
        "HOROVOD_CONTROLLER": "gloo",
        "HOROVOD_CPU_OPERATIONS": "gloo",
        "HOROVOD_HOSTNAME": slot.hostname,
        "HOROVOD_RANK": str(slot.rank),
        "HOROVOD_SIZE": str(slot.size),
        "HOROVOD_LOCAL_RANK": str(slot.local_rank),
        "HOROVOD_LOCAL_SIZE": str(slot.local_size),
        "HOROVOD_CROSS_RANK": str(slot.cross_rank),
        "HOROVOD_CROSS_SIZE": str(slot.cross_size),
    }
    if iface:
        env["HOROVOD_GLOO_IFACE"] = iface
    return env


def start_server(address: str, port: int, plan: list[Any]) -> Any:
    """Horovod's ``RendezvousServer`` listening on ``address:port`` (not on all interfaces), plan loaded."""
    from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer, RendezvousServer
    from horovod.runner.util.threads import in_thread

    class BoundRendezvousServer(RendezvousServer):  # type: ignore[misc]
        """``RendezvousServer.start`` binds ``''`` on a random port; bind where the ranks will look."""

        def start(self, handler_cls: Any = RendezvousHandler) -> int:
            try:
                self._httpd = RendezvousHTTPServer((address, port), handler_cls, self._verbose)
            except OSError as exc:
                raise UserError(
                    f"horovod: cannot start the gloo rendezvous server on {address}:{port} ({exc.strerror}); "
                    "set strategy.init_args.rendezvous_port (or MASTER_PORT) to a free port"
                ) from None
            self._listen_thread = in_thread(target=self._httpd.serve_forever)
            return port

    server = BoundRendezvousServer()
    server.start()
    server.init(plan)
    _servers.append(server)
    atexit.register(server.stop)
    return server


def wait_for_server(address: str, port: int, timeout: float) -> None:
    """Block until rank 0's rendezvous server accepts connections (it may start after this rank)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise UserError(
                    f"horovod: no gloo rendezvous server at {address}:{port} after {timeout:.0f} s; "
                    "did rank 0 start? (raise HOROVOD_GLOO_TIMEOUT_SECONDS, check MASTER_ADDR / "
                    "rendezvous_port)"
                ) from None
            time.sleep(0.2)


def prepare(
    info: ClusterInfo, port: int | None = None, env: MutableMapping[str, str] | None = None
) -> dict[str, str]:
    """Run the rendezvous for this rank (server on rank 0) and export the ``HOROVOD_*`` variables.

    Returns the variables set. Call before ``hvd.init()``, only when :func:`needs_rendezvous` is true.
    """
    env = os.environ if env is None else env
    plan = host_plan(info)
    slot = own_slot(info, plan)
    host = main_address_for(info, env)
    address = socket.gethostbyname(host)
    if info.num_nodes > 1 and ipaddress.ip_address(address).is_loopback:
        raise UserError(
            f"horovod over {info.num_nodes} nodes: the main address {host!r} resolves to loopback {address} "
            "here; export MASTER_ADDR=<rank 0's IP address reachable from every node>"
        )
    port = port if port is not None else derived_port(info, env)
    iface = env.get("HOROVOD_GLOO_IFACE") or gloo_iface(address)
    if info.rank == 0:
        start_server(address, port, plan)
    else:
        wait_for_server(address, port, float(env.get("HOROVOD_GLOO_TIMEOUT_SECONDS", "30")))
    values = slot_env(slot, address, port, iface)
    values[RENDEZVOUS_MARK] = info.launcher  # detect() still reports the real launcher
    env.update(values)
    return values
