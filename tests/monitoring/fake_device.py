"""A scripted device behind the DeviceBackend interface (NVML cannot run without a GPU)."""

from __future__ import annotations

from collections.abc import Callable

from itwinai_lightning.monitoring.backends import Reading


class Clock:
    """A settable clock for the sampler and the device: ``clock.t = 12.5``."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class ScriptedDevice:
    """Reports ``power(t)`` watts at the clock's time, with an optional cumulative energy counter.

    ``counter``: report ``gpu_energy_j`` = exact integral of the curve since ``t0`` (minus what was
    accumulated before ``reset_at``, to imitate a counter reset). ``missing``: times at which the read
    returns nothing; ``failing``: times at which it raises.
    """

    name = "scripted"
    device_name = "Scripted GPU"

    def __init__(
        self,
        clock: Callable[[], float],
        power: Callable[[float], float],
        energy: Callable[[float], float] | None = None,
        reset_at: float | None = None,
        missing: frozenset[float] = frozenset(),
        failing: frozenset[float] = frozenset(),
        util: Callable[[float], float] = lambda t: 50.0,
    ) -> None:
        self.clock, self.power, self.energy = clock, power, energy
        self.reset_at, self.missing, self.failing, self.util = reset_at, missing, failing, util
        self.closed = False
        self.reads = 0

    def read(self) -> Reading:
        self.reads += 1
        t = self.clock()
        if t in self.failing:
            raise RuntimeError("scripted read failure")
        if t in self.missing:
            return {}
        out: Reading = {"gpu_power_w": self.power(t), "gpu_util_pct": self.util(t)}
        if self.energy is not None:
            joules = self.energy(t)
            if self.reset_at is not None and t >= self.reset_at:
                joules -= self.energy(self.reset_at) - 1.0  # counter restarted just before reset_at
            out["gpu_energy_j"] = joules
        return out

    def close(self) -> None:
        self.closed = True
