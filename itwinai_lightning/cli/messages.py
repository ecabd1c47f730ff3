"""One-line user messages: printing a :class:`~itwinai_lightning.errors.UserError` once per node
(:func:`exit_with_error`), and the one line made from library errors (jsonargparse's nested validation
errors, the Trainer arguments Lightning rejects). Nothing of this package is imported here at module
level, so the CLI and ItwinaiCLI both use it without importing each other."""

from __future__ import annotations

import sys
import time
from typing import NoReturn

from itwinai_lightning.errors import EXIT_USAGE

#: how long a rank that does not print waits before it exits, so that the rank that prints exits first
FOLLOWER_GRACE_S = 5.0

_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>")


def condense(message: str) -> str:
    """jsonargparse nests errors over many lines; keep the ones that name the key and the problem."""
    lines = [ln.strip().lstrip("- ").strip() for ln in message.strip().splitlines()]
    lines = [ln for ln in lines if ln]
    if len(lines) <= 1:
        return lines[0] if lines else message
    head = lines[0].rstrip(":")
    useful = [ln for ln in lines[1:] if not ln.startswith(_NOISE)]
    if not useful:
        return head
    detail = useful[0]
    if detail.endswith(":") and len(useful) > 1:
        detail = f"{detail} {useful[1]}"
    return f"{head}: {detail}"


def trainer_error(err: Exception) -> str:
    """One line for a Trainer argument Lightning rejected (+ this package's strategy names if relevant)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "invalid strategy name" in text:
        from itwinai_lightning.strategies import SHORT_NAMES

        text = text.split(" Find a complete list")[0]
        text += f" This package adds: {', '.join(SHORT_NAMES)}."
    return f"trainer: {text}"


def exit_with_error(message: str) -> NoReturn:
    """Print one error line to stderr and exit with code 2.

    Under a launcher every rank reads the same config and reaches the same error: only the first
    process of each node (local rank 0) prints it, so the user reads it once per node, not once per rank.
    The other ranks wait up to :data:`FOLLOWER_GRACE_S` before they exit: torchrun and mpirun kill the
    whole job when its first process exits, and a silent rank that got there first would kill local
    rank 0 before it printed (the user would read no reason at all).
    """
    if _local_rank() == 0:
        print(f"itwinai-lightning: error: {message}", file=sys.stderr, flush=True)
    else:
        time.sleep(FOLLOWER_GRACE_S)
    raise SystemExit(EXIT_USAGE)


def _local_rank() -> int:
    try:
        from itwinai_lightning.launch.where import detect

        return int(detect().local_rank)
    except Exception:  # an unreadable launcher environment must not hide the error
        return 0
