"""The one line that says why a grid point failed, read from its ``fit.stderr``.

Three shapes of stderr are understood:

* our own one-line error (``itwinai-lightning: error: ...``) wins;
* torchrun's ``ChildFailedError`` summary: the wrapper line says nothing, so the *root-cause* rank's own
  exception (the ``[rankN]: XxxError: ...`` line torchrun prefixes; an exception raised before the process
  group existed has no prefix: the last one printed before torchrun's own traceback), else its exit code
  or signal (``rank 1 exited with exitcode -11 (SIGSEGV)``);
* a plain Python traceback: its last exception line.
"""

from __future__ import annotations

import re

#: How much of a failed point's stderr is read (its end); torchrun's summary alone is ~1.5 kB.
TAIL_CHARS = 200_000

_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):(?P<block>.*?)(?:={10,}|\Z)", re.S)
_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)", re.M)
_EXITCODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)[^\n]*?(\((SIG\w+)\))?\s*$", re.M)
_RANK_PREFIX = re.compile(r"^\[rank(\d+)\]:\s?(.*)$")


def _is_exception_line(line: str) -> bool:
    head = line.split(":", 1)[0].strip()
    return ":" in line and head.endswith(("Error", "Exception", "Interrupt")) and " " not in head


def _torchrun_root_cause(lines: list[str], text: str) -> str | None:
    match = _ROOT_CAUSE.search(text)
    if match is None:
        return None
    block = match.group("block")
    rank_match = _RANK.search(block)
    rank = rank_match.group(1) if rank_match else None
    for line in reversed(lines):
        prefixed = _RANK_PREFIX.match(line)
        if prefixed and (rank is None or prefixed.group(1) == rank) and _is_exception_line(prefixed.group(2)):
            return f"rank {prefixed.group(1)}: {prefixed.group(2).strip()}"
    # an exception raised before the process group existed carries no [rankN] prefix: the last exception
    # line the ranks printed before torchrun's own ChildFailedError traceback is the root cause
    agent = next((i for i, ln in enumerate(lines) if "ChildFailedError" in ln), len(lines))
    agent = max((i for i in range(agent) if lines[i].startswith("Traceback")), default=agent)
    for line in reversed(lines[:agent]):
        if _is_exception_line(line) and not _RANK_PREFIX.match(line):
            return f"rank {rank}: {line.strip()}" if rank is not None else line.strip()
    code = _EXITCODE.search(block)
    if code is None:
        return f"rank {rank} failed (torchrun ChildFailedError, no exit code in its summary)"
    signal = f" ({code.group(3)})" if code.group(3) else ""
    return f"rank {rank} exited with exitcode {code.group(1)}{signal} under torchrun"


def error_line(text: str) -> str:
    """The most telling line of a failed run's stderr (see the module docstring)."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "itwinai-lightning: error:" in ln:
            return ln.split("itwinai-lightning: error:", 1)[1].strip()
    root = _torchrun_root_cause(lines, text)
    if root is not None:
        return root
    for ln in reversed(lines):
        if _is_exception_line(_RANK_PREFIX.sub(r"\2", ln)):
            return ln.strip()
    return lines[-1].strip() if lines else "no error output"
