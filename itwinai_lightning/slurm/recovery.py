"""What a SLURM fit job does when its launch failed: requeue without the bad node, or stop and say why.

The job's batch shell gathers the facts with SLURM's own tools (it runs outside any container, where
``scontrol`` and ``sinfo`` exist) and asks ``itwinai-lightning slurm recover`` for a decision, which it then
carries out (``scontrol requeuehold``, ``update ExcNodeList``, ``release``). The facts:

- the launch's exit status, and the failure note a rank left (:mod:`itwinai_lightning.launch.failure_note`:
  the hosts of a lost peer, or of a hung rank);
- the allocation's hosts and those that answered a probe step right after the launch (``srun --overlap
  hostname`` on every node): a host that did not answer is lost;
- the hosts the job already excludes, and the partition's nodes that SLURM would still schedule.

Rules, in order:

1. exit status 2 is a mistake in the input: never restarted;
2. a host that failed the probe is lost: it is excluded (cause ``lost node``); a hung rank's host is
   excluded too (cause ``hang``: a GPU or network fault hangs a rank more often than code does);
3. a rank whose own code raised (its ``.error`` note) is not restarted: it would fail again;
4. a rank lost on a host that still answers, or a rank killed by a signal: restarted on the same nodes
   (cause ``rank lost``); any other failure on healthy nodes is not restarted;
5. at most ``max_restarts`` recoveries per job; and when the partition has fewer usable nodes outside the
   excluded ones than the job needs, one line and no requeue.

Each recovery is one JSON line in the run directory's ``.recoveries.jsonl`` (``job_id``, ``restart``: the
restart number the requeued job will have, ``cause``, ``hosts``: the failed hosts, ``excluded``,
``exit_status``, ``global_step``: the step the run had reached, ``failed_at``: UNIX seconds, ``error``:
the first line of the error the lost attempt recorded); the requeued
job adds it to its RunRecord with the checkpoint it resumed from and the time and steps lost
(:func:`restart_entry`).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from itwinai_lightning.errors import EXIT_USAGE, UserError
from itwinai_lightning.launch import failure_note
from itwinai_lightning.monitoring.hang import EXIT_HANG

#: Environment variable naming the recovery log for the job's ranks (set by the job script).
RECOVERY_LOG_ENV = "ITWINAI_RECOVERY_LOG"
RECOVERY_LOG_NAME = ".recoveries.jsonl"
#: sinfo states (``%t``, lower case, without the ``*`` of a node not responding) SLURM schedules no job on.
UNUSABLE_STATES = ("down", "drain", "drng", "fail", "failg", "maint", "futr", "inval", "unk", "npc", "plnd")


@dataclass
class Facts:
    """What the batch shell saw (host names expanded)."""

    job_id: str
    restart: int
    exit_status: int
    nodes: list[str]
    healthy: list[str]
    excluded: list[str] = field(default_factory=list)
    partition_nodes: dict[str, str] = field(default_factory=dict)  # host -> sinfo state
    note: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # a rank's own error (failure_note ERROR_SUFFIX)
    max_restarts: int = 3


@dataclass(frozen=True)
class Decision:
    """Requeue (excluding ``exclude``) or stop; ``line`` says which and why."""

    requeue: bool
    exclude: list[str]
    line: str
    entry: dict[str, Any] | None = None


def usable(state: str) -> bool:
    """Whether SLURM would start a job on a node in sinfo state ``state`` (``*``: not responding)."""
    return not state.endswith("*") and not state.lower().startswith(UNUSABLE_STATES)


def decide(facts: Facts, earlier: list[dict[str, Any]]) -> Decision:
    """The decision for ``facts``, given this run's earlier recoveries (:func:`read_log`)."""
    job = f"job {facts.job_id}"
    if facts.exit_status == EXIT_USAGE:
        return Decision(
            False, facts.excluded, f"{job}: not restarted: the run stopped on a mistake in its input"
        )
    note = facts.note or {}
    answered = set(facts.healthy)
    lost = [host for host in facts.nodes if host not in answered] if answered else []
    noted = _as_nodes([str(h) for h in note.get("hosts") or []], facts.nodes)
    if lost:
        cause, failed = "lost node", lost
    elif facts.error is not None:
        where = facts.error.get("host") or "?"
        return Decision(
            False,
            facts.excluded,
            f"{job}: not restarted: rank {facts.error.get('rank')} on {where} raised an error in the run "
            "(it would fail again); see the job's .err file",
        )
    elif note.get("cause") == "hang" or facts.exit_status == EXIT_HANG:
        cause, failed = "hang", noted
    elif note.get("cause") == "lost_peer" or facts.exit_status > 128:
        cause, failed = "rank lost", []
    else:
        return Decision(
            False,
            facts.excluded,
            f"{job}: not restarted: the run failed (exit status {facts.exit_status}) on nodes that all "
            "answer: an error in the run, not the machine; see the job's .err file",
        )
    where = f" on {', '.join(failed or noted)}" if failed or noted else ""
    mine = [e for e in earlier if e.get("job_id") == facts.job_id]
    if len(mine) >= facts.max_restarts:
        return Decision(
            False,
            facts.excluded,
            f"{job}: {cause}{where}; not requeued: it was restarted {len(mine)} time(s) already "
            f"(slurm.max_restarts={facts.max_restarts})",
        )
    exclude = sorted(set(facts.excluded) | set(failed))
    left = [h for h, state in facts.partition_nodes.items() if usable(state) and h not in exclude]
    needed = len(facts.nodes)
    if facts.partition_nodes and len(left) < needed:
        return Decision(
            False,
            exclude,
            f"{job}: {cause}{where}; no healthy nodes remain: the job needs {needed}, the partition has "
            f"{len(left)} usable outside the excluded ({', '.join(exclude) or 'none'})",
        )
    entry = {
        "job_id": facts.job_id,
        "restart": facts.restart + 1,
        "cause": cause,
        "hosts": failed or noted,
        "excluded": exclude,
        "exit_status": facts.exit_status,
        "global_step": note.get("global_step"),
        "failed_at": note.get("time") or time.time(),
    }
    without = f" without {', '.join(failed)}" if failed else " on the same nodes"
    return Decision(
        True, exclude, f"{job}: {cause}{where}; requeued{without} (restart {entry['restart']})", entry
    )


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every recovery in the log at ``path`` (lines that do not parse are skipped)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def restart_entry(
    recovery: dict[str, Any], checkpoint: str | None, global_step: int, now: float
) -> dict[str, Any]:
    """The RunRecord's entry for a recovery, once the requeued job trains again at ``global_step``."""
    failed_step = recovery.get("global_step")
    return {
        "restart": recovery.get("restart"),
        "job_id": recovery.get("job_id"),
        "cause": recovery.get("cause"),
        "hosts": recovery.get("hosts") or [],
        "excluded": recovery.get("excluded") or [],
        "error": recovery.get("error"),
        "failed_step": failed_step,
        "checkpoint": checkpoint,
        "resumed_step": global_step,
        "steps_lost": None if failed_step is None else max(0, int(failed_step) - global_step),
        "time_lost_s": round(now - float(recovery.get("failed_at") or now), 3),
    }


