"""Save the resolved config (secrets redacted) into the run directory and the RunRecord."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from typing_extensions import override

from itwinai_lightning import records
from itwinai_lightning.launch import placement
from itwinai_lightning.records import store
from itwinai_lightning.secrets import redact


class RecordingSaveConfigCallback(SaveConfigCallback):
    """Writes ``<run_dir>/config.yaml`` (redacted) and the RunRecord's ``config`` section, on rank 0.

    At setup every rank reports its host and launch context
    (:mod:`itwinai_lightning.launch.placement`), so the
    record's ``hostnames``, ``num_nodes``, ``devices_per_node`` and ``launcher`` are what really ran.
    The config and record of a ``validate``/``test``/``predict`` run are files of their own
    (``config.<stage>.yaml``, ``run_record.<stage>.json``): they never replace the fit's.

    Unlike Lightning's, it never writes secrets to disk and does not depend on a logger's ``log_dir``:
    the run directory is ``trainer.default_root_dir``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)

    def resolved_config(self) -> dict[str, Any]:
        text = self.parser.dump(self.config, skip_none=False, skip_check=True)
        loaded = yaml.safe_load(text) or {}
        return redact(loaded)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        placement.of(trainer)  # every rank takes part, before rank 0 writes the record
        super().setup(trainer, pl_module, stage)

    @override
    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from itwinai_lightning.records.writer import stage_of

        stage = stage_of(trainer)  # Lightning passes an enum member here
        config = self.resolved_config()
        run_dir = records.run_dir_of(trainer)
        run_dir.mkdir(parents=True, exist_ok=True)
        if stage == "fit":  # an earlier finished fit's record and config are kept, and that is said
            note = store.archive_finished_fit(run_dir, companions=(self.config_filename,))
            if note:
                print(f"itwinai-lightning: note: {note}", file=sys.stderr, flush=True)
        Path(run_dir, store.stage_file(self.config_filename, stage)).write_text(
            yaml.safe_dump(config, sort_keys=False)
        )
        records.contribute(trainer, fields={"config": config, "stage": stage})
