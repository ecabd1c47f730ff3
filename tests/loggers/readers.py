"""Read tracking backends' own files back (W&B offline run, TensorBoard events, yProv4ML PROV-JSON)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_BLOCK = 32 * 1024
_HEADER = 7  # crc32 (4) + length (2) + type (1), LevelDB log format
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list[Any]:
    """Protobuf records of an offline ``run-*.wandb`` file (LevelDB log framing after a 7-byte W&B header)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    out: list[Any] = []
    pos, pending = 7, b""
    while pos + _HEADER <= len(data):
        space = _BLOCK - pos % _BLOCK
        if space < _HEADER:
            pos += space
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        payload = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        if kind in (_FULL, _FIRST):
            pending = payload
        else:
            pending += payload
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def wandb_history(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(history rows, config) of the single offline W&B run under ``run_dir/wandb``."""
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline W&B run under {run_dir}, found {files}"
    rows: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    for record in wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append(
                {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
            )
        elif kind in ("config", "run"):
            items = record.config.update if kind == "config" else record.run.config.update
            for item in items:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return rows, config


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tensorboard_texts(log_dir: Path) -> str:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    texts = []
    for tag in acc.Tags()["tensors"]:
        for event in acc.Tensors(tag):
            texts += [v.decode() for v in event.tensor_proto.string_val]
    return "\n".join(texts)
