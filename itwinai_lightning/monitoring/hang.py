"""What a hung run left behind: each rank's stack, where it stopped, and the one line naming the stuck rank.

Each rank writes ``<run_dir>/hang/rank<N>.txt``: a first line of JSON (``rank``, ``host``, ``state``,
``frame``, ``collective``, ``waited_s``) and then the Python stack of every thread. A rank whose main
thread is inside torch's distributed or autograd code *waits* (in a collective: with DDP the gradient
all-reduce runs inside ``backward``); any other rank is *stuck* where its innermost frame of the user's code
is. Rank 0 reads every file and says which rank is stuck, on which host, in which frame.
"""

from __future__ import annotations

import faulthandler
import json
import sys
import sysconfig
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from itwinai_lightning import compat

HANG_DIR = "hang"
REPORTED = "reported"
#: exit status of every rank of a hung run (as timeout(1) uses)
EXIT_HANG = 124
#: where a frame means "waiting for the other ranks" (path fragments, '/' separated)
WAITING_IN = ("torch/distributed/", "torch/autograd/", "torch/nn/parallel/", "deepspeed/comm/", "horovod/")
_PACKAGE = str(Path(__file__).resolve().parents[1])
#: code that is not the user's: the standard library, installed packages, this package (but its demo)
_LIBRARY_ROOTS = (
    *{sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")},
    _PACKAGE,
)
_USERS_OWN = (f"{_PACKAGE}/demo/", f"{_PACKAGE}/examples/")


@dataclass(frozen=True)
class RankStack:
    """Where one rank stopped."""

    rank: int
    host: str
    state: str  # stuck | waiting
    frame: str  # "function (file:line)" of the innermost frame of the user's code, else the innermost
    collective: str | None  # the torch.distributed (or autograd) function it waits in, when known
    waited_s: float


def _is_library(filename: str) -> bool:
    if filename.startswith(_USERS_OWN):
        return False
    return filename.startswith(_LIBRARY_ROOTS) or filename.startswith("<")


def where_stopped(frame: FrameType, rank: int, host: str, waited_s: float) -> RankStack:
    """Classify the stack of ``frame`` (a thread's current frame, innermost)."""
    stack = traceback.extract_stack(frame)
    posix = [entry.filename.replace("\\", "/") for entry in stack]
    waiting = [entry for entry, path in zip(stack, posix, strict=True) if any(p in path for p in WAITING_IN)]
    own = [entry for entry in stack if not _is_library(entry.filename)]
    chosen = own[-1] if own else stack[-1]
    label = f"{chosen.name} ({Path(chosen.filename).name}:{chosen.lineno})"
    collective = _collective(waiting, posix) if waiting else None
    return RankStack(rank, host, "waiting" if waiting else "stuck", label, collective, round(waited_s, 1))


def _collective(waiting: list[traceback.FrameSummary], posix: list[str]) -> str:
    """The torch.distributed call waited in, else "backward" (DDP's gradient all-reduce), else the frame."""
    distributed = [entry for entry in waiting if "torch/distributed/" in entry.filename.replace("\\", "/")]
    if distributed:
        return distributed[-1].name
    if any("torch/autograd/" in path for path in posix):
        return "backward (the gradient all-reduce)"
    return waiting[-1].name


def write_rank_stack(directory: Path, stopped: RankStack) -> Path:
    """``rank<N>.txt``: the JSON line, then every thread's Python stack (faulthandler: safe while hung)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"rank{stopped.rank}.txt"
    partial = path.with_suffix(".partial")
    with open(partial, "w") as handle:
        handle.write(json.dumps(asdict(stopped)) + "\n")
        handle.flush()
        faulthandler.dump_traceback(file=handle, all_threads=True)
    partial.replace(path)  # complete or absent: rank 0 never reads half a file
    return path


def read_rank_stacks(directory: Path) -> dict[int, RankStack]:
    """The ranks whose stack file is complete."""
    found: dict[int, RankStack] = {}
    for path in sorted(directory.glob("rank*.txt")):
        try:
            header = json.loads(path.read_text().splitlines()[0])
            found[int(header["rank"])] = RankStack(**header)
        except (OSError, IndexError, ValueError, TypeError, KeyError):
            continue
    return found


def report_line(stacks: dict[int, RankStack], world_size: int, timeout_s: float, directory: Path) -> str:
    """One line: the stuck rank(s) with host and frame, or what every rank waits in, and where stacks are."""
    stuck = [s for s in stacks.values() if s.state == "stuck"]
    missing = [rank for rank in range(world_size) if rank not in stacks]
    parts: list[str] = []
    if stuck:
        parts.extend(f"rank {s.rank} on {s.host} is stuck in {s.frame}" for s in stuck)
    if missing:
        parts.append(f"rank(s) {_ranks(missing)} wrote no stack (hung outside Python, or lost)")
    waiting = sorted({s.collective or "a collective" for s in stacks.values() if s.state == "waiting"})
    if waiting:
        who = "the other ranks wait" if stuck or missing else "every rank waits"
        parts.append(f"{who} in {', '.join(waiting)}")
    return (
        f"hang: no step finished for {timeout_s:g} s (hang_timeout_s); {'; '.join(parts)}. "
        f"Every rank's stack: {directory}"
    )


def _ranks(ranks: Sequence[int]) -> str:
    return ", ".join(str(r) for r in ranks)


def silence() -> int:
    """Send this process's stdout and stderr to /dev/null; return a copy of the stderr it had."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    kept = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    return kept


def thread_frame(ident: int) -> FrameType | None:
    """The current frame of thread ``ident`` (read from another thread), or None when it has ended."""
    return compat.current_frames().get(ident)
