"""What this package keeps per Trainer (its recorders, the facts read from it once, where its ranks ran),
in a map weakly keyed by the Trainer: nothing is set on the Trainer itself, and the entry goes with it."""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

#: the keys of what is kept (HANG_REPORTED: the watchdog's line, once a hang ends the run)
RECORDERS, FACTS, PLACEMENT, HANG_REPORTED = "recorders", "facts", "placement", "hang_reported"

_KEPT: WeakKeyDictionary[Any, dict[str, Any]] = WeakKeyDictionary()


def get(trainer: Any, key: str) -> Any:
    """What was kept for ``trainer`` under ``key``, or None."""
    try:
        return _KEPT.get(trainer, {}).get(key)
    except TypeError:  # not weak-referenceable (e.g. a stand-in object in a test): nothing kept
        return None


def put(trainer: Any, key: str, value: Any) -> None:
    """Keep ``value`` for ``trainer`` under ``key``, for as long as the Trainer lives."""
    _KEPT.setdefault(trainer, {})[key] = value
