"""Fake sysfs trees under a temporary root: amdgpu cards and RAPL powercap zones, counters set by the test."""

from __future__ import annotations

from pathlib import Path


def _write(path: Path, value: object) -> Path:
    """Written whole (a reader never sees a half-written counter, as with the kernel's files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".new")
    partial.write_text(f"{value}\n")
    partial.replace(path)
    return path


class AmdCard:
    """``/sys/class/drm/card<N>/device`` of an amdgpu device; ``set(...)`` changes its readings."""

    def __init__(
        self, root: Path, card: int, bdf: str, unique_id: str | None = None, energy: bool = True
    ) -> None:
        self.device = root / "sys" / "class" / "drm" / f"card{card}" / "device"
        _write(self.device / "vendor", "0x1002")
        _write(self.device / "uevent", f"DRIVER=amdgpu\nPCI_CLASS=38000\nPCI_SLOT_NAME={bdf}")
        if unique_id is not None:
            _write(self.device / "unique_id", unique_id)
        connector = root / "sys" / "class" / "drm" / f"card{card}-DP-1"
        connector.mkdir(parents=True, exist_ok=True)  # not a device
        self.hwmon = self.device / "hwmon" / f"hwmon{card}"
        self.energy = energy
        self.set(busy_pct=0, vram_bytes=0, power_w=0.0, temp_c=30.0, sclk_mhz=800, energy_j=0.0)

    def set(
        self,
        busy_pct: float | None = None,
        vram_bytes: int | None = None,
        power_w: float | None = None,
        temp_c: float | None = None,
        sclk_mhz: float | None = None,
        energy_j: float | None = None,
    ) -> None:
        if busy_pct is not None:
            _write(self.device / "gpu_busy_percent", int(busy_pct))
        if vram_bytes is not None:
            _write(self.device / "mem_info_vram_used", vram_bytes)
        if power_w is not None:
            _write(self.hwmon / "power1_average", round(power_w * 1e6))
        if temp_c is not None:
            _write(self.hwmon / "temp1_input", round(temp_c * 1000))
        if sclk_mhz is not None:
            _write(self.hwmon / "freq1_input", round(sclk_mhz * 1e6))
        if energy_j is not None and self.energy:
            _write(self.hwmon / "energy1_input", round(energy_j * 1e6))


class RaplZone:
    """``/sys/class/powercap/intel-rapl:<path>`` with a name, an energy counter (µJ) and its wrap range."""

    def __init__(self, root: Path, path: str, name: str, max_range_uj: int = 262_143_328_850) -> None:
        self.dir = root / "sys" / "class" / "powercap" / f"intel-rapl:{path}"
        if ":" in path:  # a subzone lives inside its parent as in the kernel, and is linked at the top
            parent = root / "sys" / "class" / "powercap" / f"intel-rapl:{path.split(':')[0]}"
            self.dir = parent / f"intel-rapl:{path}"
        _write(self.dir / "name", name)
        _write(self.dir / "max_energy_range_uj", max_range_uj)
        self.set(0)

    def set(self, energy_uj: int) -> None:
        _write(self.dir / "energy_uj", energy_uj)


def cpu_topology(root: Path, packages: dict[int, int]) -> None:
    """``cpu<N>/topology/physical_package_id`` for each ``cpu -> package``."""
    for cpu, package in packages.items():
        topology = root / "sys" / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology"
        _write(topology / "physical_package_id", package)
