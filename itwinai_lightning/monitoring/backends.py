"""The small interface every device backend implements, the psutil host backend, and backend selection.

A backend returns a :data:`Reading` (metric name -> value) from ``read()``; it may leave out what it
cannot measure. Metric names carry their unit:

=====================  =====  ==========================================================
key                    unit   meaning
=====================  =====  ==========================================================
``gpu_util_pct``       %      GPU busy time over the driver's last sample period
``gpu_mem_used_gb``    GiB    device memory in use (all processes on that GPU / MIG slice)
``gpu_power_w``        W      board power draw
``gpu_temp_c``         °C     GPU temperature
``gpu_sm_clock_mhz``   MHz    SM clock
``gpu_energy_j``       J      cumulative energy counter (since driver load); absent if unsupported
``cpu_util_pct``       %      host CPU utilisation, all cores of the node
``host_mem_gb``        GiB    resident memory of this rank's process and its children
=====================  =====  ==========================================================

``cpu_energy_j``       J      cumulative RAPL energy (package + DRAM) of the sockets this rank reads

GPU backends are tried in the order of :data:`GPU_BACKENDS`: NVML, amdsmi, the amdgpu sysfs files. Each
opener takes the :class:`TorchDevice` the rank trains on and returns a backend or raises
:class:`BackendUnavailable` with a reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from itwinai_lightning.monitoring.amd import AMDSMIBackend, SysfsAMDBackend
from itwinai_lightning.monitoring.device import GIB, BackendUnavailable, DeviceBackend, Reading, TorchDevice
from itwinai_lightning.monitoring.nvml import NVMLBackend

__all__ = [
    "GIB",
    "GPU_BACKENDS",
    "BackendUnavailable",
    "DeviceBackend",
    "GpuOpener",
    "HostBackend",
    "Reading",
    "TorchDevice",
    "open_gpu_backend",
]


class HostBackend:
    """Host CPU utilisation and the resident memory of this process and its children (data-loader
    workers; the list of children is refreshed every ``children_every`` reads), via psutil."""

    name = "psutil"

    def __init__(self, include_children: bool = True, children_every: int = 20) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()
        self.include_children = include_children
        # listing children scans every process of the node (~10 ms on a busy one): refresh it rarely
        self.children_every = max(1, children_every)
        self._children: list[Any] = []
        self._reads = 0
        self.device_name = f"cpu x{psutil.cpu_count() or 1}"
        psutil.cpu_percent(interval=None)  # the first call only primes the counter

    def read(self) -> Reading:
        rss = float(self._process.memory_info().rss)
        if self.include_children:
            if self._reads % self.children_every == 0:
                with contextlib.suppress(self._psutil.Error):
                    self._children = self._process.children(recursive=True)
            self._reads += 1
            for child in self._children:
                with contextlib.suppress(self._psutil.Error):  # a worker that just exited
                    rss += child.memory_info().rss
        return {"cpu_util_pct": float(self._psutil.cpu_percent(interval=None)), "host_mem_gb": rss / GIB}

    def close(self) -> None:
        pass


#: ``opener(device) -> DeviceBackend``; raises BackendUnavailable with a reason.
GpuOpener = Callable[[TorchDevice], DeviceBackend]


def _nvml(device: TorchDevice) -> DeviceBackend:
    return NVMLBackend.open(device.index, device.uuid)


GPU_BACKENDS: list[GpuOpener] = [_nvml, AMDSMIBackend.open, SysfsAMDBackend.open]


def open_gpu_backend(device: TorchDevice | int) -> tuple[DeviceBackend | None, str]:
    """The first GPU backend that can monitor ``device`` (or device index); else ``(None, reasons)``."""
    if isinstance(device, int):
        device = TorchDevice(device)
    reasons = []
    for opener in GPU_BACKENDS:
        try:
            return opener(device), ""
        except BackendUnavailable as err:
            reasons.append(str(err))
    return None, "; ".join(reasons) or "no GPU backend configured"
