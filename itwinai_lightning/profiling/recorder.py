"""Run ``py-spy record`` against a process: start, wait until it samples, stop with SIGINT, read the stacks.

py-spy writes one format per recording; we record ``raw`` (collapsed stacks) and render speedscope and
SVG ourselves (:mod:`itwinai_lightning.profiling.stacks`). When py-spy cannot attach (no ptrace
permission) :meth:`PySpyRecorder.start` returns a message saying why and how to fix it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

_PERMISSION_MARKERS = ("permission denied", "operation not permitted", "ptrace", "eperm", "sys_ptrace")

PTRACE_HELP = (
    "py-spy needs ptrace permission to attach. In a container, start it with --cap-add SYS_PTRACE "
    "(docker/podman) or add SYS_PTRACE to the pod's securityContext; on a host, allow it with "
    "'sysctl kernel.yama.ptrace_scope=0' (or run py-spy as root/with CAP_SYS_PTRACE). "
    "Training continues without the py-spy profile."
)


def explain_failure(stderr: str, returncode: int | None) -> str:
    """One line: what py-spy said, and for permission failures how to grant ptrace."""
    said = " ".join(line.strip() for line in stderr.strip().splitlines() if line.strip())[-400:]
    said = said or f"exit code {returncode}"
    if any(marker in said.lower() for marker in _PERMISSION_MARKERS):
        return f"py-spy could not attach ({said}). {PTRACE_HELP}"
    return f"py-spy could not attach ({said}). Training continues without the py-spy profile."


def _lowest_priority() -> None:
    """In the py-spy child before exec: run only on a core nothing else wants (Linux SCHED_IDLE), so its
    samples never preempt a training thread; where that is refused, the lowest nice level."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


class PySpyRecorder:
    """One ``py-spy record --format raw`` process attached to ``pid``."""

    def __init__(
        self,
        pid: int,
        output: str | os.PathLike[str],
        rate_hz: int = 100,
        subprocesses: bool = True,
        native: bool = False,
        nonblocking: bool = True,
        idle: bool = True,
        executable: str = "py-spy",
        lowest_priority: bool = False,
    ) -> None:
        self.pid = pid
        self.lowest_priority = lowest_priority
        self.output = Path(output)
        self.rate_hz = rate_hz
        self.subprocesses = subprocesses
        self.native = native
        self.nonblocking = nonblocking
        self.idle = idle
        self.executable = executable
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: list[str] = []
        self._sampling = threading.Event()
        self._reader: threading.Thread | None = None

    def command(self, exe: str) -> list[str]:
        cmd = [exe, "record", "--pid", str(self.pid), "--rate", str(self.rate_hz), "--format", "raw"]
        cmd += ["--output", str(self.output)]
        if self.subprocesses:
            cmd.append("--subprocesses")
        if self.native:
            cmd.append("--native")
        if self.nonblocking:
            cmd.append("--nonblocking")
        if self.idle:  # waits (sleep, I/O, queues) are wall time the rank spends; keep them
            cmd.append("--idle")
        return cmd

    def _read_output(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._stderr.append(line)
            if "Sampling process" in line:
                self._sampling.set()

    def start(self, timeout_s: float = 20.0) -> str | None:
        """Start sampling; ``None`` once py-spy samples, else a one-line explanation of the failure."""
        exe = shutil.which(self.executable) or (self.executable if Path(self.executable).is_file() else None)
        if exe is None:
            return (
                f"py-spy executable '{self.executable}' was not found on PATH; install it with "
                "'pip install py-spy'. Training continues without the py-spy profile."
            )
        self.output.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._proc = subprocess.Popen(
                self.command(exe),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,  # py-spy says "Sampling process ..." on stdout, errors on stderr
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # Ctrl-C on the job must not reach py-spy before we stop it
                preexec_fn=_lowest_priority if self.lowest_priority else None,
            )
        except OSError as err:
            return f"py-spy could not be started ({err}). Training continues without the py-spy profile."
        self._reader = threading.Thread(target=self._read_output, name="py-spy-stderr", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._sampling.wait(0.02):
                return None
            if self._proc.poll() is not None:
                self._reader.join(timeout=2)
                return explain_failure("".join(self._stderr), self._proc.returncode)
        self.kill()
        return explain_failure("".join(self._stderr) or f"no sample after {timeout_s:.0f} s", None)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float = 60.0) -> str | None:
        """Stop sampling (SIGINT makes py-spy write its output); return the collapsed text or ``None``."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._reader is not None:
            self._reader.join(timeout=2)
        self._proc = None
        return self.output.read_text(errors="replace") if self.output.exists() else None

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)
