"""End a grid point's launcher and every process below it, even those that left its process group.

torchrun (torch >= 2.x) starts each rank in a session of its own, so signalling the launcher's process
group does not reach the ranks; when the launcher then dies before them (SIGKILL after a grace period,
or a crash), they are orphans that keep training. :func:`terminate_tree` snapshots the launcher's
descendants first and signals them directly as well.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import psutil


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie (an exited rank whose parent has not reaped it yet counts as gone)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or only a recycled foreign group is left
        return False
    return True


def _signal(pgid: int, processes: list[psutil.Process], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if _alive(process):
                process.send_signal(sig)


def _all_gone(proc: subprocess.Popen[bytes], processes: list[psutil.Process], timeout: float) -> bool:
    """Whether the launcher (reaped here), its group and ``processes`` have all exited within ``timeout``."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None or _group_alive(proc.pid) or any(_alive(p) for p in processes):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def terminate_tree(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the launcher ``proc`` (leader of its own process group), its group and all its descendants;
    SIGKILL whatever is left ``grace_s`` later. Returns only once every one of them has exited."""
    tree = _descendants(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        tree += [p for p in _descendants(proc.pid) if p not in tree]  # started since the snapshot
        _signal(proc.pid, tree, sig)
        if _all_gone(proc, tree, grace_s):
            return
