"""Energy from a device: a cumulative hardware counter where the device has one, else the trapezoidal
integral of power over the real sample timestamps. Robust to counter resets and missing samples.

Units: timestamps in seconds, power in watts, counters in joules, results in watt-hours (Wh).
"""

from __future__ import annotations

from dataclasses import dataclass

JOULES_PER_WH = 3600.0


@dataclass
class EnergyAccumulator:
    """Running energy of one device, fed one sample at a time (``add``).

    For each interval between two consecutive *valid* samples:

    * ``counter_j`` on both ends and not decreasing -> the counter delta (exact);
    * otherwise (no counter, a counter reset/wrap, a counter read that failed) -> the trapezoid
      ``(p0 + p1) / 2 * (t1 - t0)`` when both ends have a power reading;
    * otherwise the interval contributes nothing and is counted in ``skipped_intervals``.

    A sample whose power and counter are both missing is ignored: the next interval simply spans the gap,
    so a missing sample never adds or loses the energy of the time around it (the trapezoid over the real
    timestamps is exact for a power curve that is linear between the surrounding samples).
    ``integrated_j`` always holds the pure trapezoid, for comparing with the counter.
    """

    energy_j: float = 0.0
    integrated_j: float = 0.0
    counter_intervals: int = 0
    integrated_intervals: int = 0
    skipped_intervals: int = 0
    counter_resets: int = 0
    _t: float | None = None
    _power_w: float | None = None
    _counter_j: float | None = None

    def add(self, t: float, power_w: float | None = None, counter_j: float | None = None) -> None:
        if power_w is None and counter_j is None:
            return
        if self._t is not None and t > self._t:
            dt = t - self._t
            trapezoid = None
            if power_w is not None and self._power_w is not None:
                trapezoid = 0.5 * (power_w + self._power_w) * dt
                self.integrated_j += trapezoid
            if counter_j is not None and self._counter_j is not None and counter_j >= self._counter_j:
                self.energy_j += counter_j - self._counter_j
                self.counter_intervals += 1
            else:
                if counter_j is not None and self._counter_j is not None:
                    self.counter_resets += 1
                if trapezoid is not None:
                    self.energy_j += trapezoid
                    self.integrated_intervals += 1
                else:
                    self.skipped_intervals += 1
        elif self._t is not None:
            return  # a timestamp that does not advance carries no energy; keep the earlier sample
        self._t, self._power_w, self._counter_j = t, power_w, counter_j

    @property
    def energy_wh(self) -> float:
        return self.energy_j / JOULES_PER_WH

    @property
    def integrated_wh(self) -> float:
        return self.integrated_j / JOULES_PER_WH

    @property
    def source(self) -> str:
        """``counter``, ``integrated``, ``mixed`` or ``none``: where ``energy_wh`` came from."""
        if self.counter_intervals and self.integrated_intervals:
            return "mixed"
        if self.counter_intervals:
            return "counter"
        if self.integrated_intervals:
            return "integrated"
        return "none"
