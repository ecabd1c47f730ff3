"""The ``benchmark:`` section: its options, defaults and validation (one clear error per bad key)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from itwinai_lightning import settings_help
from itwinai_lightning.benchmark.launchers import DEFAULT_CALLBACKS, LAUNCHERS, slurm_options
from itwinai_lightning.errors import UserError
from itwinai_lightning.launch.sbatch import split_into_nodes
from itwinai_lightning.sections import parse_section, value_of
from itwinai_lightning.settings_help import defaults_of
from itwinai_lightning.slurm.options import SlurmOptions


@dataclass
class Settings:
    """The ``benchmark:`` section: a grid of strategies x worker counts x repetitions (docs/benchmark.md).

    Args:
        strategies: strategy short names or class paths, one grid axis.
        workers: process counts, the other axis.
        launcher: local, torchrun, mpirun, srun, horovodrun or ray.
        scaling: strong (the global batch is split over the workers) or weak (each keeps the batch).
        batch_size: strong: the global batch; weak: the per-worker batch (default: from the config).
        batch_key: the config key holding the batch size.
        repetitions: runs per configuration; the report shows the median and the spread (min-max).
        warmup_epochs: epochs at the start of each run left out of its epoch time.
        output_dir: where the run directories and the report go.
        profile: add the torch-profiler breakdown (computation vs communication).
        callbacks: class paths appended to the callbacks of every run.
        accelerator: auto (gpu when CUDA is available, else cpu), cpu, gpu, or null to keep the config's.
        timeout_s: a point running longer is killed and recorded as failed (seconds).
        launcher_args: extra arguments for the launcher, e.g. [--oversubscribe] for mpirun.
        submit: submit each point as an sbatch job instead of running it in place.
        slurm: the jobs of submit: any key of the slurm: section (preset, ntasks_per_node, partition,
            account, time, modules, venv, sbatch, setup, ...; the points set nodes and the launch), plus
            wait (block until the jobs end, then report) and poll_s (seconds between queue checks).
        report: write the report at the end.
        threshold_pct: the parallel efficiency (percent) below which the report says scaling stops paying.
        dry_run: print every point's command and write nothing.
        mode: fit (training throughput) or predict (inference: each point predicts the predict set with a
            ShardedPredictionWriter; pass the weights with --ckpt_path, else the model's initial ones).
    """

    strategies: list[str] = field(default_factory=lambda: ["hpc_ddp"])
    workers: list[int] = field(default_factory=lambda: [1, 2])
    launcher: str = "local"
    scaling: str = "strong"
    batch_size: int | None = None
    batch_key: str = "data.init_args.batch_size"
    repetitions: int = 3
    warmup_epochs: int = 1
    output_dir: str = "runs/benchmark"
    profile: bool = False
    callbacks: list[str] = field(default_factory=lambda: list(DEFAULT_CALLBACKS))
    accelerator: str | None = "auto"
    timeout_s: float = 3600
    launcher_args: list[str] = field(default_factory=list)
    submit: bool = False
    slurm: dict[str, Any] = field(default_factory=dict)
    report: bool = True
    threshold_pct: float = 70.0
    dry_run: bool = False
    mode: str = "fit"
    #: ``slurm`` parsed (set by ``__post_init__``; not a key of the section)
    sbatch: SlurmOptions = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """What the types cannot say, checked across keys; one line naming the key (UserError)."""
        self.strategies = [str(s) for s in _as_list(self.strategies, "strategies", "str")]
        for name in self.strategies:
            check_strategy(name)
        workers = [int(n) for n in _as_list(self.workers, "workers", "int")]
        if any(n < 1 for n in workers):
            raise UserError(f"benchmark.workers must be positive integers, got {workers}")
        self.workers = sorted(set(workers))
        choices = {"launcher": LAUNCHERS, "scaling": ("strong", "weak"), "mode": ("fit", "predict")}
        meaning = {"scaling": "'strong' (fixed global batch) or 'weak'", "mode": "'fit' (training) or "
                   "'predict' (inference)"}  # fmt: skip
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                said = meaning.get(key) or f"one of: {', '.join(allowed)}"
                raise UserError(f"benchmark.{key} must be {said}, got {getattr(self, key)!r}")
        if self.repetitions < 1:
            raise UserError(f"benchmark.repetitions must be an integer >= 1, got {self.repetitions!r}")
        if self.warmup_epochs < 0:
            raise UserError(
                f"benchmark.warmup_epochs must be an integer >= 0 (epochs left out of the epoch time), "
                f"got {self.warmup_epochs!r}"
            )
        self.sbatch = slurm_options(self.slurm)  # every benchmark.slurm key checked now, parsed once
        if not 0 < self.threshold_pct <= 100:
            raise UserError(f"benchmark.threshold_pct must be in (0, 100], got {self.threshold_pct}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UserError(f"benchmark.batch_size must be a positive integer, got {self.batch_size!r}")
        if self.accelerator in ("", "none"):
            self.accelerator = None
        if self.scaling == "strong":
            self._check_strong_scaling()

    def _check_strong_scaling(self) -> None:
        if self.batch_size is None:
            raise UserError(
                f"strong scaling needs the global batch size: set --benchmark.batch_size or {self.batch_key} "
                "in the config (or choose --benchmark.scaling weak)"
            )
        bad = [n for n in self.workers if self.batch_size % n]  # type: ignore[union-attr]
        if bad:
            raise UserError(
                f"strong scaling: global batch size {self.batch_size} does not divide by {bad[0]} workers; "
                "change benchmark.batch_size or benchmark.workers"
            )

    def per_worker_batch(self, workers: int) -> int | None:
        """Strong scaling: global batch / N; weak scaling: the batch size itself."""
        if self.batch_size is None:
            return None
        return self.batch_size // workers if self.scaling == "strong" else self.batch_size

    def resolved_accelerator(self) -> str | None:
        if self.accelerator != "auto":
            return self.accelerator
        import torch

        self.accelerator = "gpu" if torch.cuda.is_available() else "cpu"
        return self.accelerator


#: the section's defaults, from the one typed class
DEFAULTS: dict[str, Any] = defaults_of(Settings)


def help_text() -> str:
    """``benchmark --help``: every option with its type, default and meaning, from :class:`Settings`."""
    return settings_help.help_text("itwinai-lightning benchmark", USAGE, Settings, "benchmark")


USAGE = (
    "Run the training config over a grid of strategies x worker counts x repetitions, then write the "
    "scalability report. Every option below may also live in a 'benchmark:' section of any --config file; "
    "everything else is passed to every grid point's fit. Exit code 0 when every point completed, 1 when "
    "some failed, 2 on bad input. 'benchmark report DIR [DIR ...] [--out OUT] [--threshold 70]' rebuilds "
    "a report."
)


def batch_size_from_args(argv: Sequence[str], batch_key: str) -> int | None:
    """The batch size the user's configs and overrides give (later wins), to split or keep per worker."""
    found = value_of(argv, batch_key, batch_key.replace(".init_args.", "."))
    try:
        return int(found) if found is not None else None
    except (TypeError, ValueError):
        return None


#: registry names left out of the error's list (variants and devices the list would drown in)
_UNLISTED = ("deepspeed_stage", "fsdp_cpu", "single_tpu", "single_xla", "xla")


def check_strategy(name: str) -> None:
    """One line (UserError) for a strategy no Trainer would accept, before any grid point starts."""
    import difflib
    import importlib.util

    from lightning.pytorch.strategies import StrategyRegistry

    import itwinai_lightning.strategies  # noqa: F401  (registers hpc_ddp, ... with the registry)

    known = sorted(StrategyRegistry.available_strategies())
    if name in known:
        return
    if "." in name:  # a class path: its module must exist (not imported: DeepSpeed etc. stay unloaded)
        module = name.rpartition(".")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ModuleNotFoundError, ValueError):
            found = False
        if found:
            return
        raise UserError(f"benchmark.strategies: module {module!r} of {name!r} is not installed or misspelt")
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UserError(
        f"benchmark.strategies: unknown strategy {name!r}; {hint}choose from: "
        + ", ".join(n for n in known if "find_unused" not in n and not n.startswith(_UNLISTED))
    )


