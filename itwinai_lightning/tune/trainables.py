"""The Ray Tune function trainables: a single-process trial, and an N-worker DDP trial whose rank 0 is this
process and whose other ranks are warm actors of :mod:`itwinai_lightning.tune.pool`. Both run the ordinary
fit path of :func:`itwinai_lightning.tune.trial.fit_trial`. Ray is imported inside the functions only.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from itwinai_lightning.tune import pool
from itwinai_lightning.tune.teardown import allow_reuse_after_teardown, trial_running
from itwinai_lightning.tune.trial import fit_trial


def run_trial(
    config: dict[str, Any], base_argv: list[str], experiment_dir: str, tracking: Any = None
) -> None:
    """Ray Tune function trainable for a single-process trial."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()

    def report(metrics: dict[str, float], directory: str) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    run_dir = Path(experiment_dir) / "trials" / trial_id
    with trial_running():  # Tune's cleanup waits for this (see tune/teardown.py)
        fit_trial(base_argv, config, run_dir, trial_id, report, tune.get_checkpoint(), tracking=tracking)


def run_ddp_trial(
    config: dict[str, Any],
    base_argv: list[str],
    experiment_dir: str,
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    tracking: Any = None,
) -> None:
    """Ray Tune function trainable for an N-worker DDP trial: this process is rank 0, warm actors the rest.

    See :mod:`itwinai_lightning.tune.pool` for how the ranks are booked, reused and replaced.
    """
    import ray
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    ranks = pool.acquire(workers - 1, cpus_per_worker, gpus_per_worker)
    envs = pool.rank_envs(workers)
    checkpoint = tune.get_checkpoint()
    run_dir = Path(experiment_dir) / "trials" / trial_id
    job = {"base_argv": base_argv, "config": config, "run_dir": str(run_dir), "trial_id": trial_id,
           "checkpoint": checkpoint, "tracking": tracking}  # fmt: skip
    pending = [
        actor.run.remote({**job, "env": env}) for actor, env in zip(ranks.actors, envs[1:], strict=True)
    ]

    allow_reuse_after_teardown()
    stopped: list[SystemExit] = []
    finished = threading.Event()
    pool.watch(pending, finished)

    def report(metrics: dict[str, float], directory: str) -> bool:
        try:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        except SystemExit as stop:  # Tune stops or pauses the trial here: all ranks end the fit together
            stopped.append(stop)
            return True
        return False

    with trial_running():  # Tune's cleanup and reuse wait for this (see tune/teardown.py)
        try:
            pool.enter_rank(envs[0])
            fit_trial(base_argv, config, run_dir, trial_id, report, checkpoint, pool.RANK_ARGS, tracking)
            ray.get(pending)
        except BaseException:
            pool.discard()  # other ranks may wait in a collective: the retry gets fresh actors
            raise
        finally:
            finished.set()
            pool.fresh_process_group()
    if stopped:
        # end the way Tune ended it: returning would make Tune's wrapper report once more and wait forever
        raise stopped[0]