def _reopen_record(run_dir: str | None) -> str | None:
    """The requeued job continues the run: its RunRecord, ended ``failed`` by the lost attempt, is marked
    running again (so the job adopts it instead of starting a record of its own). The error it held."""
    if not run_dir:
        return None
    from itwinai_lightning import records

    try:
        record = records.load(records.record_path(run_dir, "fit"))
    except (OSError, ValueError):
        return None
    if record.get("status") != "failed":
        return None
    records.amend(run_dir, fields={"status": "running", "error": None})
    error = record.get("error")
    return str(error).splitlines()[0] if error else None


def _as_nodes(hosts: list[str], nodes: list[str]) -> list[str]:
    """Host names as the ranks saw them (maybe fully qualified) -> the allocation's SLURM node names."""
    found = []
    for host in hosts:
        short = host.split(".")[0]
        found += [n for n in nodes if n in (host, short) and n not in found]
    return found


def _words(text: str) -> list[str]:
    return [w for w in text.split() if w and w != "(null)"]


def _partition(text: str) -> dict[str, str]:
    """``sinfo -h -N -o '%N %t'`` output -> {host: state} (a host listed twice keeps its first state)."""
    nodes: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            nodes.setdefault(parts[0], parts[1])
    return nodes


USAGE = (
    "usage: itwinai-lightning slurm recover RUN_DIR --job ID --restart N --status S --nodes 'H ...' "
    "--healthy 'H ...' [--excluded 'H ...'] [--partition SINFO_OUTPUT] [--note FILE] [--max-restarts N]"
)


def main(argv: list[str]) -> int:
    """The job script's call: prints ``requeue HOST,...`` or ``stop`` on stdout, the reason on stderr."""
    if not argv or argv[0].startswith("--"):
        raise UserError(USAGE)
    run_dir, options = Path(argv[0]), argv[1:]
    if len(options) % 2:
        raise UserError(USAGE)
    given = dict(zip(options[::2], options[1::2], strict=True))
    try:
        facts = Facts(
            job_id=given["--job"],
            restart=int(given.get("--restart") or 0),
            exit_status=int(given["--status"]),
            nodes=_words(given["--nodes"]),
            healthy=_words(given.get("--healthy", "")),
            excluded=_words(given.get("--excluded", "")),
            partition_nodes=_partition(given.get("--partition", "")),
            note=failure_note.read(given["--note"]) if given.get("--note") else None,
            error=failure_note.read(given["--note"] + failure_note.ERROR_SUFFIX)
            if given.get("--note")
            else None,
            max_restarts=int(given.get("--max-restarts") or 3),
        )
    except (KeyError, ValueError) as err:
        raise UserError(f"{USAGE} ({err})") from None
    log = run_dir / RECOVERY_LOG_NAME
    decision = decide(facts, read_log(log))
    if decision.entry is not None:
        decision.entry["error"] = _reopen_record((facts.note or {}).get("run_dir"))
        with log.open("a") as fh:
            fh.write(json.dumps(decision.entry) + "\n")
    print(f"itwinai-lightning: {decision.line}", file=sys.stderr, flush=True)
    print(f"requeue {','.join(decision.exclude)}" if decision.requeue else "stop")
    return 0
