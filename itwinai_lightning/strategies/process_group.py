"""Shut the default ``torch.distributed`` process group down before the interpreter exits.

torch asks every program to call ``destroy_process_group()``; a gloo group left alive into interpreter
teardown can abort a rank *after* a successful run ("terminate called without an active exception",
SIGABRT), which the launcher then reports as a failed job. The HPC strategies register :func:`close` with
``atexit`` as soon as they have set a group up, so a user's own script (no CLI) gets the same clean exit.
"""

from __future__ import annotations

import atexit
import sys

_registered = False


def close() -> None:
    """Destroy the default group if torch set one up; a no-op otherwise (torch never imported, no group)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def close_at_exit() -> None:
    """Register :func:`close` with ``atexit`` once per process."""
    global _registered
    if not _registered:
        atexit.register(close)
        _registered = True
