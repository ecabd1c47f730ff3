"""TensorBoard backend: event files under ``<run_dir>/tensorboard`` (``/rank<N>`` for other ranks).

Written with TensorBoard's own event-file writer and protobufs (no torch import, one event per step
for all of that step's scalars), read by TensorBoard and ``EventAccumulator`` like any other run.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from itwinai_lightning.loggers.backends.base import Backend, RunContext


class TensorBoardBackend(Backend):
    """Scalars per step (tag = metric name), hyperparameters as a text table, figures as images, text."""

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
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        path = ctx.path(self.subdir, f"rank{ctx.rank}") if ctx.rank else ctx.path(self.subdir)
        path.mkdir(parents=True, exist_ok=True)
        self.log_dir = str(path)
        self._writer = EventFileWriter(self.log_dir, max_queue_size=1000, flush_secs=self.flush_secs)

    @override
    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "subdir": self.subdir}

    def _add(self, values: list[Any], step: int, timestamp: float = 0.0) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        summary = summary_pb2.Summary(value=values)
        self._writer.add_event(
            event_pb2.Event(wall_time=timestamp or time.time(), step=step, summary=summary)
        )

    @override
    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp: float) -> None:
        from tensorboard.compat.proto import summary_pb2

        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in metrics.items()]
        self._add(values, step, timestamp)

    @override
    def log_params(self, params: Mapping[str, Any]) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(params.items()))
        self.log_text("hparams", f"| key | value |\n|---|---|\n{rows}", 0)

    @override
    def log_figure(self, name: str, path: str, step: int) -> None:
        from tensorboard.compat.proto import summary_pb2

        with open(path, "rb") as handle:
            png = handle.read()
        width, height = struct.unpack(">II", png[16:24])  # the PNG IHDR chunk
        image = summary_pb2.Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        self._add([summary_pb2.Summary.Value(tag=name, image=image)], step)

    @override
    def log_text(self, key: str, text: str, step: int) -> None:
        from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2
        from tensorboard.plugins.text import plugin_data_pb2

        content = plugin_data_pb2.TextPluginData(version=0).SerializeToString()
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text", content=content)
        )
        tensor = tensor_pb2.TensorProto(
            dtype="DT_STRING",
            string_val=[text.encode("utf-8")],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]
            ),
        )
        self._add(
            [summary_pb2.Summary.Value(tag=f"{key}/text_summary", metadata=metadata, tensor=tensor)], step
        )

    @override
    def close(self, status: str = "success") -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
