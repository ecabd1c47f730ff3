"""Checkpoint state copied to CPU memory and written atomically: what every layer that saves a checkpoint
uses (the checkpoint IO, strategies that write their own files, the newest-checkpoint search).

A file is written to ``<name>`` + :data:`PARTIAL_SUFFIX`, flushed to disk and renamed, so a process killed
while writing leaves no file under the final name; nothing resumes from a ``.partial``. torch is imported
by the functions that need it, so the job script's checkpoint search (which imports this module for the
suffix) stays light.
"""

from __future__ import annotations

import copy
import io
import os
from dataclasses import is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Suffix of files (and DeepSpeed directories) being written; never resumed from.
PARTIAL_SUFFIX = ".partial"


def copied_to_cpu(state: Any, buffers: list[torch.Tensor] | None = None) -> tuple[Any, list[torch.Tensor]]:
    """``state`` with every tensor copied into CPU memory, and the copies in the order made.

    Where ``buffers`` (the previous call's copies) holds a tensor of the same shape and type at the same
    position, the copy goes into it (no allocation, no page faults). Dicts, lists and tuples (named ones
    too) are walked directly, which is several times faster than a generic collection walk on an optimizer
    state of hundreds of small tensors; dataclasses go through Lightning's walk; anything else is kept.
    """
    import torch
    from lightning_utilities.core.apply_func import apply_to_collection

    reuse = buffers or []
    used: list[torch.Tensor] = []

    def tensor_copy(tensor: torch.Tensor) -> torch.Tensor:
        index = len(used)
        source = tensor.detach()
        target = reuse[index] if index < len(reuse) else None
        if target is None or target.shape != source.shape or target.dtype != source.dtype:
            target = torch.empty_like(source, device="cpu")
        target.copy_(source)
        used.append(target)
        return target

    def walk(item: Any) -> Any:
        if isinstance(item, torch.Tensor):
            return tensor_copy(item)
        if isinstance(item, dict):
            out = {key: walk(value) for key, value in item.items()}
            return out if type(item) is dict else _same_type(item, out)
        if isinstance(item, list):
            return [walk(value) for value in item]
        if isinstance(item, tuple):
            values = [walk(value) for value in item]
            if hasattr(item, "_fields"):
                return type(item)(*values)
            return tuple(values) if type(item) is tuple else type(item)(values)  # torch.Size stays one
        if is_dataclass(item) and not isinstance(item, type):
            return apply_to_collection(item, torch.Tensor, tensor_copy)
        return item  # numbers, strings, enums, dtypes ...: nothing to copy

    return walk(state), used


def _same_type(original: dict[Any, Any], items: dict[Any, Any]) -> dict[Any, Any]:
    """``items`` as a mapping of ``original``'s type and attributes (an OrderedDict stays one; a module's
    state dict keeps the version information it carries beside its items)."""
    try:
        out = copy.copy(original)
    except Exception:
        return items
    out.clear()
    out.update(items)
    return out


def atomic_save(state: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to ``<path>.partial``, flushed to disk, then renamed to ``path``: a process killed
    while writing leaves no file under the final name."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)  # in memory: the interpreter lock is held only this long
    atomic_write(path, buffer.getbuffer())


def atomic_write(path: str | os.PathLike[str], data: bytes | memoryview) -> None:
    """``data`` written to ``<path>.partial``, flushed to disk, then renamed to ``path``."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    with open(partial, "wb") as handle:  # writing and syncing release the interpreter lock
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, final)