def check_devices(settings: Settings) -> list[str]:
    """Worker counts against what can run them, before any point starts: with ``submit``, each count must
    split into SLURM nodes of ``slurm.ntasks_per_node``; locally every worker runs on this node, so a GPU
    grid needs that many visible GPUs (UserError). More CPU workers than cores run, but measure the
    contention: returned as a warning line."""

    if settings.submit:
        per_node = settings.sbatch.ntasks_per_node
        for n in settings.workers:
            try:
                split_into_nodes(n, per_node)
            except ValueError as err:
                raise UserError(
                    f"benchmark.workers: {err}; choose worker counts that are multiples of "
                    "benchmark.slurm.ntasks_per_node"
                ) from None
        return []
    top = max(settings.workers)
    if settings.resolved_accelerator() in ("gpu", "cuda"):
        import torch

        visible = torch.cuda.device_count()
        if top > visible:
            raise UserError(
                f"benchmark.workers: {top} workers need {top} GPUs on this node, {visible} visible; lower "
                "benchmark.workers, or run across nodes with --benchmark.submit true"
            )
        return []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if top > cores:
        return [
            f"benchmark: {top} CPU workers on {cores} cores: the larger points measure contention, not "
            "scaling (lower benchmark.workers or use --benchmark.submit true)"
        ]
    return []


def _as_list(value: list[Any], key: str, kind: str) -> list[Any]:
    items = list(value)
    if not items:
        raise UserError(f"benchmark.{key} must be a non-empty list of {kind}s, e.g. [1, 2]; got {value!r}")
    return list(items)


def parse(values: Mapping[str, Any], lightning_argv: Sequence[str]) -> Settings:
    """The ``benchmark:`` section as :class:`Settings`, parsed and validated by jsonargparse (one line
    naming the key for each mistake); without ``batch_size``, the batch the configs and overrides give."""
    batch_key = str(values.get("batch_key") or DEFAULTS["batch_key"])
    values = {k: [v] if k in ("strategies", "workers") and not isinstance(v, list) else v  # one = [one]
              for k, v in values.items()}  # fmt: skip
    if values.get("batch_size") is None:
        values = {**values, "batch_size": batch_size_from_args(lightning_argv, batch_key)}
    return parse_section(Settings, values, "benchmark")
