"""A fitted scaling model: epoch time as a compute term that shrinks with N plus a communication term.

Strong scaling (fixed global batch, fixed data set)::

    T(N) = a / N  +  b * log2(N) * [N > 1]  +  c

``a`` is the parallelisable compute (seconds of one worker's epoch), ``b`` the cost of one tree-like
all-reduce level per epoch (``log2 N`` levels), ``c`` the serial part (start-up, validation, I/O).

Weak scaling (fixed per-worker batch): every step has the same compute and the number of steps per epoch
falls as 1/N, so the communication cost is divided by N too::

    T(N) = a / N  +  b * log2(N) * [N > 1] / N  +  c

The three coefficients are fitted by non-negative least squares (a negative compute or communication
time has no meaning). With fewer distinct sizes than coefficients the constant ``c`` is fixed at 0 and
the fit is flagged ``underdetermined``. Predictions beyond the largest measured size are extrapolation.

Uncertainty: the fit is repeated on :data:`BOOTSTRAP` residual-bootstrap samples (residuals scaled by
``sqrt(n / (n - p))`` for the ``p`` fitted coefficients); :meth:`ScalingModel.band` is the central
:data:`BAND_LEVEL` interval of their predictions. With no more points than coefficients there are no
residuals to resample and the model says so (``band_note``) instead of drawing a band of zero width.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

MODES = ("strong", "weak")
TERMS = ("compute", "communication", "serial")
#: the report fits a model only to series measured at this many distinct worker counts (3 coefficients)
MIN_SIZES = 3
#: residual-bootstrap refits behind the uncertainty band (seeded: the same records give the same band)
BOOTSTRAP = 200
BAND_LEVEL = 0.9


def basis(workers: Sequence[float] | np.ndarray, mode: str = "strong") -> np.ndarray:
    """Design matrix with columns (compute, communication, serial) for worker counts ``workers``."""
    if mode not in MODES:
        raise ValueError(f"scaling mode must be one of {MODES}, got {mode!r}")
    n = np.asarray(workers, dtype=float)
    if np.any(n < 1):
        raise ValueError("worker counts must be >= 1")
    comm = np.where(n > 1, np.log2(n), 0.0)
    if mode == "weak":
        comm = comm / n
    return np.column_stack([1.0 / n, comm, np.ones_like(n)])


def nnls_small(a: np.ndarray, y: np.ndarray, allowed: Sequence[int]) -> np.ndarray:
    """Exact non-negative least squares for a handful of columns: best feasible solution over all subsets."""
    best: np.ndarray | None = None
    best_res = math.inf
    cols = list(allowed)
    for k in range(len(cols), 0, -1):
        for subset in itertools.combinations(cols, k):
            sub = a[:, list(subset)]
            coef, *_ = np.linalg.lstsq(sub, y, rcond=None)
            if np.any(coef < -1e-12):
                continue
            res = float(np.sum((sub @ coef - y) ** 2))
            if best is None or res < best_res * (1 - 1e-12):
                full = np.zeros(a.shape[1])
                full[list(subset)] = np.clip(coef, 0.0, None)
                best, best_res = full, res
    return best if best is not None else np.zeros(a.shape[1])


@dataclass(frozen=True)
class ScalingModel:
    """``T(N) = compute * f(N) + communication * g(N) + serial`` (seconds per epoch); see module doc."""

    compute: float
    communication: float
    serial: float
    mode: str = "strong"
    measured_workers: tuple[int, ...] = field(default_factory=tuple)
    r2: float = float("nan")
    rmse_s: float = float("nan")
    underdetermined: bool = False
    samples: tuple[tuple[float, float, float], ...] = ()  # bootstrap coefficients
    band_note: str = ""  # why there is no band, when there is none

    @property
    def max_measured(self) -> int:
        return max(self.measured_workers) if self.measured_workers else 1

    def predict(self, workers: Sequence[float] | np.ndarray | float) -> np.ndarray:
        n = np.atleast_1d(np.asarray(workers, dtype=float))
        return basis(n, self.mode) @ np.array([self.compute, self.communication, self.serial])

    def band(
        self, workers: Sequence[float] | np.ndarray | float, level: float = BAND_LEVEL
    ) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper edge of the central ``level`` interval of the bootstrap predictions (s)."""
        n = np.atleast_1d(np.asarray(workers, dtype=float))
        if not self.samples:
            point = self.predict(n)
            return point, point
        preds = basis(n, self.mode) @ np.asarray(self.samples, dtype=float).T
        tail = 100.0 * (1.0 - level) / 2.0
        return np.percentile(preds, tail, axis=1), np.percentile(preds, 100.0 - tail, axis=1)

    def is_extrapolation(self, workers: float) -> bool:
        return workers > self.max_measured

    def optimal_workers(self) -> float | None:
        """Worker count where predicted epoch time is lowest (strong scaling); None if it keeps falling."""
        if self.mode != "strong" or self.communication <= 0:
            return None
        # d/dN (a/N + b log2 N) = 0  ->  N* = a ln 2 / b
        return max(1.0, self.compute * math.log(2) / self.communication)

    def formula(self) -> str:
        comm = "log2(N)" if self.mode == "strong" else "log2(N)/N"
        return f"T(N) = {self.compute:.4g}/N + {self.communication:.4g}*{comm} + {self.serial:.4g}  [s/epoch]"

    def as_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "compute_s": self.compute,
            "communication_s": self.communication,
            "serial_s": self.serial,
            "r2": self.r2,
            "rmse_s": self.rmse_s,
            "underdetermined": self.underdetermined,
            "measured_workers": list(self.measured_workers),
            "optimal_workers": self.optimal_workers(),
            "formula": self.formula(),
            **self._extrapolated(),
        }

    def _extrapolated(self) -> dict[str, object]:
        """The prediction at twice the largest measured size, with its band (or why there is none)."""
        at = 2 * self.max_measured
        lo, hi = self.band([at])
        return {
            "extrapolated_workers": at,
            "extrapolated_s": float(self.predict([at])[0]),
            "extrapolated_band_s": [float(lo[0]), float(hi[0])] if self.samples else None,
            "band_note": self.band_note,
        }


