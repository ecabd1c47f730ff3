"""Weights & Biases backend: offline by default (compute nodes rarely reach the internet)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from itwinai_lightning.loggers.backends.base import Backend, RunContext

STEP_KEY = "trainer/global_step"


class WandbBackend(Backend):
    """Metrics against ``trainer/global_step`` (so replayed or out-of-order steps are kept), config, files.

    Files go under ``<run_dir>/wandb/``; ``mode`` defaults to ``$WANDB_MODE`` or ``offline``
    (``wandb sync <run_dir>/wandb/offline-run-*`` uploads them later from a node with internet).
    """

    kind = "wandb"

    def __init__(
        self,
        project: str | None = None,
        entity: str | None = None,
        mode: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        ranks: str = "zero",
        name: str | None = None,
    ) -> None:
        super().__init__(ranks, name)
        self.project = project
        self.entity = entity
        self.mode = mode
        self.group = group
        self.tags = list(tags or [])
        self.run_id: str | None = None
        self._run: Any = None

    @override
    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "project": self.project, "entity": self.entity, "mode": self.mode,
                "group": self.group, "tags": self.tags}  # fmt: skip

    @override
    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    @override
    def resume(self, state: Mapping[str, Any]) -> None:
        self.run_id = state.get("run_id") or None

    @override
    def open(self, ctx: RunContext) -> None:
        from itwinai_lightning.errors import require

        os.environ.setdefault("WANDB_SILENT", "true")  # wandb.save's "Symlinked 1 file" and the like
        wandb = require("wandb", "wandb")
        directory = ctx.path()
        directory.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True)
        self._run = wandb.init(
            project=self.project or ctx.experiment,
            entity=self.entity,
            name=ctx.run_name,
            group=self.group or (ctx.run_name.split("-rank")[0] if ctx.world_size > 1 else None),
            tags=self.tags,
            dir=str(directory),
            mode=self.mode or os.environ.get("WANDB_MODE") or "offline",
            id=self.run_id,
            resume="allow" if self.run_id else None,
            reinit="create_new",
            settings=settings,
            config={"itwinai.rank": ctx.rank},
        )
        self.run_id = self._run.id
        self._run.define_metric(STEP_KEY)
        self._run.define_metric("*", step_metric=STEP_KEY)

    @override
    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp: float) -> None:
        self._run.log({**metrics, STEP_KEY: step})

    @override
    def log_params(self, params: Mapping[str, Any]) -> None:
        self._run.config.update(dict(params), allow_val_change=True)

    @override
    def log_artifact(self, path: str, name: str | None = None) -> None:
        if os.path.exists(path):
            self._run.save(path, base_path=os.path.dirname(path), policy="end")

    @override
    def log_figure(self, name: str, path: str, step: int) -> None:
        import wandb

        self._run.log({name: wandb.Image(path), STEP_KEY: step})

    @override
    def log_text(self, key: str, text: str, step: int) -> None:
        self._run.log({key: text, STEP_KEY: step})

    @override
    def close(self, status: str = "success") -> None:
        if self._run is not None:
            self._run.finish(exit_code=0 if status == "success" else 1)
