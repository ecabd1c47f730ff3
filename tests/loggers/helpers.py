"""Test-only pieces: a model whose config carries secrets, a backend that always raises, a slow one."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from itwinai_lightning.demo import SpectrogramDenoiser
from itwinai_lightning.loggers.backends import Backend, RunContext


class KeyedDenoiser(SpectrogramDenoiser):
    """The demo model with an ``api_key`` and a nested ``service.password`` in its hyperparameters."""

    def __init__(
        self,
        width: int = 8,
        depth: int = 2,
        lr: float = 1e-3,
        optimizer: str = "adam",
        api_key: str = "",
        service: dict | None = None,
    ) -> None:
        super().__init__(width=width, depth=depth, lr=lr, optimizer=optimizer)
        self.save_hyperparameters()


class ExplodingBackend(Backend):
    """Raises on every call, including open: stands for a backend whose server is gone."""

    kind = "exploding"

    def __init__(self, ranks: str = "zero", name: str | None = None) -> None:
        super().__init__(ranks, name)
        self.calls = 0

    def open(self, ctx: RunContext) -> None:
        self.calls += 1
        raise ConnectionError("tracking server unreachable")

    def write(self, batch: Any) -> None:
        self.calls += 1
        raise ConnectionError("tracking server unreachable")


class SlowBackend(Backend):
    """Takes ``delay_s`` per batch and keeps what it got (to check order and completeness)."""

    kind = "slow"

    def __init__(self, delay_s: float = 0.05, ranks: str = "zero", name: str | None = None) -> None:
        super().__init__(ranks, name)
        self.delay_s = delay_s
        self.metrics: list[tuple[int, dict[str, float]]] = []

    def write(self, batch: Any) -> None:
        time.sleep(self.delay_s)
        super().write(batch)

    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp: float) -> None:
        self.metrics.append((step, dict(metrics)))


class FlakyBackend(SlowBackend):
    """Raises on its first ``failures`` writes, then works: the automatic retry must deliver everything."""

    kind = "flaky"

    def __init__(self, failures: int = 3, ranks: str = "zero", name: str | None = None) -> None:
        super().__init__(delay_s=0.0, ranks=ranks, name=name)
        self.failures = failures

    def write(self, batch: Any) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise TimeoutError("server busy")
        super().write(batch)


def ddp_prov_main(run_dir: str) -> None:
    """Entry for a 2-rank torchrun run with a ProvenanceLogger (all ranks) and a rank-0 CSV backend."""
    import lightning.pytorch as pl

    from itwinai_lightning.demo import SpectrogramDataModule
    from itwinai_lightning.loggers import MultiLogger

    logger = MultiLogger(
        backends=[{"type": "prov", "ranks": "all"}, "csv"], experiment="ddp", flush_timeout_s=120
    )
    trainer = pl.Trainer(
        default_root_dir=run_dir, max_epochs=1, logger=logger, log_every_n_steps=1, accelerator="cpu",
        devices=2, strategy="ddp", enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(
        SpectrogramDenoiser(width=8, depth=2),
        SpectrogramDataModule(num_samples=64, val_samples=16, batch_size=8),
    )


if __name__ == "__main__":
    import sys

    ddp_prov_main(sys.argv[1])


class PidBackend(Backend):
    """Writes the process id and thread name it runs in to ``<run_dir>/pid_<name>.txt`` when it opens."""

    kind = "pid"

    def open(self, ctx: RunContext) -> None:
        import os
        import threading

        ctx.path(f"pid_{self.name}.txt").write_text(f"{os.getpid()} {threading.current_thread().name}")
