"""AMD GPU backends: amdsmi when it imports, else the amdgpu driver's sysfs files.

Which GPU a rank uses: the PCI address torch reports for its device is exact whatever the ordering. Without
it, the rank's device index picks an entry of ``HIP_VISIBLE_DEVICES`` (which indexes into the devices
``ROCR_VISIBLE_DEVICES`` left visible), that entry one of ``ROCR_VISIBLE_DEVICES`` (an index or a
``GPU-<unique id>``), and a physical index counts the node's AMD GPUs in PCI-address order (ROCm's order).
On an MI250X every GCD is a device of its own.

Readings (units in the key, see :mod:`itwinai_lightning.monitoring.backends`): utilisation (GFX busy %),
VRAM in use, power, edge temperature, shader clock and, where the device has one, the energy counter
(amdsmi's energy accumulator; hwmon ``energy1_input``). Without a counter the monitor integrates power,
and the record says so (``energy_source: integrated``). A metric the device cannot report is not asked
again. ``amdsmi`` is imported only by :meth:`AMDSMIBackend.open`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from itwinai_lightning.monitoring.device import GIB, BackendUnavailable, Reading, TorchDevice

AMD_VENDOR = "0x1002"
KEYS = ("gpu_util_pct", "gpu_mem_used_gb", "gpu_power_w", "gpu_temp_c", "gpu_sm_clock_mhz", "gpu_energy_j")


def visible_entry(index: int, env: Mapping[str, str]) -> str:
    """The physical device (an index or ``GPU-<id>``) behind HIP device ``index`` of this process."""
    entry = str(index)
    for name in ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"):  # HIP's list indexes into ROCR's
        listed = [e.strip() for e in env.get(name, "").split(",") if e.strip()]
        if listed:
            if not entry.isdigit() or int(entry) >= len(listed):
                raise BackendUnavailable(f"{name}={env[name]!r} has no device {entry}")
            entry = listed[int(entry)]
    return entry


def pick(devices: list[tuple[str, str | None]], device: TorchDevice, env: Mapping[str, str]) -> int:
    """The position in ``devices`` (``(pci address, unique id)`` in PCI order) of the GPU ``device`` is."""
    if device.pci_bus_id:
        for i, (bdf, _) in enumerate(devices):
            if bdf.lower() == device.pci_bus_id.lower():
                return i
    entry = visible_entry(device.index, env)
    if entry.isdigit():
        if int(entry) < len(devices):
            return int(entry)
        raise BackendUnavailable(f"no AMD GPU {entry} on this node ({len(devices)} found)")
    wanted = entry.lower().removeprefix("gpu-").removeprefix("0x")
    for i, (_, unique) in enumerate(devices):
        if unique and unique.lower().removeprefix("0x") == wanted:
            return i
    raise BackendUnavailable(f"no AMD GPU with unique id {entry}")


class _Metrics:
    """Queries by metric key; a key whose query failed for good (unsupported, no permission) is not asked
    again, any other failure is a missing sample."""

    def __init__(
        self,
        queries: dict[str, Callable[[], float | None]],
        permanent: tuple[type[BaseException], ...],
        transient: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._queries = queries
        self._permanent = permanent
        self._transient = transient  # subclasses of a permanent error that are worth asking again
        self._unsupported: set[str] = set()

    def read(self) -> Reading:
        out: Reading = {}
        for key, query in self._queries.items():
            if key in self._unsupported:
                continue
            try:
                value = query()
            except self._permanent as err:
                if not isinstance(err, self._transient):
                    self._unsupported.add(key)
                continue
            except Exception:
                continue
            if value is None:
                self._unsupported.add(key)
            else:
                out[key] = value
        return out


# ----------------------------------------------------------------------------------------------- sysfs
def _read(path: Path) -> str:
    return path.read_text().strip()


class SysfsAMDBackend:
    """One AMD GPU through ``/sys/class/drm/card*/device`` (amdgpu): ``gpu_busy_percent``,
    ``mem_info_vram_used`` (bytes), hwmon ``power1_average``/``power1_input`` (µW), ``energy1_input`` (µJ),
    ``temp1_input`` (m°C) and ``freq1_input`` (Hz). ``root`` is the file-system root (tests pass a tree
    of their own)."""

    name = "amd-sysfs"

    def __init__(self, device_dir: Path, device_name: str) -> None:
        self.device_dir = device_dir
        self.device_name = device_name
        hwmon = sorted((device_dir / "hwmon").glob("hwmon*"))
        self._hwmon = hwmon[0] if hwmon else None
        power = self._hwmon_file("power1_average") or self._hwmon_file("power1_input")
        queries: dict[str, Callable[[], float | None]] = {
            "gpu_util_pct": self._value(device_dir / "gpu_busy_percent", 1.0),
            "gpu_mem_used_gb": self._value(device_dir / "mem_info_vram_used", 1.0 / GIB),
            "gpu_power_w": self._value(power, 1e-6),
            "gpu_temp_c": self._value(self._hwmon_file("temp1_input"), 1e-3),
            "gpu_sm_clock_mhz": self._value(self._hwmon_file("freq1_input"), 1e-6),
            "gpu_energy_j": self._value(self._hwmon_file("energy1_input"), 1e-6),
        }
        self._metrics = _Metrics(queries, (FileNotFoundError, PermissionError))
        self.has_energy_counter = "gpu_energy_j" in self._metrics.read()

    def _hwmon_file(self, name: str) -> Path | None:
        path = self._hwmon / name if self._hwmon is not None else None
        return path if path is not None and path.exists() else None

    @staticmethod
    def _value(path: Path | None, scale: float) -> Callable[[], float | None]:
        def query() -> float | None:
            return None if path is None else float(_read(path)) * scale

        return query

    @staticmethod
    def devices(root: str | os.PathLike[str] = "/") -> list[tuple[Path, str, str | None]]:
        """``(device dir, pci address, unique id)`` of every amdgpu device, in PCI-address order."""
        found: dict[str, tuple[Path, str, str | None]] = {}
        for card in Path(root, "sys/class/drm").glob("card*"):
            device = card / "device"
            if "-" in card.name or not (device / "vendor").is_file():
                continue  # a connector (card0-DP-1), or not a PCI device
            with contextlib.suppress(OSError):
                if _read(device / "vendor").lower() != AMD_VENDOR:
                    continue
                bdf = _pci_address(device)
                unique = _read(device / "unique_id") if (device / "unique_id").is_file() else None
                found[bdf] = (device, bdf, unique)
        return [found[bdf] for bdf in sorted(found)]

    @classmethod
    def open(
        cls, device: TorchDevice, root: str | os.PathLike[str] = "/", env: Mapping[str, str] | None = None
    ) -> SysfsAMDBackend:
        devices = cls.devices(root)
        if not devices:
            raise BackendUnavailable(f"no amdgpu device under {Path(root, 'sys/class/drm')}")
        chosen = devices[pick([(bdf, unique) for _, bdf, unique in devices], device, env or os.environ)]
        backend = cls(chosen[0], f"AMD GPU {chosen[1]}")
        if not backend.read():
            raise BackendUnavailable(f"{chosen[0]}: no readable amdgpu metric (permissions?)")
        return backend

    def read(self) -> Reading:
        return self._metrics.read()

    def close(self) -> None:
        pass


def _pci_address(device: Path) -> str:
    """The device's PCI address: ``PCI_SLOT_NAME`` from its uevent, else the name its link points to."""
    with contextlib.suppress(OSError):
        for line in _read(device / "uevent").splitlines():
            if line.startswith("PCI_SLOT_NAME="):
                return line.split("=", 1)[1].strip()
    return device.resolve().name


