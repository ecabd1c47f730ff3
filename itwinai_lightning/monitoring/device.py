"""The small interface every device backend implements: a :data:`Reading` (metric name -> value, the
name carrying the unit; see :mod:`itwinai_lightning.monitoring.backends` for the table), the
:class:`DeviceBackend` protocol and :class:`BackendUnavailable`. Shared by the backends and the selection
that imports them, so neither imports the other's module."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

Reading = dict[str, float]
GIB = float(2**30)


class BackendUnavailable(RuntimeError):
    """This backend cannot monitor the requested device here (no library, no device, no permission)."""


@runtime_checkable
class DeviceBackend(Protocol):
    """What the sampler needs from a device: a name, a reading, and a way to let go."""

    name: str
    device_name: str

    def read(self) -> Reading: ...

    def close(self) -> None: ...
