"""Callbacks every run gets unless its config has one of the same class (``--default_callbacks``).

A ``fit`` gets :class:`~itwinai_lightning.callbacks.TimingMonitor` by default, so every run's record and
end-of-run summary carry its wall time and samples/s (its cost is measured in
``benchmarks/bench_monitoring.py``), and :class:`~itwinai_lightning.callbacks.HangWatchdog` (20 min
without a finished batch ends the run naming the stuck rank; cost in ``benchmarks/bench_watchdog.py``).
``benchmark`` asks for its monitoring callbacks the same way, so a config's own TimingMonitor (its
``monitor``, mode and options) is kept instead of duplicated.
``--default_callbacks []`` turns the defaults off.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from itwinai_lightning.errors import UserError

#: ``--default_callbacks`` of a ``fit`` when the command line does not set it
FIT_DEFAULTS = ("TimingMonitor", "HangWatchdog")
#: where a short class name (no dot) is looked up
SHORT_NAME_MODULE = "itwinai_lightning.callbacks"


def callback_class(name: str) -> type:
    """A class path or one of this package's short callback names -> the class; a typo is one line."""
    module_name, _, attr = name.rpartition(".") if "." in name else (SHORT_NAME_MODULE, "", name)
    try:
        found = getattr(importlib.import_module(module_name), attr, None)
    except ImportError:
        found = None
    if isinstance(found, type):
        return found
    import difflib

    from itwinai_lightning import callbacks

    close = difflib.get_close_matches(attr, callbacks.__all__, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(f"default_callbacks: no callback class {name!r}{hint}")


def missing(present: Sequence[Any], names: Sequence[str]) -> list[Any]:
    """New instances of the classes in ``names`` that no callback in ``present`` is an instance of."""
    out: list[Any] = []
    for name in names:
        cls = callback_class(name)
        if not any(isinstance(cb, cls) for cb in [*present, *out]):
            out.append(cls())
    return out
