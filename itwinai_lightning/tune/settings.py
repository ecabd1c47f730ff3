"""The ``tune:`` section: options, defaults and their validation (no Ray import here).

=========================  ==========================================================================
key                        meaning
=========================  ==========================================================================
search_space               dotted config key -> distribution (see :mod:`.search_space`)
metric, mode               what to optimise: a logged metric (``val_loss``) and ``min`` | ``max``
num_samples                trials to sample (times the grid size when a ``grid`` is used)
max_concurrent_trials      cap on trials running at once (``null``: as many as resources allow)
time_budget_s              stop the whole sweep after this many seconds (``null``: no limit)
scheduler                  ``fifo`` | ``asha`` | ``hyperband`` | ``median`` | ``pbt``, or
                           ``{type: asha, grace_period: 1, reduction_factor: 2, ...}``
search_alg                 ``random`` | ``optuna`` | ``hyperopt``, or ``{type: optuna, ...}``
workers_per_trial          1: concurrent single-process trials; N > 1: each trial is an N-rank DDP
                           fit (strategy ``ray_ddp``) on warm Ray actors reused across trials
cpus_per_worker            CPUs reserved per trial process / per DDP worker
gpus_per_worker            GPUs reserved per trial process / per DDP worker
max_failures               retries of a crashing trial before it is reported as failed
keep_checkpoints           checkpoints kept per trial (the latest is used for resume/PBT)
output_dir, name           results go to ``<output_dir>/<name>/``: results.csv, best.yaml, trials/;
                           output_dir defaults to ``<trainer.default_root_dir>/tune`` (the base run's
                           directory, ``runs/tune`` without one), not the directory tune was started in
resume                     continue an interrupted sweep found in ``<output_dir>/<name>``
seed                       seed for the search algorithm's sampling (``null``: random)
ray                        ``{address: null, num_cpus: null, temp_dir: null}``; address ``auto`` or
                           ``host:port`` joins an existing cluster, ``null`` starts a local one
=========================  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from itwinai_lightning.errors import UserError
from itwinai_lightning.sections import check_known_keys, parse_section
from itwinai_lightning.settings_help import defaults_of
from itwinai_lightning.tune.search_space import Distribution, parse_search_space


@dataclass
class TuneSettings:
    """The ``tune:`` section: a Ray Tune sweep over any fit config (docs/tune.md), parsed and validated by
    jsonargparse (:func:`parse_settings`); the same class gives ``tune --help``.

    Args:
        search_space: dotted config key -> distribution, e.g. {model.init_args.lr: {loguniform: [1.0e-4,
            1.0e-1]}}; distributions: uniform, quniform, loguniform, randint, choice, grid.
        metric: the logged metric to optimise (it must be logged by the model).
        mode: min or max.
        num_samples: trials to sample (times the grid size when a grid is used).
        max_concurrent_trials: cap on trials running at once (null: as many as resources allow).
        time_budget_s: stop the whole sweep after this many seconds (null: no limit).
        scheduler: fifo, asha, hyperband, median or pbt, or {type: asha, grace_period: 1, ...}.
        search_alg: random, optuna or hyperopt, or {type: optuna, ...}.
        workers_per_trial: 1: concurrent single-process trials; N: each trial is an N-rank DDP fit.
        cpus_per_worker: CPUs reserved per trial process / per DDP worker.
        gpus_per_worker: GPUs reserved per trial process / per DDP worker.
        max_failures: retries of a crashing trial before it is reported as failed.
        keep_checkpoints: checkpoints kept per trial (the latest is used for resume and PBT).
        output_dir: results go to <output_dir>/<name>/: results.csv, best.yaml, trials/ (default:
            <trainer.default_root_dir>/tune, under the base config's run directory).
        name: the sweep's name; an existing sweep of that name is never overwritten.
        resume: continue the interrupted sweep in <output_dir>/<name>.
        seed: seed of the search algorithm's sampling (null: random).
        ray: {address: null | auto | host:port, num_cpus: null, temp_dir: null}; null starts a local Ray.
    """

    search_space: dict[str, Any] = field(default_factory=dict)
    metric: str = "val_loss"
    mode: str = "min"
    num_samples: int = 4
    max_concurrent_trials: int | None = None
    time_budget_s: float | None = None
    scheduler: str | dict[str, Any] = "fifo"
    search_alg: str | dict[str, Any] = "random"
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 0
    keep_checkpoints: int = 2
    output_dir: str | None = None
    name: str = "sweep"
    resume: bool = False
    seed: int | None = None
    ray: dict[str, Any] = field(default_factory=lambda: {"address": None, "num_cpus": None, "temp_dir": None})

    def __post_init__(self) -> None:
        """Every check across keys; the first problem raises :class:`UserError` naming the key. After it,
        ``scheduler`` and ``search_alg`` are names, ``output_dir`` is absolute."""
        # derived (not options): the distributions, and the scheduler's and search algorithm's options
        self.space: dict[str, Distribution] = parse_search_space(self.search_space)
        if self.mode not in ("min", "max"):
            raise UserError(f"tune.mode must be 'min' or 'max', got {self.mode!r}")
        if not self.metric:
            raise UserError(f"tune.metric must name a logged metric such as val_loss, got {self.metric!r}")
        self.scheduler, options = _typed_option(self.scheduler, SCHEDULERS, "scheduler")
        self.scheduler_options: dict[str, Any] = options
        self.search_alg, options = _typed_option(self.search_alg, SEARCH_ALGS, "search_alg")
        self.search_alg_options: dict[str, Any] = options
        if self.search_alg != "random" and any(d.is_grid for d in self.space.values()):
            grid_key = next(k for k, d in self.space.items() if d.is_grid)
            raise UserError(
                f"tune.search_space.{grid_key}: grid works only with search_alg random; "
                f"use choice with {self.search_alg}"
            )
        if self.scheduler == "pbt" and self.search_alg != "random":
            raise UserError(
                "tune.scheduler pbt works only with search_alg random (PBT mutates trials itself)"
            )
        check_known_keys(self.ray or {}, RAY_KEYS, "tune.ray")
        self.ray = {"address": None, "num_cpus": None, "temp_dir": None, **(self.ray or {})}
        for key in ("num_samples", "workers_per_trial", "keep_checkpoints", "max_concurrent_trials"):
            _at_least(self, key, 1)
        _at_least(self, "max_failures", 0)
        for key in ("time_budget_s", "cpus_per_worker", "gpus_per_worker"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise UserError(f"tune.{key} must be a non-negative number, got {value!r}")
        self.output_dir = str(Path(str(self.output_dir or "runs/tune")).expanduser().resolve())
        if self.scheduler == "pbt":
            self.mutations  # noqa: B018 -- validates hyperparam_mutations before Ray starts

    @property
    def experiment_dir(self) -> Path:
        return Path(str(self.output_dir)) / self.name

    @property
    def mutations(self) -> dict[str, Distribution]:
        """PBT's mutations: ``scheduler.hyperparam_mutations`` if given, else the whole search space."""
        raw = self.scheduler_options.get("hyperparam_mutations")
        return parse_search_space(raw) if raw else dict(self.space)


#: the section's defaults, from the one typed class
DEFAULTS: dict[str, Any] = defaults_of(TuneSettings)

SCHEDULERS = ("fifo", "asha", "hyperband", "median", "pbt")
SEARCH_ALGS = ("random", "optuna", "hyperopt")
RAY_KEYS = ("address", "num_cpus", "temp_dir")


def _typed_option(raw: Any, allowed: tuple[str, ...], key: str) -> tuple[str, dict[str, Any]]:
    """``"asha"`` or ``{type: asha, grace_period: 1}`` -> ``("asha", {"grace_period": 1})``."""
    if isinstance(raw, str):
        name, options = raw, {}
    elif isinstance(raw, dict) and isinstance(raw.get("type"), str):
        options = {k: v for k, v in raw.items() if k != "type"}
        name = raw["type"]
    else:
        raise UserError(
            f"tune.{key} must be a name ({', '.join(allowed)}) or {{type: NAME, ...}}, got {raw!r}"
        )
    name = name.lower()
    if name not in allowed:
        raise UserError(f"tune.{key}: unknown {key} {name!r}; use one of: {', '.join(allowed)}")
    return name, options


def _at_least(settings: TuneSettings, key: str, minimum: int) -> None:
    value = getattr(settings, key)
    if value is not None and value < minimum:
        raise UserError(f"tune.{key} must be an integer >= {minimum}, got {value!r}")


def parse_settings(values: dict[str, Any], root_dir: str | None = None) -> TuneSettings:
    """The ``tune:`` section as :class:`TuneSettings`, parsed and validated by jsonargparse; the first
    problem raises :class:`UserError` naming the key.

    ``root_dir``: the base config's ``trainer.default_root_dir``; the default ``output_dir`` is under it."""
    if not values.get("output_dir"):
        values = {**values, "output_dir": str(Path(root_dir or "runs") / "tune")}
    return parse_section(TuneSettings, values, "tune")
