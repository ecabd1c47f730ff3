"""Model FLOPs of one training step, counted once with torch's ``FlopCounterMode`` (forward + backward).

The counter is a dispatch mode: entered before the step's forward, left after its backward; it slows
that one step, so the caller leaves that step out of its step times.
"""

from __future__ import annotations

from typing import Any


class FlopCount:
    """Counts one step: :meth:`start` before it, :meth:`stop` after its backward (or at its end)."""

    def __init__(self) -> None:
        self.per_sample: float | None = None
        self.disabled_reason: str | None = None
        self._mode: Any = None
        self._samples = 0
        self._stopped_this_step = False

    @property
    def wanted(self) -> bool:
        return self.per_sample is None and self.disabled_reason is None and self._mode is None

    def start(self, samples: int) -> None:
        try:
            from torch.utils.flop_counter import FlopCounterMode

            mode = FlopCounterMode(display=False)
            mode.__enter__()
        except Exception as err:  # an older torch or a mode conflict: no FLOPs, training goes on
            self.disabled_reason = str(err)
            return
        self._mode, self._samples = mode, samples

    def stop(self) -> None:
        """Leave the counter (idempotent); the count becomes FLOPs per sample."""
        mode, self._mode = self._mode, None
        if mode is None:
            return
        mode.__exit__(None, None, None)
        self._stopped_this_step = True
        total = float(mode.get_total_flops())
        if total > 0 and self._samples:
            self.per_sample = total / self._samples
        else:
            self.disabled_reason = "nothing countable (no matmul or convolution)"

    def end_of_step(self) -> bool:
        """At the end of a step: stop if still counting; True when this step ran under the counter."""
        self.stop()
        counted, self._stopped_this_step = self._stopped_this_step, False
        return counted
