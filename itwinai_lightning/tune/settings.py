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
from itwinai_lightning.sections import check_known_keys
from itwinai_lightning.settings_help import defaults_of
from itwinai_lightning.tune.search_space import Distribution, parse_search_space


@dataclass
class TuneSection:
    """The ``tune:`` section as written: a Ray Tune sweep over any fit config (docs/tune.md).

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


#: the section's defaults, from the one typed class
DEFAULTS: dict[str, Any] = defaults_of(TuneSection)

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


@dataclass
class TuneSettings:
    """Validated ``tune:`` section."""

    space: dict[str, Distribution]
    metric: str
    mode: str
    num_samples: int
    max_concurrent_trials: int | None
    time_budget_s: float | None
    scheduler: str
    scheduler_options: dict[str, Any]
    search_alg: str
    search_alg_options: dict[str, Any]
    workers_per_trial: int
    cpus_per_worker: float
    gpus_per_worker: float
    max_failures: int
    keep_checkpoints: int
    output_dir: Path
    name: str
    resume: bool
    seed: int | None
    ray: dict[str, Any] = field(default_factory=dict)

    @property
    def experiment_dir(self) -> Path:
        return self.output_dir / self.name

    @property
    def mutations(self) -> dict[str, Distribution]:
        """PBT's mutations: ``scheduler.hyperparam_mutations`` if given, else the whole search space."""
        raw = self.scheduler_options.get("hyperparam_mutations")
        return parse_search_space(raw) if raw else dict(self.space)


def _positive_int(values: dict[str, Any], key: str, minimum: int = 1) -> int:
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"tune.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _number(values: dict[str, Any], key: str, allow_none: bool = False) -> float | None:
    value = values[key]
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise UserError(f"tune.{key} must be a non-negative number, got {value!r}")
    return float(value)


def parse_settings(values: dict[str, Any], root_dir: str | None = None) -> TuneSettings:
    """Check every ``tune.*`` option; the first problem raises :class:`UserError` naming the key.

    ``root_dir``: the base config's ``trainer.default_root_dir``; the default ``output_dir`` is under it."""
    check_known_keys(values, list(DEFAULTS), "tune")
    space = parse_search_space(values["search_space"])
    if values["mode"] not in ("min", "max"):
        raise UserError(f"tune.mode must be 'min' or 'max', got {values['mode']!r}")
    if not isinstance(values["metric"], str) or not values["metric"]:
        raise UserError(f"tune.metric must name a logged metric such as val_loss, got {values['metric']!r}")
    scheduler, scheduler_options = _typed_option(values["scheduler"], SCHEDULERS, "scheduler")
    search_alg, search_alg_options = _typed_option(values["search_alg"], SEARCH_ALGS, "search_alg")
    if search_alg != "random" and any(d.is_grid for d in space.values()):
        grid_key = next(k for k, d in space.items() if d.is_grid)
        raise UserError(
            f"tune.search_space.{grid_key}: grid works only with search_alg random; "
            f"use choice with {search_alg}"
        )
    if scheduler == "pbt" and search_alg != "random":
        raise UserError("tune.scheduler pbt works only with search_alg random (PBT mutates trials itself)")
    ray_options = values["ray"] or {}
    if not isinstance(ray_options, dict):
        raise UserError(f"tune.ray must be a mapping with {', '.join(RAY_KEYS)}, got {ray_options!r}")
    check_known_keys(ray_options, RAY_KEYS, "tune.ray")
    concurrent = values["max_concurrent_trials"]
    seed = values["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise UserError(f"tune.seed must be an integer or null, got {seed!r}")
    settings = TuneSettings(
        space=space,
        metric=values["metric"],
        mode=values["mode"],
        num_samples=_positive_int(values, "num_samples"),
        max_concurrent_trials=None if concurrent is None else _positive_int(values, "max_concurrent_trials"),
        time_budget_s=_number(values, "time_budget_s", allow_none=True),
        scheduler=scheduler,
        scheduler_options=scheduler_options,
        search_alg=search_alg,
        search_alg_options=search_alg_options,
        workers_per_trial=_positive_int(values, "workers_per_trial"),
        cpus_per_worker=_number(values, "cpus_per_worker") or 0.0,
        gpus_per_worker=_number(values, "gpus_per_worker") or 0.0,
        max_failures=_positive_int(values, "max_failures", minimum=0),
        keep_checkpoints=_positive_int(values, "keep_checkpoints"),
        output_dir=Path(str(values["output_dir"] or Path(root_dir or "runs") / "tune"))
        .expanduser()
        .resolve(),
        name=str(values["name"]),
        resume=bool(values["resume"]),
        seed=seed,
        ray={**DEFAULTS["ray"], **ray_options},
    )
    if scheduler == "pbt":
        settings.mutations  # noqa: B018 -- validates hyperparam_mutations before Ray starts
    return settings
