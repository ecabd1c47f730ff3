"""Chrome traces (torch.profiler) -> fractions of compute, communication, memory copies and other/idle.

Time base: the ``ProfilerStep#N`` spans of the trace (the profiled steps), clipped per step.

* **CUDA** (the trace has device kernels): device time. NCCL kernels are communication,
  ``gpu_memcpy``/``gpu_memset`` (and ``Memcpy``/``Memset`` kernels) memory copies, every other kernel
  compute. The window runs to the last kernel of the last step.
* **CPU** (no device kernels, e.g. gloo): CPU operator time on all threads. Each thread's time is given
  to its *innermost* running op (self time), so a ``c10d::allreduce_`` inside an autograd node counts as
  communication, not compute. Gloo's own ``gloo:*`` spans (on its worker threads) are communication;
  ``aten::copy_``/``aten::_to_copy``/pinning are memory copies; every other op is compute.

Fractions are of wall time in the window with priority communication > memcpy > compute; ``other`` is
the rest (Python, data loading, waiting). ``overlap`` is the fraction of communication time during
which some compute also ran (1.0 = fully hidden, 0.0 = fully exposed).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

Interval = tuple[float, float]

_COMM = re.compile(
    r"^(gloo:|nccl:|mpi:|ucc:|c10d::|c10d_|record_param_comms|horovod|deepspeed\.comm|ProcessGroup)|"
    r"nccl|allreduce|all_reduce|allgather|all_gather|reduce_scatter|alltoall|all_to_all",
    re.IGNORECASE,
)
_MEMCPY = re.compile(r"^(aten::copy_|aten::_to_copy|aten::pin_memory|aten::_pin_memory)$|Memcpy|Memset", re.I)
_DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
FRACTIONS = ("compute", "communication", "memcpy", "other")


def union(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[list[float]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def intersect(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """Intersection of two unions (sorted, disjoint)."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if end > start:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """``a`` minus ``b`` (both unions)."""
    out = []
    for start, end in a:
        cursor = start
        for bs, be in b:
            if be <= cursor or bs >= end:
                continue
            if bs > cursor:
                out.append((cursor, bs))
            cursor = max(cursor, be)
        if cursor < end:
            out.append((cursor, end))
    return out


def length(intervals: Iterable[Interval]) -> float:
    return sum(end - start for start, end in intervals)


def self_segments(events: Iterable[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Per-thread nesting -> non-overlapping segments labelled with the innermost event's label."""
    out: list[tuple[float, float, str]] = []
    stack: list[list[Any]] = []  # [end, label, cursor]

    def pop() -> None:
        end, label, cursor = stack.pop()
        if end > cursor:
            out.append((cursor, end, label))
        if stack:
            stack[-1][2] = max(stack[-1][2], end)

    for start, end, label in sorted(events, key=lambda e: (e[0], -e[1])):
        while stack and stack[-1][0] <= start:
            pop()
        if stack:
            end = min(end, stack[-1][0])
            parent = stack[-1]
            if start > parent[2]:
                out.append((parent[2], start, parent[1]))
            parent[2] = max(parent[2], end)
        stack.append([end, label, start])
    while stack:
        pop()
    return out


def _category(name: str, cat: str) -> str | None:
    if cat in ("gpu_memcpy", "gpu_memset"):
        return "memcpy"
    if _COMM.search(name):
        return "communication"
    if _MEMCPY.search(name):
        return "memcpy"
    if cat in ("kernel", "cpu_op"):
        return "compute"
    return None  # annotations (Optimizer.step#..., DistributedDataParallel.forward) are wrappers


def analyze(trace: Mapping[str, Any]) -> dict[str, Any]:
    """Fractions and overlap of one rank's chrome trace (see the module docstring)."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    # On CUDA, a step appears twice: the CPU annotation and its GPU-side twin (cat gpu_user_annotation);
    # the CPU one is the step's time base, and a step counts once.
    step_events = [e for e in events if str(e.get("name", "")).startswith("ProfilerStep#")]
    cpu_steps = [e for e in step_events if e.get("cat") != "gpu_user_annotation"] or step_events
    steps = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in cpu_steps]
    step_count = len({str(e["name"]) for e in cpu_steps})
    device = any(e.get("cat") in _DEVICE_CATS for e in events)
    chosen = [e for e in events if (e.get("cat") in _DEVICE_CATS) == device]
    if not steps:
        spans = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in chosen] or [(0.0, 0.0)]
        steps = [(min(s for s, _ in spans), max(e for _, e in spans))]
    window = union(steps)
    if device:
        last = max((float(e["ts"]) + float(e["dur"]) for e in chosen), default=window[-1][1])
        window = union([*window, (window[-1][1], max(window[-1][1], last))])
    per_cat: dict[str, list[Interval]] = defaultdict(list)
    threads: dict[tuple[Any, Any], list[tuple[float, float, str]]] = defaultdict(list)
    for e in chosen:
        label = _category(str(e.get("name", "")), str(e.get("cat", "")))
        if label is None and not (e.get("cat") == "user_annotation" and _COMM.search(str(e.get("name", "")))):
            continue
        start = float(e["ts"])
        threads[(e.get("pid"), e.get("tid"))].append(
            (start, start + float(e["dur"]), label or "communication")
        )
    for segments in threads.values():
        for start, end, label in self_segments(segments):
            per_cat[label].append((start, end))
    comm = intersect(union(per_cat["communication"]), window)
    memcpy = subtract(intersect(union(per_cat["memcpy"]), window), comm)
    compute_all = intersect(union(per_cat["compute"]), window)
    compute = subtract(subtract(compute_all, comm), memcpy)
    total = length(window)
    values = {"communication": length(comm), "memcpy": length(memcpy), "compute": length(compute)}
    values["other"] = max(0.0, total - sum(values.values()))
    comm_s = length(comm)
    overlap = length(intersect(comm, compute_all)) / comm_s if comm_s > 0 else 0.0
    return {
        "mode": "cuda" if device else "cpu",
        "steps": step_count or len(steps),
        "window_s": total / 1e6,
        "fractions": {k: (values[k] / total if total > 0 else 0.0) for k in FRACTIONS},
        "seconds": {k: values[k] / 1e6 for k in FRACTIONS},
        "overlap": overlap,
    }


def analyze_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        trace = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read chrome trace {p}: {err}") from err
    return analyze(trace if isinstance(trace, dict) else {"traceEvents": trace})


def merge(per_rank: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Mean fractions and overlap across ranks, with min/max and each rank's figures."""
    ranks = sorted(per_rank)
    if not ranks:
        return {"fractions": dict.fromkeys(FRACTIONS, 0.0), "overlap": 0.0, "ranks": 0, "per_rank": {}}

    def stats(values: list[float]) -> dict[str, float]:
        return {"min": min(values), "mean": sum(values) / len(values), "max": max(values)}

    fracs = {k: stats([float(per_rank[r]["fractions"][k]) for r in ranks]) for k in FRACTIONS}
    overlap = stats([float(per_rank[r]["overlap"]) for r in ranks])
    return {
        "mode": per_rank[ranks[0]]["mode"],
        "ranks": len(ranks),
        "fractions": {k: fracs[k]["mean"] for k in FRACTIONS},
        "fractions_across_ranks": fracs,
        "overlap": overlap["mean"],
        "overlap_across_ranks": overlap,
        "per_rank": {str(r): dict(per_rank[r]) for r in ranks},
    }
