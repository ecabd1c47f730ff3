"""Run the grid strategies x workers x repetitions, each point an ordinary ``fit`` in a subprocess.

Each point gets its own run directory ``<output_dir>/<strategy>-w<N>-r<rep>`` holding ``run_record.json``
(written by the monitoring callbacks during the run, completed here afterwards), ``fit.stdout`` and
``fit.stderr``. A point whose record says ``completed`` is skipped on the next invocation (resume); a
failing point is recorded as ``failed`` with its error line and the grid goes on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO, cast

from itwinai_lightning import records
from itwinai_lightning.benchmark import launchers, submit
from itwinai_lightning.benchmark.failure import TAIL_CHARS, error_line
from itwinai_lightning.benchmark.inputs import difference, point_inputs
from itwinai_lightning.benchmark.launchers import GridPoint
from itwinai_lightning.benchmark.outcome import PointResult
from itwinai_lightning.benchmark.process_tree import terminate_tree
from itwinai_lightning.benchmark.settings import Settings
from itwinai_lightning.records import derive
from itwinai_lightning.records.schema import EpochEntry, RunRecord
from itwinai_lightning.secrets import REDACTED, is_secret_key

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def redact_argv(argv: Sequence[str]) -> list[str]:
    """Hide the values of secret-looking flags (``--logger.init_args.api_key X``, ``--x.token=Y``)."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        key, eq, _ = arg.partition("=")
        if key.startswith("--") and is_secret_key(key[2:]):
            if eq:
                out.append(f"{key}={REDACTED}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(arg)
    return out


def finish_point(
    run_dir: str | Path, returncode: int, stderr_path: str | Path | None = None
) -> dict[str, Any]:
    """Complete the point's RunRecord after the fit exited: status, error text, exit code."""
    tail = ""
    if stderr_path is not None and Path(stderr_path).is_file():
        tail = Path(stderr_path).read_text(errors="replace")[-TAIL_CHARS:]
    current = records.load_or_new(run_dir)
    fields: RunRecord
    if returncode == 0 and current.get("status") != "failed":
        fields = {"status": "completed", "error": None}
    else:
        error = current.get("error") or (error_line(tail) if tail.strip() else None)
        fields = {"status": "failed", "error": error or f"exit code {returncode}"}
    section = {"returncode": returncode, "stderr_tail": "\n".join(tail.splitlines()[-25:])}
    if fields["status"] == "completed" and records.record_path(run_dir, "predict").is_file():
        fold_predict(run_dir)
    return dict(records.amend(run_dir, fields=fields, section="benchmark", section_values=section))


def fold_predict(run_dir: str | Path) -> None:
    """A ``mode: predict`` point: its predict record's figures become the point's record, one pass over the
    predict set standing for one epoch (``train_time_s`` = the prediction loop), so the report compares
    inference across worker counts as it does training."""
    pred = records.load(records.record_path(run_dir, "predict"))
    summary = pred.get("summary") or {}
    section = (pred.get("sections") or {}).get("predictions") or {}
    loop_s, samples = section.get("wall_time_s"), summary.get("total_samples")
    if not loop_s or not samples:
        return
    skip = {"stage", "status", "error", "summary", "sections", "epochs", "config"}
    fields = cast(RunRecord, {k: v for k, v in pred.items() if k not in skip})  # a record's own keys
    rate = derive.rate(samples, loop_s) or 0.0
    epoch: EpochEntry = {"train_time_s": loop_s, "wall_time_s": loop_s, "samples": int(samples),
                         "samples_per_s": rate}  # fmt: skip
    records.amend(
        run_dir,
        fields=fields,
        summary={"samples_per_s": rate, "total_samples": int(samples)},
        epoch=0,
        epoch_values=epoch,
        section="benchmark",
        section_values={"mode": "predict", "warmup_epochs": 0, "predictions": section},
    )


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for grid points: this package importable, MPI usable as root."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def threads_per_process(env: dict[str, str], max_workers: int) -> int:
    """The intra-op threads every point's processes run with: ``OMP_NUM_THREADS`` when the user set it,
    else this node's cores over the grid's largest worker count. One value for every point, so the 1-worker
    baseline is the same configuration as the scaled points (torchrun, by contrast, sets 1 thread only
    when it starts more than one process, which makes efficiency look above 100 %)."""
    given = env.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, (os.cpu_count() or 1) // max(1, max_workers))


def available_callbacks(paths: Sequence[str], warn: TextIO) -> list[str]:
    """The callback class paths whose module exists in this install (warn about the others once)."""
    out = []
    for path in paths:
        module = path.rsplit(".", 1)[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            out.append(path)
        else:
            print(f"benchmark: warning: callback {path} is not available; runs go without it", file=warn)
    return out


class Progress:
    """One line per grid point: position, point, outcome, time, and an estimate of what is left."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.stream, self.start = total, stream, time.monotonic()
        self.done = 0
        self.run_seconds: list[float] = []

    def begin(self, point: GridPoint, launcher: str) -> None:
        self.stream.write(f"[{self.done + 1}/{self.total}] {point.name} ({launcher}) ... ")
        self.stream.flush()

    def end(self, result: PointResult) -> None:
        self.done += 1
        if result.status in ("completed", "failed"):
            self.run_seconds.append(result.seconds)
        left = self.total - self.done
        eta = ""
        if self.run_seconds and left:
            eta = f", about {left * sum(self.run_seconds) / len(self.run_seconds):.0f} s left"
        what = result.status
        if result.status == "skipped":
            what += " (reused its completed run: same arguments, config files and versions)"
        if result.epoch_time_s is not None:
            what += f", epoch {result.epoch_time_s:.2f} s"
        if result.job_id:
            what += f" as SLURM job {result.job_id}"
        if result.error:
            what += f": {result.error[:200]}"
        self.stream.write(f"{what} ({result.seconds:.1f} s{eta})\n")
        self.stream.flush()


class GridInterrupted(BaseException):
    """SIGTERM (``kill``, ``scancel`` of the driving job) reached the grid driver; the running point's
    process group has been ended and its record marked failed."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.exit_code = 128 + signum


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While the grid runs, SIGTERM unwinds like Ctrl-C, so no launcher is left running without us."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: object) -> None:
        raise GridInterrupted(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class GridRunner:
    """Runs (or submits) every point of :class:`Settings` with the user's LightningCLI arguments."""

    def __init__(
        self, settings: Settings, lightning_argv: Sequence[str], stream: TextIO | None = None
    ) -> None:
        self.settings = settings
        self.argv = list(lightning_argv)
        self.stream = stream or sys.stderr
        self.out = Path(settings.output_dir).resolve()
        wanted = list(settings.callbacks)
        if settings.profile:
            wanted.append(launchers.PROFILE_CALLBACK)
        self.callbacks = available_callbacks(wanted, self.stream)
        self.env = child_env()
        self.threads = threads_per_process(self.env, max(settings.workers))
        self.env["OMP_NUM_THREADS"] = str(self.threads)

    def points(self) -> list[GridPoint]:
        """Repetition by repetition: the whole grid once, then again. A slow drift of the machine's load
        then touches every configuration alike instead of all repetitions of one worker count."""
        s = self.settings
        return [GridPoint(st, n, r) for r in range(s.repetitions) for st in s.strategies for n in s.workers]

    def fit_args(
        self, point: GridPoint, run_dir: Path, nodes: int = 1, devices: int | None = None
    ) -> list[str]:
        return launchers.fit_args(
            point,
            self.argv,
            str(run_dir),
            batch_key=self.settings.batch_key,
            per_worker_batch=self.settings.per_worker_batch(point.workers),
            callbacks=self.callbacks,
            accelerator=self.settings.resolved_accelerator(),
            devices=devices or point.workers,
            num_nodes=nodes,
            mode=self.settings.mode,
        )

    def prepare(
        self, point: GridPoint, run_dir: Path, command: Sequence[str], launcher: str | None = None
    ) -> None:
        records.record_path(run_dir).unlink(missing_ok=True)  # a re-run starts from a clean record
        per_worker = self.settings.per_worker_batch(point.workers)
        records.amend(
            run_dir,
            fields={
                "status": "running",
                "strategy": point.strategy,
                "launcher": launcher or self.settings.launcher,
                "world_size": point.workers,
                "global_batch_size": per_worker * point.workers if per_worker else None,
            },
            section="benchmark",
            section_values={
                "grid_point": point.name,
                "strategy": point.strategy,
                "workers": point.workers,
                "repetition": point.repetition,
                "launcher": launcher or self.settings.launcher,
                "scaling": self.settings.scaling,
                "per_worker_batch_size": per_worker,
                "warmup_epochs": self.settings.warmup_epochs,
                "threads_per_process": self.threads,
                "command": shlex.join(redact_argv(command)),
                "inputs": self.inputs(point, run_dir),
            },
        )

    def inputs(self, point: GridPoint, run_dir: Path) -> dict[str, Any]:
        """What this point runs (argv, config digests, launcher, versions): the reuse test compares it."""
        argv = redact_argv(self.fit_args(point, run_dir))
        return {
            **point_inputs(argv, self.settings.launcher, self.settings.launcher_args),
            "threads_per_process": self.threads,
        }

    def reusable(self, point: GridPoint, run_dir: Path) -> tuple[bool, str | None]:
        """(completed and same inputs, the difference that forbids reuse)."""
        if not is_completed(run_dir):
            return False, None
        stored = ((records.load(run_dir).get("sections") or {}).get("benchmark") or {}).get("inputs")
        why = difference(stored, self.inputs(point, run_dir))
        return why is None, why

    def run_point(self, point: GridPoint) -> PointResult:
        run_dir = self.out / point.name
        command = launchers.launch_command(
            self.settings.launcher,
            point.workers,
            self.fit_args(point, run_dir),
            extra=self.settings.launcher_args,
        )
        if self.settings.dry_run:
            self.stream.write(shlex.join(redact_argv(command)) + "\n")
            return PointResult(point, "dry-run")
        run_dir.mkdir(parents=True, exist_ok=True)
        self.prepare(point, run_dir, command)
        start = time.monotonic()
        with (run_dir / "fit.stdout").open("wb") as out, (run_dir / "fit.stderr").open("wb") as err:
            try:
                proc = subprocess.Popen(command, stdout=out, stderr=err, env=self.env, start_new_session=True)
            except OSError as exc:  # launcher executable missing
                err.write(f"cannot start {command[0]!r}: {exc}\n".encode())
                err.flush()
                rc = 127
            else:
                try:
                    rc = proc.wait(timeout=self.settings.timeout_s)
                except subprocess.TimeoutExpired:
                    terminate_tree(proc)
                    err.write(
                        f"\nitwinai-lightning: error: timed out after {self.settings.timeout_s} s\n".encode()
                    )
                    err.flush()
                    rc = 124
                except BaseException as exc:
                    terminate_tree(proc)
                    why = str(exc) if isinstance(exc, GridInterrupted) else "interrupted"
                    records.amend(run_dir, fields={"error": f"{why}; run the same command again to resume"})
                    finish_point(run_dir, getattr(exc, "exit_code", 130), None)
                    raise
        rec = finish_point(run_dir, rc, run_dir / "fit.stderr")
        records.amend(run_dir, section="benchmark", section_values={"wall_time_s": time.monotonic() - start})
        return PointResult(
            point,
            rec["status"],
            time.monotonic() - start,
            rec.get("error"),
            self._epoch_time(rec),
        )

    def _epoch_time(self, rec: Mapping[str, Any]) -> float | None:
        return derive.training_epoch_time(rec, self.settings.warmup_epochs).train_s

    def run(self) -> list[PointResult]:
        """Every point in order; completed ones are skipped; returns one result per point. SIGTERM ends the
        running point's process group and raises :class:`GridInterrupted`."""
        with _sigterm_interrupts():
            return self._run_all()

    def _run_all(self) -> list[PointResult]:
        points = self.points()
        progress = Progress(len(points), self.stream)
        results = []
        for point in points:
            run_dir = self.out / point.name
            progress.begin(point, self.settings.launcher)
            reuse, changed = self.reusable(point, run_dir)
            if changed is not None:
                self.stream.write(f"re-running: its completed run differs ({changed}) ... ")
            if reuse:
                result = PointResult(
                    point,
                    "skipped",
                    error=None,
                    epoch_time_s=self._epoch_time(records.load(run_dir)),
                )
            elif self.settings.submit:
                result = submit.submit_point(self, point, run_dir)
            else:
                result = self.run_point(point)
            progress.end(result)
            results.append(result)
        if self.settings.submit and self.settings.slurm.get("wait") and not self.settings.dry_run:
            submit.wait_for(results, self.stream, float(self.settings.slurm.get("poll_s") or 2.0))
        return results


def is_completed(run_dir: Path) -> bool:
    """A point whose RunRecord says ``completed`` (the resume test)."""
    try:
        return records.load(run_dir).get("status") == "completed"
    except ValueError:
        return False
