"""TensorBoard backend: event files under ``<run_dir>/tensorboard`` (``/rank<N>`` for other ranks)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from itwinai_lightning.loggers.backends.base import Backend, RunContext


class TensorBoardBackend(Backend):
    """Scalars per step, hyperparameters as a text table, figures as images, text as text."""

    kind = "tensorboard"

    def __init__(
        self, subdir: str = "tensorboard", flush_secs: int = 30, ranks: str = "zero", name: str | None = None
    ):
        super().__init__(ranks, name)
        self.subdir = subdir
        self.flush_secs = flush_secs
        self._writer: Any = None

    @override
    def open(self, ctx: RunContext) -> None:
        from torch.utils.tensorboard import SummaryWriter

        path = ctx.path(self.subdir, f"rank{ctx.rank}") if ctx.rank else ctx.path(self.subdir)
        self.log_dir = str(path)
        self._writer = SummaryWriter(log_dir=self.log_dir, flush_secs=self.flush_secs)

    @override
    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "subdir": self.subdir}

    @override
    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp: float) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, global_step=step, walltime=timestamp or None)

    @override
    def log_params(self, params: Mapping[str, Any]) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(params.items()))
        self._writer.add_text("hparams", f"| key | value |\n|---|---|\n{rows}")

    @override
    def log_figure(self, name: str, path: str, step: int) -> None:
        import matplotlib.image

        image = matplotlib.image.imread(path)
        self._writer.add_image(name, image, global_step=step, dataformats="HWC")

    @override
    def log_text(self, key: str, text: str, step: int) -> None:
        self._writer.add_text(key, text, global_step=step)

    @override
    def close(self, status: str = "success") -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
