"""Checkpoint files written atomically, and on request in the background.

:class:`BackgroundCheckpointIO` wraps a strategy's checkpoint IO (Lightning's public ``CheckpointIO``
interface). Every local write goes to ``<name>.partial`` and is renamed to ``<name>`` once complete and
flushed to disk, so a process killed while writing leaves no ``*.ckpt`` that a resume could pick
(:func:`itwinai_lightning.runs.newest.latest_checkpoint` skips ``.partial``). Inside
:meth:`BackgroundCheckpointIO.in_background` a save only copies the state's tensors to CPU memory (the time
training is blocked) and a writer thread does the rest; one write is in flight at a time (the next save or
a load waits for it), so memory holds at most one extra copy of the state. Removing an older checkpoint is
queued behind the write in flight (training does not wait for the file system).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO

from itwinai_lightning.state_files import atomic_save, copied_to_cpu


def _is_local(path: Any) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


class BackgroundCheckpointIO(CheckpointIO):
    """Atomic checkpoint writes; in the background inside :meth:`in_background`.

    ``blocked_s``, ``written_s`` and ``waited_s`` hold, per background save, the seconds training waited
    for the copy, the seconds the writer took (serialising and writing), and the seconds the save waited for
    the previous write, for the RunRecord.
    """

    def __init__(self, inner: CheckpointIO | None = None) -> None:
        self.inner = inner if inner is not None else TorchCheckpointIO()
        self._background = False
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[Any] | None = None
        self._pending_path: str | None = None  # the file the write in flight makes
        self._removals: list[Future[Any]] = []  # removals queued behind it
        self._buffers: list[torch.Tensor] = []  # the previous copy's tensors, reused by the next copy
        self.saves = 0  # every save that came through this IO (a strategy that saves its own way makes none)
        self.blocked_s: list[float] = []
        self.written_s: list[float] = []
        self.waited_s: list[float] = []  # per background save: waiting for the previous write to finish

    def __getstate__(self) -> dict[str, Any]:
        """Shipped to another process (spawn, Ray) without its writer thread, write in flight or buffers."""
        self.wait()
        state = dict(self.__dict__)
        state.update(_executor=None, _pending=None, _pending_path=None, _removals=[], _buffers=[])
        return state

    @property
    def background(self) -> bool:
        """Whether a save now should return before its file is written (inside :meth:`in_background`)."""
        return self._background

    def write_in_background(self, write: Callable[[], Any], path: Any, blocked_s: float) -> None:
        """A strategy's own write (a sharded state, written by torch's distributed checkpoint) run by the
        writer thread: counted as a save, waited for like this IO's own writes. ``blocked_s``: the seconds
        the strategy held training for it (its state copied)."""
        self.waited_s.append(self._wait_timed())
        self.saves += 1
        self.blocked_s.append(blocked_s)

        def timed() -> None:
            started = time.perf_counter()
            write()
            self.written_s.append(time.perf_counter() - started)

        self._pending, self._pending_path = self._writer().submit(timed), str(path)

    def _writer(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="itwinai-checkpoint-writer")
        return self._executor

    @contextmanager
    def in_background(self, on: bool = True) -> Iterator[None]:
        """Saves inside the block return once the state is copied; the writer thread writes the file."""
        before, self._background = self._background, on
        try:
            yield
        finally:
            self._background = before

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        waited = self._wait_timed()
        self.saves += 1
        if not self._background:
            self._write(checkpoint, path, storage_options)
            return
        self.waited_s.append(waited)
        started = time.perf_counter()
        copy = self._copy(checkpoint)
        self.blocked_s.append(time.perf_counter() - started)
        self._pending = self._writer().submit(self._timed_write, copy, path, storage_options)
        self._pending_path = str(path)

    def _copy(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint with every tensor copied to CPU memory, into the previous copy's buffers (its
        write has finished: :meth:`wait`)."""
        out, self._buffers = copied_to_cpu(checkpoint, self._buffers)
        return out  # type: ignore[no-any-return]

    def _timed_write(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None) -> None:
        started = time.perf_counter()
        self._write(checkpoint, path, storage_options)
        self.written_s.append(time.perf_counter() - started)

    def _write(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None) -> None:
        if type(self.inner) is not TorchCheckpointIO or not _is_local(path) or storage_options is not None:
            self.inner.save_checkpoint(checkpoint, path, storage_options)  # its own way (remote, custom)
            return
        atomic_save(checkpoint, str(path).removeprefix("file://"))

    def _wait_timed(self) -> float:
        started = time.perf_counter()
        self.wait()
        return time.perf_counter() - started

    def wait(self) -> None:
        """Until the write in flight (if any) is on disk and the removals queued are done; an error of
        either is raised here."""
        pending, self._pending = self._pending, None
        removals, self._removals = self._removals, []
        for future in [pending, *removals]:
            if future is not None:
                future.result()

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        self.wait()
        kwargs: dict[str, Any] = {} if map_location is None else {"map_location": map_location}
        if weights_only is not None:
            kwargs["weights_only"] = weights_only
        return self.inner.load_checkpoint(path, **kwargs)

    def remove_checkpoint(self, path: Any) -> None:
        """Remove an older checkpoint: queued behind the write in flight when there is one (training does
        not wait for the file system); removing the file being written waits for it first."""
        if self._pending is not None and str(path) == self._pending_path:
            self.wait()
        if self._pending is None or self._executor is None:
            self.inner.remove_checkpoint(path)
            return
        self._removals.append(self._executor.submit(self.inner.remove_checkpoint, path))

    def teardown(self) -> None:
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            self.inner.teardown()
