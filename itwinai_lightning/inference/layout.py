"""The on-disk layout of distributed predictions: part files per rank, ``index.json`` and ``positions.pt``.

``rank-<R>-<P>.pt`` holds ``{"indices": LongTensor[n], "predictions": Tensor[n, ...]}`` (predictions may be
a dict of such tensors; ``indices``: the inputs' positions in the dataset). ``positions.pt`` is a
``LongTensor[N, 2]``: for input position ``i``, the number of its file in ``index.json``'s ``files`` and
its row there.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from itwinai_lightning.errors import UserError
from itwinai_lightning.records import derive

INDEX = "index.json"
POSITIONS = "positions.pt"
FORMAT = 1
_PART = re.compile(r"^rank-(\d{5})-(\d{4})\.pt$")


def part_name(rank: int, part: int) -> str:
    return f"rank-{rank:05d}-{part:04d}.pt"


def _earlier(directory: Path) -> list[Path]:
    return [p for p in directory.glob("*") if p.name in (INDEX, POSITIONS) or _PART.match(p.name)]


def check_free(directory: Path, overwrite: bool) -> None:
    """An earlier run's predictions in ``directory`` are an error unless ``overwrite`` (every rank checks)."""
    earlier = _earlier(directory)
    if earlier and not overwrite:
        raise UserError(
            f"{directory} already holds predictions ({len(earlier)} files); choose another output_dir or "
            "set overwrite: true on ShardedPredictionWriter"
        )


def prepare(directory: Path) -> None:
    """Create ``directory`` and remove an earlier run's predictions from it (rank 0, after check_free)."""
    for path in _earlier(directory):
        path.unlink()
    directory.mkdir(parents=True, exist_ok=True)


def detached(prediction: Any, batch: int) -> torch.Tensor | dict[str, torch.Tensor]:
    """A batch's prediction on the CPU, checked to be batch-first (a tensor or a dict of tensors)."""
    items = prediction.items() if isinstance(prediction, Mapping) else [("", prediction)]
    out: dict[str, torch.Tensor] = {}
    for name, value in items:
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch:
            what = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            where = f" for {name!r}" if name else ""
            raise UserError(
                "ShardedPredictionWriter: predict_step must return a tensor (or a dict of tensors) whose "
                f"first dimension is the batch ({batch}); got {what}{where}"
            )
        out[name] = value.detach().cpu()
    return out.get("", out)


def _cat(values: Sequence[Any]) -> Any:
    if isinstance(values[0], dict):
        return {key: torch.cat([v[key] for v in values]) for key in values[0]}
    return torch.cat(list(values))


def write_part(directory: Path, rank: int, part: int, batches: Sequence[tuple[torch.Tensor, Any]]) -> Path:
    """One part file from buffered ``(indices, prediction)`` batches, written atomically."""
    path = directory / part_name(rank, part)
    payload = {"indices": torch.cat([b[0] for b in batches]), "predictions": _cat([b[1] for b in batches])}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def dataset_length(trainer: Any) -> int | None:
    """How many inputs the predict loop had (``None`` when the dataset has no length)."""
    loaders = trainer.predict_dataloaders
    loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
    try:
        return len(loader.dataset)
    except (TypeError, AttributeError):
        return None


def write_index(directory: Path, expected: int | None, world_size: int, elapsed_s: float) -> dict[str, Any]:
    """Check the parts cover every input exactly once and write ``positions.pt`` and ``index.json``."""
    files = sorted(p.name for p in directory.glob("rank-*.pt") if _PART.match(p.name))
    indices = [torch.load(directory / name, weights_only=True)["indices"] for name in files]
    flat = torch.cat(indices) if indices else torch.empty(0, dtype=torch.long)
    n = expected if expected is not None else (int(flat.max()) + 1 if len(flat) else 0)
    if len(flat) and int(flat.max()) >= n:
        number = next(k for k, idx in enumerate(indices) if len(idx) and int(idx.max()) >= n)
        beyond = int(indices[number].max())
        raise UserError(f"{directory / files[number]}: input position {beyond} is beyond the {n} inputs")
    sizes = torch.tensor([len(idx) for idx in indices], dtype=torch.long)
    numbers = torch.repeat_interleave(torch.arange(len(indices)), sizes)  # file number of each prediction
    rows = torch.arange(len(flat)) - torch.repeat_interleave(sizes.cumsum(0) - sizes, sizes)  # its row there
    # an input's first prediction wins (a padding sampler repeats inputs); a stable sort keeps file order
    ordered, perm = torch.sort(flat, stable=True)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    duplicates = int((~first).sum())
    positions = torch.full((n, 2), -1, dtype=torch.long)
    positions[ordered[first]] = torch.stack([numbers[perm][first], rows[perm][first]], dim=1)
    missing = int((positions[:, 0] < 0).sum())
    if missing:
        gap = int((positions[:, 0] < 0).nonzero()[0])
        raise UserError(f"{directory}: {missing} of {n} inputs have no prediction (first: position {gap})")
    torch.save(positions, directory / POSITIONS)
    index = {
        "format": FORMAT,
        "num_samples": n,
        "world_size": world_size,
        "files": files,
        "samples": [len(i) for i in indices],
        "duplicates_dropped": duplicates,
        "wall_time_s": elapsed_s,
        "samples_per_s": derive.rate(n, elapsed_s) or 0.0,
    }
    (directory / INDEX).write_text(json.dumps(index, indent=1))
    return index


def read(directory: str | os.PathLike[str]) -> torch.Tensor | dict[str, torch.Tensor]:
    """All predictions in input order: a tensor (or a dict of tensors) with one row per input."""
    root = Path(directory)
    if not (root / INDEX).is_file():
        raise UserError(f"{root}: no {INDEX} (the predict run did not finish, or this is not its output_dir)")
    index = json.loads((root / INDEX).read_text())
    positions = torch.load(root / POSITIONS, weights_only=True)
    parts = [torch.load(root / name, weights_only=True)["predictions"] for name in index["files"]]
    offsets = torch.tensor([0, *torch.tensor(index["samples"]).cumsum(0).tolist()[:-1]], dtype=torch.long)
    flat = offsets[positions[:, 0]] + positions[:, 1]  # row in the concatenation of all parts
    joined = _cat(parts)
    if isinstance(joined, dict):
        return {key: value[flat] for key, value in joined.items()}
    return joined[flat]
