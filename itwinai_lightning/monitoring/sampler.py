"""A background sampler: reads device backends at a fixed interval and keeps running statistics per window.

Nothing here touches the training step: the thread wakes every ``interval_s``, reads every backend
(NVML / psutil: tens of microseconds), and updates running sums under a lock. ``cut(name)`` takes one
extra sample at the boundary, so consecutive windows partition the run's energy exactly.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from itwinai_lightning.monitoring.backends import DeviceBackend, Reading
from itwinai_lightning.monitoring.energy import JOULES_PER_WH, EnergyAccumulator

#: Readings that are averaged (and maxed) over a window. Counters (``gpu_energy_j``) are not.
AVERAGED = (
    "gpu_util_pct",
    "gpu_mem_used_gb",
    "gpu_power_w",
    "gpu_temp_c",
    "gpu_sm_clock_mhz",
    "cpu_util_pct",
    "host_mem_gb",
)


@dataclass
class _Stat:
    count: int = 0
    total: float = 0.0
    peak: float = -math.inf

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.peak = max(self.peak, value)


@dataclass
class _Window:
    started_at: float
    energy_start_j: float
    integrated_start_j: float
    cpu_energy_start_j: float = 0.0
    samples: int = 0
    stats: dict[str, _Stat] = field(default_factory=dict)


class Sampler:
    """Samples ``backends`` every ``interval_s`` seconds in a daemon thread (``start``/``stop``).

    ``open(name)`` starts a named window (e.g. ``"run"``, ``"epoch"``, ``"steps"``); ``cut(name)``
    samples once more, returns the window's summary and opens it again. A summary maps ``<metric>_mean`` and
    ``<metric>_max`` for each reading in :data:`AVERAGED`, plus ``energy_wh`` (counter or trapezoid, see
    :class:`EnergyAccumulator`), ``integrated_energy_wh``, ``samples`` and ``duration_s``; with a RAPL
    reader (``cpu_energy_j``) also ``cpu_energy_wh``. Metrics the backends never reported are absent;
    ``energy_wh`` is absent when no backend reports GPU power.
    """

    def __init__(
        self,
        backends: Sequence[DeviceBackend],
        interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.backends = list(backends)
        self.interval_s = interval_s
        self.clock = clock
        self.energy = EnergyAccumulator()  # the GPU's
        self.cpu_energy = EnergyAccumulator()  # RAPL's (a counter only)
        self.read_errors = 0
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading -----------------------------------------------------------------------------------
    def _read(self) -> Reading:
        reading: Reading = {}
        for backend in self.backends:
            try:
                reading.update(backend.read())
            except Exception:  # a flaky read is a missing sample, never a crashed run
                self.read_errors += 1
        return reading

    def sample_once(self) -> Reading:
        """Read all backends now and fold the reading into every open window."""
        with self._lock:
            reading = self._read()
            now = self.clock()
            self.energy.add(now, reading.get("gpu_power_w"), reading.get("gpu_energy_j"))
            self.cpu_energy.add(now, None, reading.get("cpu_energy_j"))
            for window in self._windows.values():
                window.samples += 1
                for key in AVERAGED:
                    value = reading.get(key)
                    if value is not None and math.isfinite(value):
                        window.stats.setdefault(key, _Stat()).add(value)
            return reading

    # -- windows -----------------------------------------------------------------------------------
    def open(self, name: str) -> None:
        with self._lock:
            self._windows[name] = self._new_window()

    def _new_window(self) -> _Window:
        return _Window(self.clock(), self.energy.energy_j, self.energy.integrated_j, self.cpu_energy.energy_j)

    def cut(self, name: str, reopen: bool = True) -> dict[str, float]:
        """Sample once, summarise window ``name`` (opening it now if it was not), and reopen it."""
        if name not in self._windows:
            self.open(name)
        self.sample_once()
        with self._lock:
            window = self._windows.pop(name)
            summary = self._summarise(window)
            if reopen:
                self._windows[name] = self._new_window()
        return summary

    def _summarise(self, window: _Window) -> dict[str, float]:
        out: dict[str, float] = {
            "samples": float(window.samples),
            "duration_s": self.clock() - window.started_at,
        }
        for key, stat in window.stats.items():
            if stat.count:
                base, unit = key.rsplit("_", 1)  # "gpu_power_w" -> gpu_power_mean_w, gpu_power_max_w
                out[f"{base}_mean_{unit}"] = stat.total / stat.count
                out[f"{base}_max_{unit}"] = stat.peak
        if self.energy.source != "none" or "gpu_power_mean_w" in out:
            out["energy_wh"] = (self.energy.energy_j - window.energy_start_j) / JOULES_PER_WH
            out["integrated_energy_wh"] = (
                self.energy.integrated_j - window.integrated_start_j
            ) / JOULES_PER_WH
        if self.cpu_energy.source != "none":
            out["cpu_energy_wh"] = (self.cpu_energy.energy_j - window.cpu_energy_start_j) / JOULES_PER_WH
        return out

    # -- thread ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self.sample_once()
        self._thread = threading.Thread(target=self._loop, name="itwinai-device-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval_s + 1)
            self._thread = None
        for backend in self.backends:
            with contextlib.suppress(Exception):
                backend.close()
