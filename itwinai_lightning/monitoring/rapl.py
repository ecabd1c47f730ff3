"""CPU energy from RAPL through Linux powercap (``/sys/class/powercap/intel-rapl:*``; recent AMD EPYC and
Ryzen expose their RAPL counters there too).

Which sockets: the packages this rank's cores sit on (its CPU affinity and each core's
``topology/physical_package_id``). Ranks that share a socket must not count it twice: :func:`owners` gives
each socket of a node to the lowest rank that runs on it, and only that rank reads it. Per socket the
``package-N`` domain and its ``dram`` subdomain are read (``core``/``uncore`` are parts of the package and
are not added). A counter wraps at ``max_energy_range_uj``; the reader adds the wrap back, so
``cpu_energy_j`` never goes backwards. Counters that cannot be read (no powercap in a VM, root-only
``energy_uj`` since Linux 5.10 on many systems) raise :class:`BackendUnavailable` with the reason; the
record carries it instead of a zero.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from itwinai_lightning.monitoring.device import BackendUnavailable, Reading

_PACKAGE = re.compile(r"^package-(\d+)")


def rank_packages(root: str | os.PathLike[str] = "/", cpus: Iterable[int] | None = None) -> set[int]:
    """The CPU packages (sockets) the given cores (default: this process's affinity) sit on."""
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    packages = set()
    for cpu in cpus:
        path = Path(root, f"sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id")
        with contextlib.suppress(OSError, ValueError):
            packages.add(int(path.read_text().strip()))
    return packages


def host_key(host: str) -> int:
    """A 52-bit number naming a host: exact in the float64 the ranks gather it in."""
    return int.from_bytes(hashlib.sha256(host.encode()).digest()[:8], "big") >> 12


def owners(rows: Sequence[tuple[int, set[int]]]) -> list[set[int]]:
    """Per rank (``rows[rank] = (host key, its packages)``) the packages it reads: each (host, package) by
    the lowest rank on that host whose cores sit on it."""
    claimed: set[tuple[int, int]] = set()
    out: list[set[int]] = []
    for host, packages in rows:
        mine = {p for p in sorted(packages) if (host, p) not in claimed}
        claimed.update((host, p) for p in mine)
        out.append(mine)
    return out


@dataclass
class _Domain:
    name: str  # "package-0", "package-0/dram"
    energy: Path
    max_range_uj: int
    last_uj: int
    total_uj: int = 0
    wraps: int = 0

    def advance(self) -> None:
        now = int(self.energy.read_text().strip())
        delta = now - self.last_uj
        if delta < 0:  # wrapped at max_energy_range_uj
            delta += self.max_range_uj
            self.wraps += 1
        self.total_uj += delta
        self.last_uj = now


class RaplBackend:
    """``cpu_energy_j``: joules since open of the package and DRAM domains of ``packages`` (cumulative).

    Attributes: ``domains`` (names read), ``packages``, ``wraps`` (counter wrap-arounds seen).
    """

    name = "rapl"

    def __init__(self, domains: list[_Domain], packages: set[int]) -> None:
        self._domains = domains
        self.packages = packages
        self.device_name = "RAPL " + ", ".join(d.name for d in domains)

    @property
    def domains(self) -> list[str]:
        return [d.name for d in self._domains]

    @property
    def wraps(self) -> int:
        return sum(d.wraps for d in self._domains)

    @classmethod
    def open(cls, packages: set[int], root: str | os.PathLike[str] = "/") -> RaplBackend:
        base = Path(root, "sys/class/powercap")
        zones = sorted(base.glob("intel-rapl:*")) if base.is_dir() else []
        tops = [z for z in zones if z.name.count(":") == 1]
        if not tops:
            raise BackendUnavailable(
                f"no RAPL powercap zones under {base} (a VM, or a CPU/kernel without RAPL powercap)"
            )
        domains: list[_Domain] = []
        for zone in tops:
            match = _PACKAGE.match(_text(zone / "name") or "")
            if match is None or int(match.group(1)) not in packages:
                continue
            domains.append(_domain(zone, f"package-{match.group(1)}"))
            for sub in sorted(zone.glob(f"{zone.name}:*")):
                if _text(sub / "name") == "dram":
                    domains.append(_domain(sub, f"package-{match.group(1)}/dram"))
        if not domains:
            raise BackendUnavailable(f"no RAPL package zone for socket(s) {sorted(packages)} under {base}")
        return cls(domains, packages)

    def read(self) -> Reading:
        for domain in self._domains:
            domain.advance()
        return {"cpu_energy_j": sum(d.total_uj for d in self._domains) * 1e-6}

    def close(self) -> None:
        pass


def _text(path: Path) -> str | None:
    with contextlib.suppress(OSError):
        return path.read_text().strip()
    return None


def _domain(zone: Path, name: str) -> _Domain:
    energy = zone / "energy_uj"
    try:
        first = int(energy.read_text().strip())
        max_range = int((zone / "max_energy_range_uj").read_text().strip())
    except PermissionError:
        raise BackendUnavailable(
            f"{energy} is not readable by this user (RAPL counters are root-only on this system)"
        ) from None
    except (OSError, ValueError) as err:
        raise BackendUnavailable(f"{energy}: {err}") from None
    return _Domain(name, energy, max_range, first)
