"""One run, one directory: every ``fit`` (and every ``validate``/``test``/``predict``) writes into a
directory of its own under ``trainer.default_root_dir`` that no later run writes into.

==========================================  ===========================================================
the run directory is                        when
==========================================  ===========================================================
``--run_dir DIR``                           it is given (benchmark points and tune trials name theirs)
the run the checkpoint belongs to           ``fit --ckpt_path`` names a checkpoint of a run under the
                                            root (a resumed run continues in its own directory)
the one rank 0 of this launch chose         the processes were started side by side (torchrun, srun,
                                            mpirun, horovodrun): rank 0 creates it and names it in
                                            ``ROOT/.launches/<launch>.json``; the others read that.
                                            A launch is recognised by the launcher's own identity
                                            (SLURM job + step, torchrun's run id, the MPI job id); a
                                            SLURM or torchrun id is never reused, so a requeued job or
                                            a restarted torchrun worker continues its directory
``ROOT/version_N``, N one above the last    otherwise (a new run); Lightning's own launcher starts its
                                            processes with ``ITWINAI_LIGHTNING_RUN_DIR`` set to it
==========================================  ===========================================================

``ROOT/latest`` is a symbolic link to the newest run directory, so ``runs/quickstart/latest/run_record.json``
is always the latest run's record. Free of torch/Lightning imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from itwinai_lightning.errors import UserError
from itwinai_lightning.records.schema import LATEST_LINK

#: the run directory a launching process chose for the processes Lightning's own launcher starts
PIN_ENV = "ITWINAI_LIGHTNING_RUN_DIR"
#: the name of a run directory: ``version_<N>``, as Lightning's loggers number theirs
PREFIX = "version_"
#: the symbolic link to the newest run directory of a root
LATEST = LATEST_LINK
#: where rank 0 of a multi-process launch names the run directory for the other ranks
CLAIMS = ".launches"
#: how long a rank waits for rank 0 to name the run directory
WAIT_S = 600.0
#: a launch identity that may repeat (no launcher id) is trusted for this long after it was written
FRESH_S = 300.0

_VERSION = re.compile(rf"^{PREFIX}(\d+)$")


@dataclass(frozen=True)
class Placed:
    """The run directory of this process and, when it is not a new one, the line that says why."""

    path: Path
    note: str | None = None


def version_dirs(root: Path) -> list[Path]:
    """The ``version_N`` directories of ``root``, oldest (lowest N) first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _VERSION.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def owning_run(path: Path, root: Path) -> Path | None:
    """The ``version_N`` directory directly under ``root`` that holds ``path``, or None."""
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    if not rel.parts or not _VERSION.match(rel.parts[0]):
        return None
    return root / rel.parts[0]


def new_version(root: Path) -> Path:
    """Create ``root/version_N`` (N one above the highest there) and point ``root/latest`` at it."""
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in root.iterdir() if (m := _VERSION.match(p.name))]
    n = max(numbers, default=-1) + 1
    while True:
        path = root / f"{PREFIX}{n}"
        try:
            path.mkdir()
        except FileExistsError:  # another process took it first
            n += 1
            continue
        point_latest(root, path)
        return path


def point_latest(root: Path, run: Path) -> None:
    """Replace ``root/latest`` by a relative symbolic link to ``run`` (atomically: link, then rename)."""
    tmp = root / f".{LATEST}.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(run.name, tmp)
        os.replace(tmp, root / LATEST)
    except OSError:  # a file system without symbolic links: the version directories still say it all
        tmp.unlink(missing_ok=True)


#: launchers whose launch id is never reused and survives a restart (SLURM job + step, torchrun's run id);
#: the ids of the others (an MPI job id, Horovod's rendezvous port) are unique only while they run
STABLE_IDS = ("srun", "torchrun")


def launch_key(
    launcher: str, keys: tuple[str, ...], env: Mapping[str, str], fallback: str
) -> tuple[str, bool]:
    """The identity of this launch (the same on every rank) and whether it is *stable*: the launcher's
    own id, the same for a requeued SLURM job and a restarted torchrun worker and never reused."""
    values = [env.get(name, "") for name in keys]
    if launcher == "torchrun" and env.get("TORCHELASTIC_RUN_ID", "none") == "none":
        values = []  # torchrun without --rdzv-id: "none" on every launch
    if any(values):
        return f"{launcher}/" + "/".join(values), launcher in STABLE_IDS
    return f"{launcher}/{fallback}", False


def _claim_file(root: Path, key: str) -> Path:
    return root / CLAIMS / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"


def _read_claim(claim: Path, root: Path, newer_than: float | None) -> Path | None:
    try:
        data = json.loads(claim.read_text())
        written = claim.stat().st_mtime
    except (OSError, ValueError):
        return None
    if newer_than is not None and written < newer_than:
        return None
    path = root / str(data.get("run_dir", ""))
    return path if _VERSION.match(path.name) and path.is_dir() else None


def _write_claim(claim: Path, key: str, run: Path) -> None:
    claim.parent.mkdir(parents=True, exist_ok=True)
    tmp = claim.with_name(f".{claim.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"run_dir": run.name, "launch": key, "at": time.time()}))
    os.replace(tmp, claim)


def claimed(root: Path, rank: int, key: str, stable: bool) -> Placed:
    """The run directory of a multi-process launch: rank 0 names it (a new one, or for a stable launch
    identity the one it named before: a requeued job continues), the other ranks wait for the name."""
    claim = _claim_file(root, key)
    if rank == 0:
        if stable and (earlier := _read_claim(claim, root, None)) is not None:
            return Placed(earlier, f"this launch ({key}) continues its run directory {earlier}")
        run = new_version(root)
        _write_claim(claim, key, run)
        return Placed(run)
    newer_than = None if stable else time.time() - FRESH_S
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = _read_claim(claim, root, newer_than)
        if found is not None:
            return Placed(found)
        time.sleep(0.1)
    raise UserError(
        f"rank {rank}: rank 0 did not name this run's directory in {claim.parent} within {WAIT_S:.0f} s; "
        f"put trainer.default_root_dir on a file system every node sees, or pass --run_dir"
    )


def choose(
    root: Path,
    *,
    explicit: str | None,
    ckpt_path: str | None,
    stage: str,
    env: Mapping[str, str] | None = None,
) -> Placed:
    """The run directory of this process (see the module's table)."""
    env = os.environ if env is None else env
    if explicit:
        return Placed(Path(explicit).expanduser())
    pinned = env.get(PIN_ENV)
    if pinned and Path(pinned).parent.resolve() == root.resolve():
        return Placed(Path(pinned))
    if stage == "fit" and ckpt_path and (run := owning_run(Path(ckpt_path), root)) is not None:
        return Placed(run, f"fit continues in the checkpoint's run directory {run}")
    from itwinai_lightning.launch.table import get
    from itwinai_lightning.launch.where import detect

    info = detect(env)
    if info.is_distributed:
        key, stable = launch_key(
            info.launcher, get(info.launcher).launch_keys, env,
            f"{info.master_addr}:{info.master_port}/{info.world_size}",
        )  # fmt: skip
        return claimed(root, info.rank, key, stable)
    return Placed(new_version(root))


#: the root of runs when the config names no ``trainer.default_root_dir`` (Lightning's own folder name)
DEFAULT_ROOT = "lightning_logs"


def root_of(default_root_dir: str | None) -> Path:
    """The root a run's directory is made in: the config's ``trainer.default_root_dir``, else
    ``./lightning_logs``."""
    return Path(default_root_dir).expanduser() if default_root_dir else Path(DEFAULT_ROOT)
