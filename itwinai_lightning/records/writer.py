"""Recording inside a Trainer: each stage's :class:`~.recorder.Recorder`, :func:`contribute`, and the
:class:`RecordWriter` callback that flushes it.

Callbacks (and the CLI's config saver) call :func:`contribute` on every rank; global rank 0's recorder
merges the figures in memory. :class:`RecordWriter` writes the record atomically at the end of each
training epoch and at the end of the stage (its end, an exception, teardown). The CLI installs the writer
last; a plain ``Trainer`` gets one from the first :func:`contribute` (appended to ``trainer.callbacks``),
so the monitoring callbacks work in any Trainer.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from itwinai_lightning import per_trainer
from itwinai_lightning.records.facts import describe_trainer
from itwinai_lightning.records.recorder import Recorder

if TYPE_CHECKING:
    import lightning.pytorch as pl

#: Trainer attribute holding ``{stage: Recorder}``.


def stage_of(trainer: pl.Trainer) -> str:
    fn = getattr(getattr(trainer, "state", None), "fn", None)
    value = getattr(fn, "value", None)
    return str(value) if value in ("fit", "validate", "test", "predict") else "fit"


def recorder_of(trainer: pl.Trainer) -> Recorder:
    """This Trainer's recorder for its current stage (created on first use; rank 0 only writes)."""
    stage = stage_of(trainer)
    recorders: dict[str, Recorder] = per_trainer.get(trainer, per_trainer.RECORDERS) or {}
    if stage not in recorders:
        recorders[stage] = Recorder(Path(trainer.default_root_dir), stage)
        per_trainer.put(trainer, per_trainer.RECORDERS, recorders)
        callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
        if not any(isinstance(cb, RecordWriter) for cb in callbacks):
            callbacks.append(RecordWriter())  # a plain Trainer: its hooks run from now on
    return recorders[stage]


def contribute(
    trainer: pl.Trainer,
    *,
    summary: Mapping[str, Any] | None = None,
    epoch: int | None = None,
    epoch_values: Mapping[str, Any] | None = None,
    section: str | None = None,
    section_values: Mapping[str, Any] | None = None,
    fields: Mapping[str, Any] | None = None,
) -> None:
    """Merge figures into this run's record in memory. Call on every rank; only global rank 0 keeps them."""
    if trainer.global_rank != 0:
        return
    merged = {**describe_trainer(trainer), "stage": stage_of(trainer), **(fields or {})}
    recorder_of(trainer).contribute(
        fields=merged,
        summary=summary,
        epoch=epoch,
        epoch_values=epoch_values,
        section=section,
        section_values=section_values,
    )


def end_fields(exception: BaseException | None = None) -> dict[str, Any] | None:
    """The record's ``status`` and ``error`` at the end of a stage: ``completed``; ``interrupted`` (Ctrl-C,
    or ``SystemExit``: a stop asked of the process, e.g. Ray Tune ending a trial) or ``failed``, each with
    the exception's message, secrets redacted. ``None`` when the run goes on in another process (an
    exception with ``run_continues = True``, e.g. a SLURM requeue exit): the record stays ``running``, so
    the resumed job adopts it instead of starting anew."""
    if exception is None:
        return {"status": "completed", "error": None}
    if getattr(exception, "run_continues", False):
        return None
    from itwinai_lightning.secrets import redact

    status = "interrupted" if isinstance(exception, (KeyboardInterrupt, SystemExit)) else "failed"
    return {"status": status, "error": redact(f"{type(exception).__name__}: {exception}")}


class RecordWriter(Callback):
    """Writes the run's record (rank 0): at each training-epoch end, at the stage's end and on an exception.

    It also ends the record: ``status`` becomes ``completed`` when a stage ends normally and
    ``failed``/``interrupted`` with the (redacted) error on an exception, so no record is left
    ``running`` whichever callbacks ran. It logs nothing itself.
    """

    def _flush(self, trainer: pl.Trainer) -> None:
        if trainer.global_rank == 0:
            for recorder in (per_trainer.get(trainer, per_trainer.RECORDERS) or {}).values():
                recorder.flush()

    def _checkpoints(self, trainer: pl.Trainer) -> None:
        """The checkpoints this fit wrote (rank 0 saves them; the callbacks' paths are broadcast)."""
        if trainer.global_rank == 0 and stage_of(trainer) == "fit":
            from itwinai_lightning.records.written import written_checkpoints

            written = written_checkpoints(trainer)
            if written:
                recorder_of(trainer).contribute(fields={"checkpoints": written})

    def _end(self, trainer: pl.Trainer, exception: BaseException | None = None) -> None:
        self._checkpoints(trainer)
        fields = end_fields(exception)
        if fields is not None and trainer.global_rank == 0:
            recorder = recorder_of(trainer)
            if recorder.record.get("status") == "running" or exception is not None:
                recorder.contribute(fields=fields)
        self._flush(trainer)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.global_rank == 0:
            recorder_of(trainer).flush()  # the record exists (status running) from the start of the stage

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._checkpoints(trainer)
        self._flush(trainer)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if stage_of(trainer) == "validate":
            self._end(trainer)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer)

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._end(trainer, exception)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._flush(trainer)
