"""Preemption-safe checkpoint + requeue for SLURM jobs, without Lightning's signal-handler checkpointing.

The signal handler only sets a flag. At the next safe point (the end of a training batch) all ranks
agree (one tiny all-reduce) that a stop was asked for, save one checkpoint together, and leave; then the
job is requeued and the next start resumes from that checkpoint (the job script passes the newest
checkpoint in the run dir as ``--ckpt_path``; see :mod:`itwinai_lightning.runs.newest`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal as _signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

from itwinai_lightning import compat, records
from itwinai_lightning.launch.sbatch import REQUEUE_FLAG_ENV
from itwinai_lightning.slurm import recovery
from itwinai_lightning.slurm.recovery import RECOVERY_LOG_ENV
from itwinai_lightning.slurm.vote import StopVote
from itwinai_lightning.state_files import PARTIAL_SUFFIX

#: Exit status of ranks that stopped to be requeued (EX_TEMPFAIL: "try again later").
EXIT_REQUEUE = 75


class RequeueExit(SystemExit):
    """Raised on every rank after the requeue checkpoint is saved; the process exits with EXIT_REQUEUE.

    The run continues in the requeued job, so the RunRecord is not ended (see ``records.end_fields``)."""

    run_continues = True

    def __init__(self) -> None:
        super().__init__(EXIT_REQUEUE)


def _job_end_time(job_id: str | None) -> float | None:
    """The job's end (time limit) as a UNIX time, from SLURM_JOB_END_TIME or squeue; None if unknown."""
    value = os.environ.get("SLURM_JOB_END_TIME")
    if value and value.isdigit():
        return float(value)
    if not job_id or shutil.which("squeue") is None:
        return None
    try:
        args = ["squeue", "-h", "-j", job_id, "-o", "%e"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        return datetime.fromisoformat(out).timestamp()
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


class SlurmRequeue(Callback):
    """On ``signal`` (``--signal=USR1@N``, ``scancel --signal=USR1``) or near the time limit: save, requeue.

    ============================  =====================================================================
    Written                       What
    ============================  =====================================================================
    ``<run_dir>/checkpoints/``    ``requeue.ckpt``: full training state at the end of a training batch
    ``requeue.ckpt``              (written as ``.partial`` and renamed, so a resume never sees half a file)
    ``<run_dir>/.requeue``        JSON request for the job script (when ``ITWINAI_REQUEUE_FLAG`` names it):
                                  job id, restart count, reason, epoch, global step, every rank's
                                  global step at the stop (``rank_steps``), checkpoint path
    RunRecord section ``slurm``   ``requeues``: list of those requests; ``resumes``: list of
                                  ``{restart, checkpoint, epoch, global_step}`` (epoch/step at resume);
                                  ``restarts``: each requeue after a failure (:mod:`.recovery`):
                                  ``{restart, job_id, cause, hosts, excluded, error, failed_step,
                                  checkpoint, resumed_step, steps_lost, time_lost_s}`` (seconds from
                                  the failure to training again)
    ============================  =====================================================================

    Args:
        signal: signal name that asks for checkpoint + requeue (``USR1``, ``SIGUSR2``, ...).
        check_every_n_steps: how often the ranks vote on stopping (a non-blocking all-reduce of one value
            over a gloo group, read at the next vote: multi-rank runs stop one vote after the signal).
        time_limit_margin_s: also stop when the job's time limit is this close (seconds); None: signal only.
        requeue: who requeues: ``"auto"`` (the job script if ``ITWINAI_REQUEUE_FLAG`` is set, else this
            callback on rank 0), ``"script"``, ``"self"`` (``scontrol requeue $SLURM_JOB_ID``) or ``"none"``.

    Lightning's own SLURM auto-requeue is switched off while this callback is active.
    """

    def __init__(
        self,
        signal: str = "USR1",
        check_every_n_steps: int = 1,
        time_limit_margin_s: float | None = None,
        requeue: str = "auto",
    ) -> None:
        name = signal.upper() if signal.upper().startswith("SIG") else f"SIG{signal.upper()}"
        if not hasattr(_signal, name):
            raise ValueError(f"SlurmRequeue: unknown signal {signal!r}")
        if requeue not in ("auto", "script", "self", "none"):
            raise ValueError(f"SlurmRequeue: requeue must be auto|script|self|none, not {requeue!r}")
        self.signum = getattr(_signal, name)
        self.check_every_n_steps = max(1, int(check_every_n_steps))
        self.time_limit_margin_s = time_limit_margin_s
        self.requeue = requeue
        self._requested = False
        self._reason = "signal"
        self._previous: Any = None
        self._deadline: float | None = None
        self._vote = StopVote()
        self._batches = 0

    # ----------------------------------------------------------------- signal handling (flag only)
    def _on_signal(self, signum: int, frame: Any) -> None:
        self._requested = True
        self._reason = _signal.Signals(signum).name

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for env in (getattr(trainer.strategy, "cluster_environment", None), _connector_env(trainer)):
            if env is not None and hasattr(env, "auto_requeue"):
                env.auto_requeue = False  # ours replaces Lightning's signal-handler checkpointing
        self._previous = _signal.signal(self.signum, self._on_signal)
        self._vote.setup(trainer)
        self._batches = 0
        if self.time_limit_margin_s is not None and trainer.global_rank == 0:
            end = _job_end_time(os.environ.get("SLURM_JOB_ID"))
            self._deadline = None if end is None else end - float(self.time_limit_margin_s)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._vote.close()
        if self._previous is not None:
            _signal.signal(self.signum, self._previous)
            self._previous = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record_recovery(trainer)
        if trainer.ckpt_path:  # the training state is restored by now: record where we resume
            self._append(
                trainer,
                "resumes",
                {
                    "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
                    "job_id": os.environ.get("SLURM_JOB_ID"),
                    "checkpoint": str(trainer.ckpt_path),
                    "epoch": int(trainer.current_epoch),
                    "global_step": int(trainer.global_step),
                },
            )

    def _record_recovery(self, trainer: pl.Trainer) -> None:
        """A job the batch shell requeued after a failure (:mod:`.recovery`): its RunRecord entry, now that
        it trains again (cause, failed hosts, the checkpoint resumed from, steps and seconds lost)."""
        log = os.environ.get(RECOVERY_LOG_ENV)
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if trainer.global_rank != 0 or not log or restart == 0:
            return
        job_id = os.environ.get("SLURM_JOB_ID")
        found = [
            e
            for e in recovery.read_log(Path(log))
            if e.get("job_id") == job_id and e.get("restart") == restart
        ]
        if not found:
            return
        checkpoint = str(trainer.ckpt_path) if trainer.ckpt_path else None
        entry = recovery.restart_entry(found[-1], checkpoint, int(trainer.global_step), time.time())
        self._append(trainer, "restarts", entry)
        lost, hosts = entry["steps_lost"], ", ".join(entry["hosts"]) or "?"
        rank_zero_info(
            f"itwinai-lightning: restart {restart} after {entry['cause']} on {hosts}: "
            f"training again at step {entry['resumed_step']} from {checkpoint or 'the start'}, "
            f"{entry['time_lost_s']:.0f} s" + (f" and {lost} step(s)" if lost is not None else "") + " lost"
        )

    # ----------------------------------------------------------------- the safe point
    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches += 1  # the same count on every rank: all ranks vote at the same batches
        if self._batches % self.check_every_n_steps != 0:
            return
        local = self._requested
        if self._deadline is not None and time.time() >= self._deadline:
            local, self._reason = True, "time_limit"
        if not self._vote.vote(local):
            return
        self._vote.close()
        path = self._save(trainer)
        request = {
            "job_id": os.environ.get("SLURM_JOB_ID"),
            "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            "reason": self._reason if local else "peer",
            "epoch": int(trainer.current_epoch),
            "global_step": int(trainer.global_step),
            "rank_steps": _rank_steps(trainer),
            "checkpoint": str(path),
            "time": time.time(),
        }
        self._append(trainer, "requeues", request)
        if trainer.global_rank == 0:
            self._request_requeue(request)
        trainer.strategy.barrier("SlurmRequeue.requeue")
        step = trainer.global_step
        rank_zero_info(f"SlurmRequeue: checkpoint {path} saved at step {step}; stopping for requeue")
        raise RequeueExit()

    def _save(self, trainer: pl.Trainer) -> Path:
        final = records.run_dir_of(trainer) / "checkpoints" / "requeue.ckpt"
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        trainer.save_checkpoint(partial)  # every rank takes part (sharded strategies need it)
        trainer.strategy.barrier("SlurmRequeue.save")
        if trainer.global_rank == 0:
            if final.is_dir():
                shutil.rmtree(final)
            os.replace(partial, final)
        trainer.strategy.barrier("SlurmRequeue.rename")
        return final

    def _request_requeue(self, request: dict[str, Any]) -> None:
        flag = os.environ.get(REQUEUE_FLAG_ENV)
        mode = self.requeue if self.requeue != "auto" else ("script" if flag else "self")
        if mode == "script" and flag:
            Path(flag).write_text(json.dumps(request))
        elif mode == "self" and request["job_id"]:
            # the ranks are about to exit; the checkpoint is complete on disk before SLURM sends SIGTERM
            subprocess.run(["scontrol", "requeue", str(request["job_id"])], check=False, timeout=30)

    def _append(self, trainer: pl.Trainer, key: str, entry: dict[str, Any]) -> None:
        if trainer.global_rank != 0:
            return
        records.recorder_of(trainer).append("slurm", key, entry)


def _rank_steps(trainer: pl.Trainer) -> list[int]:
    """Every rank's global step at the stop (one all-gather): the record shows that all ranks stopped
    at the same step."""
    step = torch.tensor([int(trainer.global_step)], device=trainer.strategy.root_device)
    gathered = trainer.strategy.all_gather(step) if trainer.world_size > 1 else step
    return [int(v) for v in gathered.reshape(-1).tolist()]


def _connector_env(trainer: pl.Trainer) -> Any:
    return compat.cluster_environment_of(trainer)
