"""The one layout of a run directory, whatever the loggers: the Trainer built for a run is pointed at it.

=====================  =====================================================================
``config.yaml``        the resolved config, secrets redacted (``config.<stage>.yaml`` for
                       validate/test/predict)
``run_record.json``    the RunRecord (``run_record.<stage>.json`` for validate/test/predict)
``checkpoints/``       every ModelCheckpoint that names no ``dirpath`` of its own
``tensorboard/``       Lightning's default logger (``csv/`` where TensorBoard is not installed);
                       MultiLogger puts one folder per backend here (``tensorboard/``, ``mlflow/``...)
``profiling/``         py-spy and torch-profiler outputs
``predictions/``       predict's shards and index
=====================  =====================================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the checkpoints folder of a run directory
CHECKPOINTS = "checkpoints"


def apply(trainer: Any, run_dir: Path, *, default_logger: bool) -> None:
    """Checkpoints without a ``dirpath`` go to ``run_dir/checkpoints``; Lightning's default logger
    (the config names none) is replaced by the same class writing to ``run_dir/<kind>``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
            callback.dirpath = str(run_dir / CHECKPOINTS)
    if default_logger and len(trainer.loggers) == 1:
        replaced = _in_run_dir(trainer.loggers[0], run_dir)
        if replaced is not None:
            trainer.loggers = [replaced]


def _in_run_dir(logger: Any, run_dir: Path) -> Any:
    """The logger's class writing straight into ``run_dir/<kind>`` (version "": no ``version_N`` inside the
    run's own directory, and no ``v_num`` in the progress bar)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if type(logger) is TensorBoardLogger:
        return TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="")
    if type(logger) is CSVLogger:
        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    return None