def fit(workers: Sequence[float], times_s: Sequence[float], mode: str = "strong") -> ScalingModel:
    """Fit the model to measured (worker count, epoch time) points; repetitions may repeat a size."""
    n = np.asarray(workers, dtype=float)
    y = np.asarray(times_s, dtype=float)
    keep = np.isfinite(n) & np.isfinite(y) & (n >= 1)
    n, y = n[keep], y[keep]
    if n.size == 0:
        raise ValueError("no measured points to fit")
    a = basis(n, mode)
    distinct = len(set(n.tolist()))
    underdetermined = distinct < 3
    allowed = [0, 1, 2] if not underdetermined else ([0, 1] if distinct == 2 else [0])
    coef = nnls_small(a, y, allowed)
    pred = a @ coef
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res < 1e-18 else 0.0)
    samples: list[tuple[float, float, float]] = []
    note = ""
    if n.size <= len(allowed):
        note = f"{n.size} points for {len(allowed)} coefficients: no residuals, no band; repeat the runs"
    else:
        rng = np.random.default_rng(0)
        resid = (y - pred) * math.sqrt(n.size / (n.size - len(allowed)))
        for _ in range(BOOTSTRAP):
            c = nnls_small(a, pred + rng.choice(resid, size=n.size, replace=True), allowed)
            samples.append((float(c[0]), float(c[1]), float(c[2])))
    return ScalingModel(
        compute=float(coef[0]),
        communication=float(coef[1]),
        serial=float(coef[2]),
        mode=mode,
        measured_workers=tuple(sorted({int(v) for v in n.tolist()})),
        r2=r2,
        rmse_s=math.sqrt(ss_res / n.size),
        underdetermined=underdetermined,
        samples=tuple(samples),
        band_note=note,
    )


def extrapolation_sizes(max_measured: int, factor: int = 4) -> list[int]:
    """Powers of two from 1 to ``factor`` x the largest measured size (the curve drawn in the report)."""
    top = max(2, max_measured * factor)
    sizes = [2**k for k in range(int(math.log2(top)) + 1)]
    return sorted({*sizes, max_measured})