# ---------------------------------------------------------------------------------------------- amdsmi
_init_lock = threading.Lock()
_init_count = 0


def _amdsmi() -> Any:
    try:
        import amdsmi
    except ImportError as err:
        raise BackendUnavailable("amdsmi is not installed (pip install amdsmi, from ROCm)") from err
    return amdsmi


def _classes(items: list[Any]) -> tuple[type[BaseException], ...]:
    return tuple(c for c in items if isinstance(c, type) and issubclass(c, BaseException))


def _number(value: Any) -> float | None:
    """amdsmi's numbers, or None for its ``"N/A"``."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class AMDSMIBackend:
    """One AMD GPU through amdsmi: ``amdsmi_get_gpu_activity`` (gfx_activity, %),
    ``amdsmi_get_gpu_vram_usage`` (vram_used, MB), ``amdsmi_get_power_info`` (socket power, W),
    ``amdsmi_get_temp_metric`` (edge, °C), ``amdsmi_get_clock_info`` (GFX clock, MHz) and
    ``amdsmi_get_energy_count`` (accumulator times counter_resolution, µJ)."""

    name = "amdsmi"

    def __init__(self, smi: Any, handle: Any, device_name: str) -> None:
        self._smi = smi
        self._handle = handle
        self.device_name = device_name
        queries: dict[str, Callable[[], float | None]] = {
            "gpu_util_pct": self._util,
            "gpu_mem_used_gb": self._memory,
            "gpu_power_w": self._power,
            "gpu_temp_c": self._temperature,
            "gpu_sm_clock_mhz": self._clock,
            "gpu_energy_j": self._energy,
        }
        errors = [getattr(smi, name, None) for name in ("AmdSmiLibraryException", "AmdSmiParameterException")]
        busy = [getattr(smi, name, None) for name in ("AmdSmiRetryException", "AmdSmiTimeoutException")]
        self._metrics = _Metrics(queries, _classes(errors), _classes(busy))
        self.has_energy_counter = "gpu_energy_j" in self._metrics.read()

    @classmethod
    def open(cls, device: TorchDevice, env: Mapping[str, str] | None = None) -> AMDSMIBackend:
        global _init_count
        smi = _amdsmi()
        with _init_lock:
            try:
                flags = getattr(getattr(smi, "AmdSmiInitFlags", None), "INIT_AMD_GPUS", None)
                smi.amdsmi_init(flags) if flags is not None else smi.amdsmi_init()
            except Exception as err:
                raise BackendUnavailable(f"amdsmi unavailable: {err}") from err
            _init_count += 1
        try:
            listed = []
            for handle in smi.amdsmi_get_processor_handles():
                bdf = str(smi.amdsmi_get_gpu_device_bdf(handle))
                unique = None
                with contextlib.suppress(Exception):
                    unique = str(smi.amdsmi_get_gpu_device_uuid(handle))
                listed.append((bdf, unique, handle))
            listed.sort(key=lambda item: item[0])
            if not listed:
                raise BackendUnavailable("amdsmi sees no AMD GPU")
            bdf, _, handle = listed[pick([(b, u) for b, u, _ in listed], device, env or os.environ)]
            name = f"AMD GPU {bdf}"
            with contextlib.suppress(Exception):
                name = str(smi.amdsmi_get_gpu_asic_info(handle)["market_name"]) or name
            return cls(smi, handle, name)
        except BaseException:
            _shutdown(smi)
            raise

    def _util(self) -> float | None:
        return _number(self._smi.amdsmi_get_gpu_activity(self._handle).get("gfx_activity"))

    def _memory(self) -> float | None:
        used = _number(self._smi.amdsmi_get_gpu_vram_usage(self._handle).get("vram_used"))
        return None if used is None else used * 2**20 / GIB

    def _power(self) -> float | None:
        info = self._smi.amdsmi_get_power_info(self._handle)
        for key in ("socket_power", "current_socket_power", "average_socket_power"):
            value = _number(info.get(key))
            if value is not None:
                return value
        return None

    def _temperature(self) -> float | None:
        smi = self._smi
        return _number(
            smi.amdsmi_get_temp_metric(
                self._handle, smi.AmdSmiTemperatureType.EDGE, smi.AmdSmiTemperatureMetric.CURRENT
            )
        )

    def _clock(self) -> float | None:
        smi = self._smi
        info = smi.amdsmi_get_clock_info(self._handle, smi.AmdSmiClkType.GFX)
        return _number(info.get("clk", info.get("cur_clk")))

    def _energy(self) -> float | None:
        count = self._smi.amdsmi_get_energy_count(self._handle)
        ticks = _number(count.get("energy_accumulator", count.get("power")))
        resolution = _number(count.get("counter_resolution"))
        return None if ticks is None or resolution is None else ticks * resolution * 1e-6

    def read(self) -> Reading:
        return self._metrics.read()

    def close(self) -> None:
        if self._smi is not None:
            _shutdown(self._smi)
            self._smi = None


def _shutdown(smi: Any) -> None:
    global _init_count
    with _init_lock:
        _init_count -= 1
        if _init_count <= 0:
            _init_count = 0
            with contextlib.suppress(Exception):
                smi.amdsmi_shut_down()
