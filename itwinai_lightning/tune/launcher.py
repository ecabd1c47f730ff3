"""Run a validated sweep on Ray Tune: concurrent single-process trials or N-worker DDP trials.

=====================  =========================================================================
mode                   what one trial is
=====================  =========================================================================
workers_per_trial: 1   a function trainable running the fit in its own Ray worker process
                       (``cpus_per_worker``/``gpus_per_worker`` reserved); trials run concurrently
workers_per_trial: N   one placement group of N bundles per trial; the function trainable is rank 0
                       and N-1 warm Ray actors in the same placement group are the other ranks of
                       a ``ray_ddp`` fit; Tune reuses the trainable (``reuse_actors``), which keeps
                       the actors for the next trial (see :mod:`itwinai_lightning.tune.pool`)
=====================  =========================================================================

Ray (and the search-algorithm packages) are imported inside the functions only.
"""

from __future__ import annotations

from typing import Any

from itwinai_lightning.errors import require
from itwinai_lightning.strategies.ray_launcher import init_ray
from itwinai_lightning.tune.guard_marker import mark_aborted
from itwinai_lightning.tune.search_space import to_param_space
from itwinai_lightning.tune.settings import TuneSettings


def make_scheduler(settings: TuneSettings, max_epochs: int) -> Any:
    """FIFO, ASHA, HyperBand, median stopping or PBT, with per-epoch time units."""
    from ray.tune import schedulers

    options = dict(settings.scheduler_options)
    name = settings.scheduler
    if name == "fifo":
        return schedulers.FIFOScheduler()
    if name == "asha":
        options.setdefault("max_t", max_epochs)
        options.setdefault("grace_period", 1)
        from itwinai_lightning.tune.kept_asha import KeptASHA

        return KeptASHA(str(settings.experiment_dir), time_attr="training_iteration", **options)
    if name == "hyperband":
        options.setdefault("max_t", max_epochs)
        return schedulers.HyperBandScheduler(time_attr="training_iteration", **options)
    if name == "median":
        options.setdefault("grace_period", 1)
        return schedulers.MedianStoppingRule(time_attr="training_iteration", **options)
    options.pop("hyperparam_mutations", None)
    options.setdefault("perturbation_interval", 1)
    mutations = {key: dist.to_mutation() for key, dist in settings.mutations.items()}
    return schedulers.PopulationBasedTraining(
        time_attr="training_iteration", hyperparam_mutations=mutations, **options
    )


def make_search_alg(settings: TuneSettings) -> Any:
    """``None`` (Ray's random/grid generator), Optuna or HyperOpt; each honours ``tune.seed``."""
    options = dict(settings.search_alg_options)
    if settings.search_alg == "random":
        from ray.tune.search import BasicVariantGenerator

        options.setdefault("max_concurrent", settings.max_concurrent_trials or 0)
        return BasicVariantGenerator(random_state=settings.seed, **options)
    if settings.search_alg == "optuna":
        require("optuna", "ray")
        from ray.tune.search.optuna import OptunaSearch

        if settings.seed is not None:
            options.setdefault("seed", settings.seed)
        return OptunaSearch(**options)
    require("hyperopt", "ray")
    from ray.tune.search.hyperopt import HyperOptSearch

    if settings.seed is not None:
        options.setdefault("random_state_seed", settings.seed)
    return HyperOptSearch(**options)


def make_trainable(settings: TuneSettings, base_argv: list[str], tracking: Any = None) -> Any:
    from ray import tune

    from itwinai_lightning.tune import trainables
    from itwinai_lightning.tune.teardown import waits_for_teardown

    experiment = str(settings.experiment_dir)
    workers = settings.workers_per_trial
    if workers == 1:
        trainable = tune.with_parameters(
            trainables.run_trial, base_argv=base_argv, experiment_dir=experiment, tracking=tracking
        )
        return tune.with_resources(
            waits_for_teardown(trainable), {"cpu": settings.cpus_per_worker, "gpu": settings.gpus_per_worker}
        )
    trainable = tune.with_parameters(
        trainables.run_ddp_trial,
        base_argv=base_argv,
        experiment_dir=experiment,
        workers=workers,
        cpus_per_worker=settings.cpus_per_worker,
        gpus_per_worker=settings.gpus_per_worker,
        tracking=tracking,
    )
    return tune.with_resources(waits_for_teardown(trainable), ddp_resources(settings))


