"""``ShardedPredictionWriter``: distributed inference writes per-rank shards and an order-restoring index.

Each rank streams its predictions to ``<output_dir>/rank-<R>-<part>.pt`` (``{"indices", "predictions"}``);
when the loop ends, rank 0 checks that every input position has exactly one prediction, drops the
duplicates a padding sampler adds, and writes ``index.json`` plus ``positions.pt`` (for input position
``i``: the file number and the row holding its prediction). :func:`itwinai_lightning.inference.read` puts
them back in input order.

Shards go to a directory every rank can write (on a cluster, a shared file system).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from typing_extensions import override

from itwinai_lightning.errors import UserError
from itwinai_lightning.inference import layout

#: flush a rank's buffer to a new part file once it holds this many samples
DEFAULT_PART_SAMPLES = 65536


class ShardedPredictionWriter(BasePredictionWriter):
    """Writes every rank's predictions to shards and, on rank 0, the index that restores the input order.

    ``predict_step`` must return a tensor whose first dimension is the batch (or a dict of such tensors).

    Args:
        output_dir: where shards and index go; default ``<trainer.default_root_dir>/predictions``.
        overwrite: replace the predictions of an earlier run in ``output_dir`` (default: refuse, so
            nothing is lost).
        part_samples: samples a rank buffers before it writes a part file (bounds host memory).

    The predict RunRecord (``run_record.predict.json``) gets ``summary.samples_per_s`` (unique inputs per
    second over the whole loop, all ranks), ``summary.total_samples`` and a ``predictions`` section
    (``output_dir``, ``files``, ``duplicates_dropped``, ``wall_time_s``: the prediction loop, in s).
    """

    def __init__(
        self, output_dir: str | None = None, overwrite: bool = False, part_samples: int = DEFAULT_PART_SAMPLES
    ) -> None:
        super().__init__(write_interval="batch")
        if part_samples < 1:
            raise UserError(f"ShardedPredictionWriter.part_samples must be >= 1, got {part_samples}")
        self.output_dir = output_dir
        self.overwrite = overwrite
        self.part_samples = part_samples
        self.index: dict[str, Any] | None = None
        self._dir = Path(output_dir or ".")
        self._buffer: list[tuple[torch.Tensor, Any]] = []
        self._buffered = 0
        self._parts = 0
        self._t0 = 0.0

    # ---------------------------------------------------------------- lifecycle
    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "predict":
            return
        self._dir = Path(self.output_dir or Path(trainer.default_root_dir) / "predictions")
        layout.check_free(self._dir, self.overwrite)  # on every rank: all stop alike, none waits for a peer
        if trainer.global_rank == 0:
            layout.prepare(self._dir)
        trainer.strategy.barrier("prediction-writer-setup")
        self._buffer, self._buffered, self._parts, self.index = [], 0, 0, None

    @override
    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self._t0 = time.perf_counter()

    @override
    def write_on_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if batch_indices is None:
            raise UserError("ShardedPredictionWriter: Lightning passed no batch indices for this batch")
        indices = torch.as_tensor(list(batch_indices), dtype=torch.long)
        self._buffer.append((indices, layout.detached(prediction, len(indices))))
        self._buffered += len(indices)
        if self._buffered >= self.part_samples:
            self._flush(trainer.global_rank)

    @override
    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self._flush(trainer.global_rank)
        trainer.strategy.barrier("prediction-writer-end")
        if trainer.global_rank == 0:
            expected = layout.dataset_length(trainer)
            elapsed = time.perf_counter() - self._t0
            self.index = layout.write_index(self._dir, expected, trainer.world_size, elapsed)
            self._record(trainer)
        trainer.strategy.barrier("prediction-writer-index")

    def _flush(self, rank: int) -> None:
        if not self._buffer:
            return
        layout.write_part(self._dir, rank, self._parts, self._buffer)
        self._parts += 1
        self._buffer, self._buffered = [], 0

    def _record(self, trainer: Any) -> None:
        from itwinai_lightning import records

        index = self.index or {}
        summary = {"samples_per_s": index["samples_per_s"], "total_samples": index["num_samples"]}
        section = {k: index[k] for k in ("files", "duplicates_dropped", "wall_time_s")}
        section["output_dir"] = str(self._dir)
        records.contribute(trainer, summary=summary, section="predictions", section_values=section)
        print(
            f"itwinai-lightning: {index['num_samples']} predictions from {trainer.world_size} rank(s) in "
            f"{self._dir} ({index['samples_per_s']:.1f} samples/s); read them with "
            f"itwinai_lightning.inference.read('{self._dir}')",
            flush=True,
        )
        if index["duplicates_dropped"]:
            print(
                f"itwinai-lightning: dropped {index['duplicates_dropped']} duplicate prediction(s) that a "
                "padding sampler repeated",
                flush=True,
            )
