"""``itwinai-lightning env --check``: a distributed health check to run under the launcher of a long job.

Every rank joins a rendezvous on rank 0's address (from the launcher table, as a training run would),
then runs real collectives over gloo (CPU) or NCCL (CUDA):

* join: which ranks arrived, on which host, and how long they took; ranks that did not join within
  ``--timeout`` seconds are named (with the host SLURM meant them for, when it can tell) and the check
  exits 1;
* correctness: an all-reduce of every rank's number and an all-gather of every rank's host name;
* speed: all-reduce latency (median over repetitions, microseconds) and bus bandwidth (GB/s, the
  nccl-tests convention: ``bytes / time * 2 (n - 1) / n``) for a few message sizes;
* the slowest rank: each rank's median time of the same all-reduce round, gathered; the slowest rank and
  its host are named.

Rank 0 prints the report (or one JSON object with ``--json``); every rank exits 0 when all is well, 1 when
a rank is missing or a collective gave a wrong result.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from itwinai_lightning.launch import nodelist
from itwinai_lightning.launch.where import ClusterInfo, default_backend, detect

#: what a one-rank check says instead of a bandwidth table
ONE_RANK = (
    "one rank: nothing to measure between ranks; run the check under the job's launcher with 2 or more "
    "ranks (torchrun --nproc_per_node 2, srun -N 2, mpirun -np 2)"
)
#: message sizes of the bandwidth test, bytes
SIZES = (8, 64 * 1024, 1024 * 1024, 8 * 1024 * 1024)
_JOINED = "itl-joined/"


@dataclass
class SizeResult:
    """All-reduce of ``bytes`` (float32): median latency in microseconds, bus bandwidth in GB/s."""

    bytes: int
    latency_us: float
    busbw_gbps: float


@dataclass
class Report:
    """What rank 0 reports; ``ok`` is false when a rank was missing or a result was wrong."""

    ok: bool
    launcher: str
    backend: str
    world_size: int
    hosts: list[str] = field(default_factory=list)  # host of each rank, in rank order
    join_s: list[float] = field(default_factory=list)  # seconds from rank 0's start to each rank's join
    missing: list[str] = field(default_factory=list)  # "rank R (host H)" of ranks that never joined
    allreduce_ok: bool = False
    allgather_ok: bool = False
    sizes: list[SizeResult] = field(default_factory=list)
    rank_round_ms: list[float] = field(default_factory=list)  # each rank's median all-reduce round, ms
    slowest: str = ""
    error: str = ""


def expected_hosts(info: ClusterInfo) -> list[str]:
    """The host SLURM placed each rank on (block distribution), when this is an srun step; else []."""
    if info.launcher != "srun":
        return []
    return nodelist.rank_hosts(info.world_size, info.local_world_size)


def _join(info: ClusterInfo, timeout: float, report: Report) -> Any:
    """Rendezvous through a TCPStore on rank 0; return the store, or None when a rank is missing."""
    from datetime import timedelta

    import torch.distributed as dist

    from itwinai_lightning.launch.environment import derived_port, main_address_for

    host, port = main_address_for(info), derived_port(info)
    # torchrun's agent already serves a store on MASTER_PORT: rank 0 joins it as a client instead of
    # failing to bind there (c10d's "[E...] failed to bind" line)
    serves = info.rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true"
    t0 = time.time()
    try:
        store = dist.TCPStore(
            host, port, info.world_size, serves, timedelta(seconds=timeout), wait_for_workers=False
        )
    except (RuntimeError, OSError) as err:
        report.error = f"rank {info.rank} on {platform.node()}: rank 0 at {host}:{port} not reachable ({err})"
        return None
    store.set(f"{_JOINED}{info.rank}", json.dumps([platform.node(), time.time()]))
    if info.rank != 0:
        verdict = store.get("itl-verdict").decode()  # waits up to the store timeout
        return store if verdict == "go" else None
    keys = [f"{_JOINED}{r}" for r in range(info.world_size)]
    while time.time() - t0 < timeout and not store.check(keys):
        time.sleep(0.1)
    joined = [r for r in range(info.world_size) if store.check([keys[r]])]
    expected = expected_hosts(info)
    for r in range(info.world_size):
        if r in joined:
            name, at = json.loads(store.get(keys[r]).decode())
            report.hosts.append(name)
            report.join_s.append(round(max(0.0, at - t0), 3))
        else:
            where = expected[r] if r < len(expected) else "unknown host"
            report.missing.append(f"rank {r} ({where})")
            report.hosts.append("")
    store.set("itl-verdict", "abort" if report.missing else "go")
    return None if report.missing else store


def _sig(value: float) -> float:
    """Four significant digits (a tiny message's bandwidth must not round to 0)."""
    return float(f"{value:.4g}")


def _bench(dist: Any, torch: Any, device: Any, size: int, reps: int) -> float:
    """This rank's median time (s) of an all-reduce of ``size`` bytes, after two warm-up rounds."""
    x = torch.ones(max(1, size // 4), dtype=torch.float32, device=device)
    for _ in range(2):
        dist.all_reduce(x)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        dist.all_reduce(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_check(timeout: float) -> Report:
    """Run the check on this rank; every rank gets the same ``ok``; rank 0's report is complete."""
    import torch
    import torch.distributed as dist

    info = detect()
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    backend = default_backend(device.type)
    report = Report(ok=False, launcher=info.launcher, backend=backend, world_size=info.world_size)
    store = _join(info, timeout, report)
    if store is None:
        return report
    from datetime import timedelta

    dist.init_process_group(backend, store=store, rank=info.rank, world_size=info.world_size,
                            timeout=timedelta(seconds=timeout))  # fmt: skip
    try:
        world = info.world_size
        total = torch.tensor([float(info.rank + 1)], device=device)
        dist.all_reduce(total)
        report.allreduce_ok = float(total.item()) == world * (world + 1) / 2
        names: list[Any] = [None] * world
        dist.all_gather_object(names, platform.node())
        report.allgather_ok = info.rank != 0 or [str(n) for n in names] == report.hosts
        report.hosts = [str(n) for n in names]
        if world == 1:  # one rank: nothing travels between ranks, no bandwidth to measure
            report.ok = report.allreduce_ok and report.allgather_ok
            return report
        factor = 2 * (world - 1) / world
        rounds = []
        for size in SIZES:
            median = _bench(dist, torch, device, size, 20 if size <= 1024 * 1024 else 5)
            rounds.append(median)
            busbw = size / median * factor / 1e9
            report.sizes.append(SizeResult(size, _sig(median * 1e6), _sig(busbw)))
        mine = torch.tensor([sum(rounds) * 1e3], device=device)
        gathered = [torch.zeros_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine)
        report.rank_round_ms = [round(float(t.item()), 3) for t in gathered]
        slow = max(range(world), key=lambda r: report.rank_round_ms[r])
        report.slowest = (
            f"rank {slow} on {report.hosts[slow]} ({report.rank_round_ms[slow]:.1f} ms per round)"
        )
        ok = torch.tensor([int(report.allreduce_ok and report.allgather_ok)], device=device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        report.ok = bool(ok.item())
    finally:
        dist.destroy_process_group()
    return report


def render(report: Report) -> str:
    lines = [
        f"health check: {report.world_size} rank(s), launcher {report.launcher}, backend {report.backend}"
    ]
    if report.error:
        lines.append(f"FAILED: {report.error}")
        return "\n".join(lines)
    if report.missing:
        lines.append(f"FAILED: did not join: {', '.join(report.missing)}")
    for r, host in enumerate(report.hosts):
        if host and r < len(report.join_s):
            lines.append(f"  rank {r:<4} {host:<24} joined after {report.join_s[r]:.2f} s")
    if report.missing:
        return "\n".join(lines)
    verdict = {True: "ok", False: "WRONG"}
    lines.append(f"all-reduce {verdict[report.allreduce_ok]}, all-gather {verdict[report.allgather_ok]}")
    if report.world_size == 1:
        lines.append(ONE_RANK)
        lines.append("OK" if report.ok else "FAILED")
        return "\n".join(lines)
    lines.append(f"  {'bytes':>10}  {'latency':>12}  {'bus bandwidth':>14}")
    for s in report.sizes:
        lines.append(f"  {s.bytes:>10}  {s.latency_us:>9.1f} us  {s.busbw_gbps:>9.3f} GB/s")
    lines.append(f"slowest: {report.slowest}")
    lines.append("OK" if report.ok else "FAILED")
    return "\n".join(lines)


def main(timeout: float, as_json: bool) -> int:
    """Run the check; rank 0 (or any rank that failed to reach rank 0) prints; exit status 0 or 1."""
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # c10d's socket warnings are not the report
    info = detect()
    report = run_check(timeout)
    if info.rank == 0 or report.error:
        text = json.dumps(asdict(report)) if as_json else render(report)
        stream = sys.stdout if report.ok else sys.stderr
        stream.write(text + "\n")
        stream.flush()
    return 0 if report.ok else 1
