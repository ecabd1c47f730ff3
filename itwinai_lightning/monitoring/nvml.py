"""NVML backend (nvidia-ml-py): the GPU this rank really uses, including UUIDs and MIG slices.

``pynvml`` is imported and initialised only in :meth:`NVMLBackend.open`, never at import time.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

from itwinai_lightning.monitoring.device import GIB, BackendUnavailable, Reading

_init_lock = threading.Lock()
_init_count = 0


def nvml_identifiers(local_index: int, visible: str | None, torch_uuid: str | None = None) -> list[str]:
    """Candidate NVML identifiers for CUDA device ``local_index`` of this process, best first.

    * ``torch_uuid`` (from ``torch.cuda.get_device_properties(i).uuid``) is exact whatever the ordering:
      tried as ``GPU-<uuid>`` and ``MIG-<uuid>``.
    * Otherwise the ``local_index``-th entry of ``CUDA_VISIBLE_DEVICES`` (an index, a ``GPU-``/``MIG-``
      UUID or a legacy ``MIG-GPU-<uuid>/<gi>/<ci>``), or ``local_index`` itself when it is unset.
    """
    out: list[str] = []
    if torch_uuid:
        uuid = torch_uuid.strip()
        if uuid.startswith(("GPU-", "MIG-")):
            out.append(uuid)
        else:
            out += [f"GPU-{uuid}", f"MIG-{uuid}"]
    if visible is None:
        out.append(str(local_index))
    else:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if local_index < len(entries):
            out.append(entries[local_index])
    return out


def _nvml() -> Any:
    try:
        import pynvml
    except ImportError as err:
        raise BackendUnavailable("nvidia-ml-py is not installed (pip install nvidia-ml-py)") from err
    return pynvml


def _handle(nv: Any, ident: str) -> Any:
    if ident.isdigit():
        return nv.nvmlDeviceGetHandleByIndex(int(ident))
    if ident.startswith("MIG-GPU-"):  # legacy MIG-GPU-<uuid>/<gi>/<ci>
        parent_uuid, gi, ci = ident.removeprefix("MIG-").split("/")
        parent = nv.nvmlDeviceGetHandleByUUID(parent_uuid)
        for i in range(nv.nvmlDeviceGetMaxMigDeviceCount(parent)):
            try:
                mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(parent, i)
            except nv.NVMLError:
                continue
            if (nv.nvmlDeviceGetGpuInstanceId(mig), nv.nvmlDeviceGetComputeInstanceId(mig)) == (
                int(gi),
                int(ci),
            ):
                return mig
        raise nv.NVMLError(nv.NVML_ERROR_NOT_FOUND)
    return nv.nvmlDeviceGetHandleByUUID(ident)


class NVMLBackend:
    """Reads one GPU (or MIG slice) through NVML. On a MIG slice, memory is the slice's and power,
    temperature, clock and energy are the parent GPU's (NVML has no per-slice power); utilisation is
    left out where NVML does not support it. A metric NVML reports as unsupported is not asked again.
    """

    name = "nvml"

    def __init__(self, nv: Any, handle: Any, parent: Any, device_name: str, ident: str) -> None:
        self._nv = nv
        self._handle = handle
        self._parent = parent
        self.device_name = device_name
        self.identifier = ident
        self.is_mig = parent is not handle
        self._unsupported: set[str] = set()
        self.has_energy_counter = self._query("gpu_energy_j") is not None

    @classmethod
    def open(cls, local_index: int, torch_uuid: str | None = None) -> NVMLBackend:
        global _init_count
        nv = _nvml()
        with _init_lock:
            try:
                nv.nvmlInit()
            except nv.NVMLError as err:
                raise BackendUnavailable(f"NVML unavailable: {err}") from err
            _init_count += 1
        idents = nvml_identifiers(local_index, os.environ.get("CUDA_VISIBLE_DEVICES"), torch_uuid)
        for ident in idents:
            try:
                handle = _handle(nv, ident)
            except (nv.NVMLError, ValueError):
                continue
            parent = handle
            try:
                if nv.nvmlDeviceIsMigDeviceHandle(handle):
                    parent = nv.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
            except nv.NVMLError:
                pass
            name = nv.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            return cls(nv, handle, parent, name, ident)
        _shutdown(nv)
        raise BackendUnavailable(f"NVML has no device matching CUDA device {local_index} (tried {idents})")

    def _query(self, key: str) -> float | None:
        if key in self._unsupported:
            return None
        nv, h, p = self._nv, self._handle, self._parent
        try:
            if key == "gpu_util_pct":
                return float(nv.nvmlDeviceGetUtilizationRates(h).gpu)
            if key == "gpu_mem_used_gb":
                return float(nv.nvmlDeviceGetMemoryInfo(h).used) / GIB
            if key == "gpu_power_w":
                return float(nv.nvmlDeviceGetPowerUsage(p)) / 1000.0
            if key == "gpu_temp_c":
                return float(nv.nvmlDeviceGetTemperature(p, nv.NVML_TEMPERATURE_GPU))
            if key == "gpu_sm_clock_mhz":
                return float(nv.nvmlDeviceGetClockInfo(p, nv.NVML_CLOCK_SM))
            if key == "gpu_energy_j":
                return float(nv.nvmlDeviceGetTotalEnergyConsumption(p)) / 1000.0
        except nv.NVMLError as err:
            if err.value in (nv.NVML_ERROR_NOT_SUPPORTED, nv.NVML_ERROR_NO_PERMISSION):
                self._unsupported.add(key)
            return None  # any other failure: a missing sample this time
        raise KeyError(key)

    def read(self) -> Reading:
        keys = (
            "gpu_util_pct",
            "gpu_mem_used_gb",
            "gpu_power_w",
            "gpu_temp_c",
            "gpu_sm_clock_mhz",
            "gpu_energy_j",
        )
        out: Reading = {}
        for key in keys:
            value = self._query(key)
            if value is not None:
                out[key] = value
        return out

    def close(self) -> None:
        if self._nv is not None:
            _shutdown(self._nv)
            self._nv = None


def _shutdown(nv: Any) -> None:
    global _init_count
    with _init_lock:
        _init_count -= 1
        if _init_count <= 0:
            _init_count = 0
            with contextlib.suppress(nv.NVMLError):
                nv.nvmlShutdown()
