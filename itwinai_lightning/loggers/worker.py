"""One background thread per backend: a bounded queue in, the backend out, the spool when it fails.

Policy (documented in docs/tracking.md):

* The training thread only calls :meth:`BackendWorker.submit`, which never blocks on the backend: the
  record goes into a bounded queue; if the queue is full, it is appended to the backend's spool on disk
  (a local file append, microseconds) and delivered later, in order, by the worker. Nothing is dropped.
* If the backend raises, it is *set aside*: the failed batch and everything after it go to the spool;
  every ``retry_interval_s`` (doubling up to ``max_retry_interval_s``) the worker tries to deliver the
  spool again (re-opening the backend if needed). Success puts the backend back in service.
* A :class:`PermanentError` (a request the backend rejects for good) moves that batch to
  ``<name>.rejected.jsonl`` instead of retrying it forever; the backend stays in service.
* Each delivery gathers records for the backend's ``linger_s`` first (MLflow: 1 s, so one HTTP request
  carries many steps).
* :meth:`stop` flushes with a timeout (a set-aside backend gets up to ``final_retries`` more tries on
  its back-off, at most 5 s apart): what the backend did not take in time stays spooled on disk
  for ``logs replay``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

from itwinai_lightning.loggers.backends.base import Backend, PermanentError, Record, RunContext
from itwinai_lightning.loggers.spool import Spool

log = logging.getLogger(__name__)

_STOP: Record = {"kind": "__stop__"}


class OpenTurn:
    """Backends of one fan-out open one at a time (imports, ``wandb.init``, MLflow's run creation).

    Opening is the costly part of a backend's life (seconds of imports, each on its own thread): done in
    parallel, the threads hand the GIL back and forth and wake each other up, and on a small node those
    wake-ups land on the training thread's core. In turns, one thread at a time does the same work.
    A backend whose open hangs (a tracking server that does not answer) holds its turn for at most
    ``wait_s``; the next one then opens anyway.
    """

    def __init__(self, wait_s: float = 30.0) -> None:
        self.wait_s = wait_s
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        got = self._lock.acquire(timeout=self.wait_s)
        try:
            yield
        finally:
            if got:
                self._lock.release()


class BackendWorker:
    """Feeds one backend from a bounded queue on a daemon thread; see the module docstring for the policy."""

    def __init__(
        self,
        backend: Backend,
        ctx: RunContext,
        spool: Spool,
        queue_size: int = 10_000,
        batch_size: int = 500,
        retry_interval_s: float = 5.0,
        max_retry_interval_s: float = 60.0,
        linger_s: float | None = None,
        final_retries: int = 3,
        open_turn: OpenTurn | None = None,
    ) -> None:
        self.backend = backend
        self.open_turn = open_turn
        #: after the first record of a batch, wait up to this long for more (fewer, larger deliveries)
        self.linger_s = backend.linger_s if linger_s is None else linger_s
        self.final_retries = final_retries
        self.ctx = ctx
        self.spool = spool
        self.batch_size = batch_size
        self.retry_interval_s = retry_interval_s
        self.max_retry_interval_s = max_retry_interval_s
        self._queue: queue.Queue[Record] = queue.Queue(maxsize=queue_size)
        self._stop_event = threading.Event()
        self._flush_now = threading.Event()
        self._in_flight: list[Record] = []
        self._spilling = False
        self.healthy = True
        self.delivered = 0
        self.overflowed = 0
        self.rejected = 0
        self.errors: list[str] = []
        self.timed_out = False
        self._backoff = retry_interval_s
        self._next_retry = 0.0
        self._meta_written: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._run, name=f"itwinai-logger-{backend.name}", daemon=True)
        self._write_meta()
        self._thread.start()

    # ---- training thread -----------------------------------------------------------------------
    def submit(self, record: Record) -> None:
        """Never blocks on the backend: queue, or spool to disk if the queue is full.

        Once the queue overflowed, records keep going to the spool until the worker has drained it, so
        delivery stays in order.
        """
        if self._spilling:
            with self.spool.lock:
                if self._spilling:
                    self.overflowed += 1
                    self.spool.append_locked([record])
                    return
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            with self.spool.lock:
                self._spilling = True
                self.overflowed += 1
                self.spool.append_locked([record])

    def stop(self, timeout_s: float) -> None:
        """Flush: deliver what is queued and spooled, close the backend; give up after ``timeout_s``."""
        self._flush_now.set()
        deadline = time.monotonic() + timeout_s
        try:
            self._queue.put(_STOP, timeout=max(0.0, timeout_s))
        except queue.Full:
            self._stop_event.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self.timed_out = True
            self._stop_event.set()
            leftovers = list(self._in_flight)  # may be delivered later too: a duplicate beats a loss
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    leftovers.append(item)
            self.spool.append(leftovers)
            self.errors.append(f"flush timed out after {timeout_s:.0f} s; undelivered records are spooled")

    # ---- worker thread -------------------------------------------------------------------------
    def _next_batch(self) -> tuple[list[Record], bool]:
        batch: list[Record] = []
        try:
            batch.append(self._queue.get(timeout=0.2))
        except queue.Empty:
            return batch, self._stop_event.is_set()
        if batch[-1] is not _STOP and self.linger_s > 0:
            # sleep instead of waiting on the queue: one wake-up per batch, not one per record (this
            # thread shares the GIL with the training loop); stop() cuts the sleep short
            self._flush_now.wait(self.linger_s)
        while len(batch) < self.batch_size and batch[-1] is not _STOP:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        stop = any(r is _STOP for r in batch)
        return [r for r in batch if r is not _STOP], stop or self._stop_event.is_set()

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._next_batch()
            if batch:
                if self.healthy:
                    self._deliver(batch)  # queued records are older than spooled overflow: first
                else:
                    self.spool.append(batch)
            if stop and self._stop_event.is_set():
                break  # flush timed out: stop() spools what is left
            due = self.healthy or stop or time.monotonic() >= self._next_retry
            if len(self.spool) and due and self._queue.empty():
                self._drain_spool()
            if not len(self.spool) and self._spilling:
                with self.spool.lock:
                    if not len(self.spool):
                        self._spilling = False  # caught up: back to the queue
        self._last_tries()
        self._close()

    def _last_tries(self) -> None:
        """Flushing a set-aside backend: a few more tries on its back-off (within the flush timeout)."""
        for _ in range(self.final_retries):
            if self.healthy or not len(self.spool) or self._stop_event.is_set():
                return
            self._stop_event.wait(min(max(0.0, self._next_retry - time.monotonic()), 5.0))
            if not self._stop_event.is_set():
                self._drain_spool()

    def _deliver(self, batch: list[Record]) -> None:
        self._in_flight = batch
        try:
            self._ensure_open()
            self._write_meta()
            self.backend.write(batch)
            self.delivered += len(batch)
        except PermanentError as err:
            self.rejected += len(batch)
            self.spool.reject(batch, str(err))
            self._note(err)
        except Exception as err:  # any backend failure: set aside, spool, retry later
            self._set_aside(err)
            self.spool.append(batch)
        finally:
            self._in_flight = []

    def _drain_spool(self) -> None:
        def deliver(chunk: list[Record]) -> None:
            self._in_flight = chunk
            self._ensure_open()
            try:
                self.backend.write(chunk)
            except PermanentError as err:
                self.rejected += len(chunk)
                self.spool.reject(chunk, str(err))
                self._note(err)
                return
            finally:
                self._in_flight = []
            self.delivered += len(chunk)

        try:
            self.spool.drain(deliver, chunk=self.batch_size)
        except Exception as err:
            self._set_aside(err)
            return
        self._write_meta()
        if not self.healthy:
            log.warning("tracking backend %r is back; its spool was delivered", self.backend.name)
        self.healthy = True
        self._backoff = self.retry_interval_s

    def _ensure_open(self) -> None:
        if self.backend.is_open or self.open_turn is None:
            self.backend.ensure_open(self.ctx)
            return
        with self.open_turn.turn():
            self.backend.ensure_open(self.ctx)

    def _set_aside(self, err: BaseException) -> None:
        if self.healthy:
            log.warning(
                "tracking backend %r failed (%s); its records go to %s and are retried every %.0f s",
                self.backend.name,
                err,
                self.spool.path,
                self._backoff,
            )
        self.healthy = False
        self._note(err)
        self._next_retry = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.max_retry_interval_s)

    def _note(self, err: BaseException) -> None:
        text = f"{type(err).__name__}: {err}".strip()[:500]
        if not self.errors or self.errors[-1] != text:
            self.errors.append(text)
        log.debug("backend %s error: %s", self.backend.name, traceback.format_exc())
        del self.errors[:-20]

    def _close(self) -> None:
        try:
            if self.backend.is_open:
                self.backend.close("success" if self.healthy else "failed")
        except Exception as err:
            self._note(err)
        finally:
            self.backend.is_open = False
        self._write_meta()
        self.spool.remove_if_empty()

    def _write_meta(self) -> None:
        """Save how to rebuild and continue this backend beside its spool (only when that changed)."""
        try:
            meta = {
                "spec": self.backend.spec(),
                "context": self.ctx.to_dict(),
                "state": self.backend.state(),
                "healthy": self.healthy,
                "open": self.backend.is_open,
            }
            if meta != self._meta_written:
                self.spool.write_meta(meta)
                self._meta_written = meta
        except Exception as err:  # state of a half-open backend: never fatal
            self._note(err)

    def summary(self) -> dict[str, Any]:
        return {
            "backend": self.backend.name,
            "type": self.backend.kind,
            "rank": self.ctx.rank,
            "delivered": self.delivered,
            "spooled": len(self.spool),
            "overflowed_to_disk": self.overflowed,
            "rejected": self.rejected,
            "spool": str(self.spool.path) if len(self.spool) else None,
            "healthy": self.healthy,
            "timed_out": self.timed_out,
            "errors": list(self.errors),
        }
