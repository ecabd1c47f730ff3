"""The tracking process: the MultiLogger's backends run in a child process, not beside the training thread.

Why: backends are Python code (protobuf encoding, HTTP clients, W&B's serialisation, yProv4ML). In the
training process they compete for the GIL with the training loop, and every torch call that returns to
Python waits for them. In a child process they only compete for a CPU core.

Parent side, :class:`TrackingProcess` is itself a :class:`Backend`, fed by an ordinary
:class:`BackendWorker` (bounded queue, spool, retry): its ``open`` starts the child, ``write`` sends a
batch of records over a socket pair, ``close`` asks the child to flush and collects its summary rows.
If the child dies, the worker sets the link aside, spools to ``tracking_spool/tracking-process.jsonl``
and retries by starting a new child (whose backends continue their runs where they have an id). What the
link still holds at the end is copied into every backend's own spool, so ``logs replay`` finds it.

Child side (``python -m itwinai_lightning.loggers.tracking_process FD``): one :class:`BackendWorker`
per backend, exactly as in-process; SIGINT, SIGTERM, SIGUSR1/2 and SIGHUP are ignored (they are meant for
the trainer: Ctrl-C, SLURM preemption and requeue signals reach the whole process group); when the
parent stops it or vanishes (EOF), the child flushes and exits by itself.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from typing_extensions import override

from itwinai_lightning.loggers.backends.base import Backend, Record, RunContext
from itwinai_lightning.loggers.fanout import spool_name, start_workers, stop_workers
from itwinai_lightning.loggers.spool import Spool, spool_dir
from itwinai_lightning.loggers.worker import BackendWorker

LINK_NAME = "tracking-process"
#: the child leaves these to the trainer and ends when the trainer stops it or is gone (EOF)
IGNORED_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP")
#: seconds for the child to import and build its workers before the start counts as failed
START_TIMEOUT_S = 120.0


def picklable(backends: Sequence[Backend]) -> str | None:
    """``None`` if the backends can be rebuilt in a child process, else why not."""
    for backend in backends:
        if type(backend).__module__ == "__main__":
            return f"backend class {type(backend).__name__} is defined in __main__"
    try:
        pickle.dumps(list(backends))
    except Exception as err:
        return f"backends cannot be pickled ({err})"
    return None


class TrackingProcess(Backend):
    """The link to the child process that runs the real backends (see the module docstring)."""

    kind = LINK_NAME
    linger_s = 0.2

    def __init__(
        self,
        backends: Sequence[Backend],
        queue_size: int,
        retry_interval_s: float,
        flush_timeout_s: float,
        nice: int = 0,
    ) -> None:
        super().__init__("all", LINK_NAME)
        self.backends = list(backends)
        self.queue_size = queue_size
        self.retry_interval_s = retry_interval_s
        self.flush_timeout_s = flush_timeout_s
        self.nice = nice
        self.starts = 0
        self.child_rows: list[dict[str, Any]] | None = None
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None

    @override
    def spec(self) -> dict[str, Any]:
        """The backends' own specs, so ``logs replay`` can hand a left-over link spool to them."""
        return {**super().spec(), "backends": [b.spec() for b in self.backends]}

    @override
    def open(self, ctx: RunContext) -> None:
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        paths = [p or os.getcwd() for p in sys.path]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        cmd = [sys.executable, "-m", "itwinai_lightning.loggers.tracking_process", str(child_sock.fileno())]
        try:
            self._proc = subprocess.Popen(
                cmd, pass_fds=[child_sock.fileno()], stdin=subprocess.DEVNULL, env=env
            )
        finally:
            child_sock.close()
        self.pid = self._proc.pid
        self._conn = Connection(parent_sock.detach())
        init = {
            "backends": self.backends,
            "context": ctx.to_dict(),
            "queue_size": self.queue_size,
            "retry_interval_s": self.retry_interval_s,
            "resume": self.starts > 0,
            "nice": self.nice,
        }
        self.starts += 1
        self._conn.send(init)
        if not self._conn.poll(START_TIMEOUT_S):
            self._abandon()
            raise TimeoutError(f"the tracking process did not start within {START_TIMEOUT_S:.0f} s")
        kind, detail = self._conn.recv()
        if kind != "ready":
            self._abandon()
            raise RuntimeError(f"the tracking process could not start: {detail}")

    @override
    def write(self, batch: Sequence[Record]) -> None:
        assert self._conn is not None
        try:
            self._conn.send(("records", list(batch)))
        except OSError:
            self._abandon()  # the next retry starts a new child
            raise

    @override
    def close(self, status: str = "success") -> None:
        conn, proc = self._conn, self._proc
        if conn is None or proc is None:
            return
        try:
            conn.send(("stop", self.flush_timeout_s))
            if conn.poll(self.flush_timeout_s + 30.0):
                kind, rows = conn.recv()
                if kind == "done":
                    self.child_rows = rows
        except (OSError, EOFError):
            pass  # died while flushing: what it did not deliver is in its backends' spools
        if self.child_rows is not None:
            # everything is delivered: let the child's interpreter tear down (W&B service, atexit
            # hooks: about a second) without holding up the end of fit; a daemon thread reaps it
            threading.Thread(target=proc.wait, name="itwinai-tracking-reaper", daemon=True).start()
            conn.close()
            self._conn, self._proc = None, None
            self.is_open = False
        else:
            self._abandon()

    def _abandon(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._conn, self._proc = None, None
        self.is_open = False


def hand_over_spool(link: Spool, backends: Sequence[Backend], context: RunContext) -> int:
    """Copy records the child never got into each backend's own spool (for ``logs replay``)."""
    records = link.read()
    if not records:
        return 0
    directory = spool_dir(context.run_dir)
    for backend in backends:
        if not backend.active_on(context.rank):
            continue
        spool = Spool(directory, spool_name(backend, context.rank))
        if not spool.meta_path.exists():
            spool.write_meta({"spec": backend.spec(), "context": context.to_dict(), "state": backend.state()})
        spool.append(records)
    link.clear()
    return len(records)


def link_report(link: TrackingProcess, worker: BackendWorker) -> list[dict[str, Any]]:
    """Summary rows of the backends behind ``link`` (plus the link's own row if it had trouble).

    Records the link still holds are first handed to each backend's spool, so ``logs replay`` finds them.
    """
    link_row = worker.summary()
    if link_row["spooled"]:
        hand_over_spool(worker.spool, link.backends, worker.ctx)
    rank = worker.ctx.rank
    out = []
    for backend in link.backends:
        row = next((r for r in link.child_rows or [] if r["backend"] == backend.name), None)
        if row is None:  # the child is gone without a report: its spool is all we know
            spool = Spool(spool_dir(worker.ctx.run_dir), spool_name(backend, rank))
            errors = link_row["errors"] or ["the tracking process ended without a report"]
            row = {
                "backend": backend.name, "type": backend.kind, "rank": rank, "delivered": 0,
                "spooled": len(spool), "overflowed_to_disk": 0, "rejected": 0,
                "spool": str(spool.path) if len(spool) else None, "healthy": False,
                "timed_out": link_row["timed_out"], "errors": list(errors),
            }  # fmt: skip
        out.append(row)
    if not link_row["healthy"] or link_row["errors"] or link_row["timed_out"]:
        out.append({**link_row, "spooled": 0, "spool": None})
    return out


def serve(conn: Connection) -> int:
    """The child's loop: build the workers, submit what arrives, flush on 'stop' or parent exit."""
    for name in IGNORED_SIGNALS:  # meant for the trainer (Ctrl-C, SLURM preemption/requeue)
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    try:
        init = conn.recv()
        if init.get("nice"):
            os.nice(int(init["nice"]))
        workers = start_workers(
            init["backends"], init["context"], init["queue_size"], init["retry_interval_s"], init["resume"]
        )
    except Exception as err:
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return 1
    conn.send(("ready", None))
    timeout_s = 30.0
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):
            break  # the training process is gone: deliver what we have and leave
        if kind == "records":
            for record in payload:
                for worker in workers:
                    worker.submit(record)
        elif kind == "stop":
            timeout_s = float(payload)
            break
    started = time.monotonic()
    rows = stop_workers(workers, timeout_s)
    for row in rows:
        row["flush_s"] = round(time.monotonic() - started, 3)
    with contextlib.suppress(OSError):
        conn.send(("done", rows))
    return 0


def main(argv: Sequence[str]) -> int:
    from itwinai_lightning import quiet

    quiet.install()  # the backends' imports warn here, in the user's terminal, as in the trainer
    sock = socket.socket(fileno=int(argv[0]))
    return serve(Connection(sock.detach()))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
