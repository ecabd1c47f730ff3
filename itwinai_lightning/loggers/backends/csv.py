"""CSV backend: long-format ``metrics.csv`` (step, key, value, time) and ``hparams.json`` in the run dir."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from itwinai_lightning.loggers.backends.base import Backend, RunContext


class CSVBackend(Backend):
    """One row per metric point (long format, so new metric names never rewrite the header)."""

    kind = "csv"

    def __init__(self, filename: str = "metrics.csv", ranks: str = "zero", name: str | None = None) -> None:
        super().__init__(ranks, name)
        self.filename = filename
        self._fh: Any = None
        self._writer: Any = None

    @override
    def open(self, ctx: RunContext) -> None:
        name = self.filename if not ctx.rank else self.filename.replace(".csv", f".rank{ctx.rank}.csv")
        self.path = ctx.path(name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a file left empty (a tracking process killed before its first flush) still needs the header
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._fh = self.path.open("a", newline="")
        self._writer = csv.writer(self._fh)
        if new:
            self._writer.writerow(["step", "key", "value", "time"])
            self._fh.flush()  # readers polling the file see the header before any row

    @override
    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "filename": self.filename}

    @override
    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp: float) -> None:
        for key, value in metrics.items():
            self._writer.writerow([step, key, repr(float(value)), f"{timestamp:.3f}"])

    @override
    def log_params(self, params: Mapping[str, Any]) -> None:
        assert self.ctx is not None
        path = self.path.with_name(
            "hparams.json" if not self.ctx.rank else f"hparams.rank{self.ctx.rank}.json"
        )
        old = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**old, **params}, indent=2, default=str))

    @override
    def write(self, batch: Any) -> None:
        super().write(batch)
        self._fh.flush()

    @override
    def close(self, status: str = "success") -> None:
        if self._fh is not None:
            self._fh.close()