def ddp_resources(settings: TuneSettings) -> Any:
    """All N ranks of a trial booked at once: bundle 0 for the trainable (rank 0), 1..N-1 for the actors."""
    from ray import tune

    bundle = {"CPU": settings.cpus_per_worker or 0.01}
    if settings.gpus_per_worker:
        bundle["GPU"] = settings.gpus_per_worker
    return tune.PlacementGroupFactory(
        [dict(bundle) for _ in range(settings.workers_per_trial)], strategy="PACK"
    )


#: Ray Tune settings that keep its noise out of the user's terminal (set unless the user set them):
#: no auto-added TensorBoard logger (see ``run_sweep``), no "snapshotting ... may become a bottleneck"
#: warning for the tiny checkpoints every trial epoch writes
QUIET_TUNE_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def run_sweep(settings: TuneSettings, base_argv: list[str], max_epochs: int, tracking: Any = None) -> Any:
    """Start (or resume) the sweep and block until it ends; returns Ray's ``ResultGrid``."""
    import os

    for key, value in QUIET_TUNE_ENV.items():
        os.environ.setdefault(key, value)
    init_ray(settings.ray["address"], settings.ray["num_cpus"], settings.ray["temp_dir"])
    from ray import tune

    from itwinai_lightning.tune.guard import MissingMetric

    guard = MissingMetric(settings.metric)

    trainable = make_trainable(settings, base_argv, tracking)
    path = str(settings.experiment_dir)
    if settings.resume and tune.Tuner.can_restore(path):
        print(f"tune: resuming the sweep in {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        grid = tuner.fit()
        stop_on_user_error(guard, settings)
        return grid
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    run_config = tune.RunConfig(
        # Ray's own per-trial result files (ResultGrid reads them); no TensorBoard copy in Ray's temp dir,
        # whose "tensorboard --logdir /tmp/ray/..." hint would point away from the run's own logs
        callbacks=[CSVLoggerCallback(), JsonLoggerCallback()],
        name=settings.name,
        storage_path=str(settings.output_dir),
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=settings.keep_checkpoints),
        stop=guard,
        verbose=1,
    )
    tune_config = tune.TuneConfig(
        metric=settings.metric,
        mode=settings.mode,
        num_samples=settings.num_samples,
        # the random generator takes the cap itself (above); Ray would warn that this one is ignored
        max_concurrent_trials=None if settings.search_alg == "random" else settings.max_concurrent_trials,
        time_budget_s=settings.time_budget_s,
        scheduler=make_scheduler(settings, max_epochs),
        search_alg=make_search_alg(settings),
        # multi-worker trials: keep the trainable, its placement group and its warm ranks for the next trial
        reuse_actors=settings.workers_per_trial > 1,
    )
    tuner = tune.Tuner(
        trainable,
        param_space=to_param_space(settings.space),
        tune_config=tune_config,
        run_config=run_config,
    )
    grid = tuner.fit()
    stop_on_user_error(guard, settings)
    return grid


def stop_on_user_error(guard: Any, settings: TuneSettings) -> None:
    """A sweep stopped on a user error: mark its directory aborted, stop Ray, then raise the one line.

    Ray is shut down *before* the line is printed: its log monitor forwards the trial workers' output
    (their teardown tracebacks too) to this terminal until then, and the user's line must be the last one.
    The marker lets the corrected command replace this sweep and refuses to resume it.
    """
    from itwinai_lightning.errors import UserError

    try:
        guard.check()
    except UserError as err:
        mark_aborted(settings.experiment_dir, str(err))
        import ray

        ray.shutdown()
        raise
