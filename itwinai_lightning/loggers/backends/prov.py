"""yProv4ML backend: PROV-JSON per rank under ``<run_dir>/prov/rank<N>/``."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from itwinai_lightning.loggers.backends.base import Backend, RunContext


def _label(text: str) -> str:
    """A PROV identifier: no ':' (read as a namespace prefix) or other punctuation."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


class ProvBackend(Backend):
    """Params, per-step metrics with context, checkpoints/config as artifacts, environment."""

    kind = "prov"

    def __init__(
        self,
        namespace: str | None = None,
        create_graph: bool = False,
        subdir: str = "prov",
        ranks: str = "all",
        name: str | None = None,
    ) -> None:
        super().__init__(ranks, name)
        self.namespace = namespace
        self.create_graph = create_graph
        self.subdir = subdir
        self._session: Any = None
        self.prov_json: str | None = None

    @override
    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "namespace": self.namespace,
            "create_graph": self.create_graph,
            "subdir": self.subdir,
        }

    @override
    def open(self, ctx: RunContext) -> None:
        from itwinai_lightning.loggers.prov_session import ProvSession, environment_params

        self._session = ProvSession(
            ctx.path(self.subdir, f"rank{ctx.rank}"), ctx.experiment, ctx.rank, self.namespace
        )
        self._session.start()
        self.log_params(ctx.extra.get("environment") or environment_params())
        config = ctx.path("config.yaml")
        if config.exists():
            self._prov().log_artifact("config", str(config), is_input=True, log_copy_in_prov_directory=False)

    @staticmethod
    def _prov() -> Any:
        import yprov4ml

        return yprov4ml

    @override
    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp: float) -> None:
        from itwinai_lightning.loggers.prov_session import metric_context

        prov = self._prov()
        for key, value in metrics.items():
            # yProv4ML names a file after the metric: "monitor/energy_wh" would be a missing directory
            prov.log_metric(_label(key), float(value), context=metric_context(key), step=step)

    @override
    def log_params(self, params: Mapping[str, Any]) -> None:
        prov = self._prov()
        for key, value in params.items():
            prov.log_param(key, value if isinstance(value, int | float | str) else str(value))

    @override
    def log_artifact(self, path: str, name: str | None = None) -> None:
        if os.path.exists(path):
            label = _label(name or os.path.basename(path))
            self._prov().log_artifact(label, path, log_copy_in_prov_directory=False)

    @override
    def log_checkpoint(self, path: str, score: float | None, monitor: str | None) -> None:
        if os.path.exists(path):
            label = _label(f"checkpoint_{os.path.basename(path)}")
            self._prov().log_artifact(label, path, log_copy_in_prov_directory=False, is_model=True)
            if score is not None and monitor:
                self._prov().log_param(f"{label}.{monitor}", float(score))

    @override
    def log_text(self, key: str, text: str, step: int) -> None:
        self._prov().log_param(f"text.{key}.{step}", text[:2000])

    @override
    def close(self, status: str = "success") -> None:
        if self._session is not None:
            path = self._session.close(create_graph=self.create_graph)
            self.prov_json = str(path) if path else None
