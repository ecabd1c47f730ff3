"""The small interface every device backend implements: a :data:`Reading` (metric name -> value, the
name carrying the unit; see :mod:`itwinai_lightning.monitoring.backends` for the table), the
:class:`DeviceBackend` protocol and :class:`BackendUnavailable`. Shared by the backends and the selection
that imports them, so neither imports the other's module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

Reading = dict[str, float]
GIB = float(2**30)


@dataclass(frozen=True)
class TorchDevice:
    """The GPU a rank trains on, as torch names it: its index and, where torch reports them, its UUID and
    PCI address (``0000:c1:00.0``), each exact whatever the device ordering."""

    index: int
    uuid: str | None = None
    pci_bus_id: str | None = None

    @classmethod
    def of(cls, index: int) -> TorchDevice:
        """What ``torch.cuda.get_device_properties(index)`` says (CUDA or ROCm)."""
        import torch

        try:
            props: Any = torch.cuda.get_device_properties(index)
        except (AssertionError, RuntimeError):
            return cls(index)
        uuid = getattr(props, "uuid", None)
        bus = getattr(props, "pci_bus_id", None)
        bdf = None
        if isinstance(bus, int):
            domain, slot = getattr(props, "pci_domain_id", 0), getattr(props, "pci_device_id", 0)
            bdf = f"{int(domain):04x}:{bus:02x}:{int(slot):02x}.0"
        return cls(index, str(uuid) if uuid is not None else None, bdf)


class BackendUnavailable(RuntimeError):
    """This backend cannot monitor the requested device here (no library, no device, no permission)."""


@runtime_checkable
class DeviceBackend(Protocol):
    """What the sampler needs from a device: a name, a reading, and a way to let go."""

    name: str
    device_name: str

    def read(self) -> Reading: ...

    def close(self) -> None: ...
