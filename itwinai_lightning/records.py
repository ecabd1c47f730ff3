"""RunRecord: the one JSON file every run writes (``<run_dir>/run_record.json``) and every report reads.

The run directory is ``trainer.default_root_dir`` (``--trainer.default_root_dir``): the benchmark runner
and the SLURM scripts give each run its own. Only global rank 0 writes; callbacks aggregate across ranks
first and then call :func:`contribute` / :func:`contribute_epoch`.

Schema (version :data:`SCHEMA_VERSION`); units are in the key names (``_s`` seconds, ``_wh`` watt-hours,
``_w`` watts, ``_pct`` percent, ``_gb`` GiB)::

    schema_version   int
    run_id           str     unique per run
    created_at       str     ISO-8601 UTC, first write
    updated_at       str     ISO-8601 UTC, last write
    status           str     "running" | "completed" | "failed" | "interrupted"
    error            str|None
    run_dir          str
    config           dict    resolved run config (secrets redacted), written by the CLI
    strategy         str     short name or class name (e.g. "hpc_ddp", "DDPStrategy")
    launcher         str     the launcher that started the processes (launchers.py): torchrun|horovodrun|
                             mpirun|srun|ray|local
    world_size       int     number of processes
    num_nodes        int     distinct hosts of the ranks
    devices_per_node int     ranks per host
    accelerator      str     "cpu" | "cuda" | ...
    device_names     list[str]
    precision        str
    global_batch_size int|None   samples per optimizer step across all ranks
    hostnames        list[str]   every rank's host, distinct, rank 0's first (gathered from all ranks)
    ranks            list[dict]  rank, hostname, local_rank, node_rank of every rank
    versions         dict[str, str]   python, torch, lightning, itwinai_lightning, cuda, strategy backend
    cpu_model        str     rank 0's CPU model name
    parameters       int     parameters of the LightningModule (as rank 0 holds them)
    stage            str     the LightningCLI subcommand (written by the CLI)
    epochs           list[dict]  one entry per epoch, merged from several callbacks, keyed by "epoch":
        epoch, ranks (processes that contributed),
        wall_time_s (incl. validation), train_time_s, val_time_s, steps, samples (all ranks), samples_per_s,
        step_time_mean_s, step_time_p50_s, step_time_p90_s, step_time_p99_s   (TimingMonitor: slowest rank's)
        energy_wh (sum over ranks), gpu_util_mean_pct / gpu_util_max_pct / gpu_power_mean_w
        ({"min","mean","max"} across ranks), cpu_util_mean_pct (mean over ranks), host_mem_max_gb (max over
        ranks), integrated_energy_wh (trapezoid only, for comparison with the counter)
        <key>_ranks      {"min","mean","max"} across ranks of a per-rank figure, e.g. wall_time_s_ranks,
                         step_time_p50_s_ranks, energy_wh_ranks, gpu_power_max_w_ranks, gpu_temp_max_c_ranks,
                         gpu_mem_used_max_gb_ranks, gpu_sm_clock_mean_mhz_ranks, cpu_util_mean_pct_ranks
    summary          dict   run-level figures:
        fit_wall_time_s, time_to_first_step_s, mean_epoch_time_s, samples_per_s, total_samples,
        energy_wh, energy_per_sample_wh (derived), gpu_util_mean_pct, gpu_power_mean_w, cpu_util_mean_pct,
        epochs_completed, step_time_p50_s (median over epochs), host_mem_max_gb, gpu_mem_used_max_gb
    sections         dict[str, dict]  free-form, one per contributor, e.g.
        "pyspy": {"categories": {name: fraction}, ...}
        "torch_profiler": {"fractions": {"compute","communication","memcpy","other"}, "overlap": f}
        "benchmark": {"grid_point": ..., "repetition": ...}
        "device_monitor": {"backend", "gpu_device", "gpu_unavailable_reason", "interval_s",
                           "energy_source" ("counter"|"integrated"|"mixed"|"none"), "counter_resets",
                           "read_errors", "run": whole-run figures shaped like an epoch entry}

Changes are additive within a schema version: readers must ignore keys they do not know. Every Trainer
is one run: its first :func:`contribute` replaces a finished record left in the directory by an earlier run.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning.pytorch as pl

SCHEMA_VERSION = 1
RECORD_FILENAME = "run_record.json"
FINISHED = ("completed", "failed", "interrupted")
#: Trainer attribute holding the :class:`~itwinai_lightning.placement.Placement` gathered at setup.
PLACEMENT_ATTR = "_itwinai_placement"
#: Trainer attribute caching the run's fixed facts (versions, CPU model, parameters).
FACTS_ATTR = "_itwinai_facts"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def record_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / RECORD_FILENAME


def run_dir_of(trainer: pl.Trainer) -> Path:
    """The run directory owned by this run: ``trainer.default_root_dir``."""
    return Path(trainer.default_root_dir)


def new_record(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": uuid.uuid4().hex[:12],
        "created_at": _now(),
        "updated_at": _now(),
        "status": "running",
        "error": None,
        "run_dir": str(Path(run_dir).resolve()),
        "config": {},
        "strategy": None,
        "launcher": None,
        "world_size": 1,
        "num_nodes": 1,
        "devices_per_node": 1,
        "accelerator": None,
        "device_names": [],
        "precision": None,
        "global_batch_size": None,
        "hostnames": [platform.node()],
        "versions": {},
        "epochs": [],
        "summary": {},
        "sections": {},
    }


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a RunRecord from a file or a run directory; raise ValueError naming the file if unreadable."""
    p = Path(path)
    if p.is_dir():
        p = record_path(p)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read RunRecord {p}: {err}") from err
    if not isinstance(data, dict) or "schema_version" not in data:
        raise ValueError(f"{p} is not a RunRecord (no schema_version)")
    if int(data["schema_version"]) > SCHEMA_VERSION:
        raise ValueError(
            f"{p} has RunRecord schema {data['schema_version']}, newer than this itwinai-lightning "
            f"understands ({SCHEMA_VERSION}); upgrade itwinai-lightning"
        )
    return data


def save(record: Mapping[str, Any], run_dir: str | os.PathLike[str]) -> Path:
    """Write atomically (temp file + rename), so a reader never sees half a record."""
    path = record_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = dict(record)
    record["updated_at"] = _now()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".run_record.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh, indent=2, sort_keys=False, default=_json_default)
    os.replace(tmp, path)
    return path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def load_or_new(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = record_path(run_dir)
    return load(path) if path.exists() else new_record(run_dir)


def _merge_epoch(record: dict[str, Any], epoch: int, values: Mapping[str, Any]) -> None:
    for entry in record["epochs"]:
        if entry.get("epoch") == epoch:
            entry.update(values)
            return
    record["epochs"].append({"epoch": epoch, **values})
    record["epochs"].sort(key=lambda e: e["epoch"])


def _derive(record: dict[str, Any]) -> None:
    """Figures that combine two contributors' numbers (e.g. GPUMonitor's energy, TimingMonitor's samples)."""
    summary = record["summary"]
    energy, samples = summary.get("energy_wh"), summary.get("total_samples")
    if isinstance(energy, int | float) and isinstance(samples, int | float) and samples > 0:
        summary["energy_per_sample_wh"] = energy / samples


def update(
    run_dir: str | os.PathLike[str],
    *,
    fields: Mapping[str, Any] | None = None,
    summary: Mapping[str, Any] | None = None,
    epoch: int | None = None,
    epoch_values: Mapping[str, Any] | None = None,
    section: str | None = None,
    section_values: Mapping[str, Any] | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Read-merge-write the record in ``run_dir``. Top-level ``fields`` replace, the rest merge.

    With ``run_id``: a *finished* record of another run (status completed/failed/interrupted) is replaced
    by a new one, so re-running in the same directory never merges two runs' epochs; a record still
    "running" (e.g. pre-seeded by the benchmark runner with its section) is adopted.
    """
    record = load_or_new(run_dir)
    if run_id is not None and record.get("run_id") != run_id:
        if record.get("status") in FINISHED:
            record = new_record(run_dir)
        record["run_id"] = run_id
    if fields:
        record.update(fields)
    if summary:
        record["summary"].update(summary)
    if epoch is not None and epoch_values:
        _merge_epoch(record, epoch, epoch_values)
    if section is not None and section_values is not None:
        record["sections"].setdefault(section, {}).update(section_values)
    _derive(record)
    save(record, run_dir)
    return record


def describe_trainer(trainer: pl.Trainer) -> dict[str, Any]:
    """Top-level fields a Trainer can tell: strategy, launcher, world size, devices, precision, versions."""
    import lightning
    import torch

    from itwinai_lightning import __version__
    from itwinai_lightning.cluster import detect

    strategy = trainer.strategy
    name = getattr(strategy, "short_name", None) or type(strategy).__name__
    root = getattr(strategy, "root_device", None)
    accelerator = root.type if root is not None else "cpu"
    device_names = []
    if accelerator == "cuda" and torch.cuda.is_available():
        device_names = [torch.cuda.get_device_name(root)]
    where: dict[str, Any] = {
        "launcher": detect().launcher,
        "world_size": int(trainer.world_size),
        "num_nodes": int(trainer.num_nodes),
        "devices_per_node": int(trainer.num_devices),
    }
    placed = getattr(trainer, PLACEMENT_ATTR, None)
    if placed is not None:  # what every rank reported beats the Trainer's arguments
        where = placed.record_fields()
    facts = getattr(trainer, FACTS_ATTR, None)
    if facts is None:  # what does not change during a run is looked up once, not at every contribution
        facts = {
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "lightning": lightning.__version__,
                "itwinai_lightning": __version__,
                **({"cuda": str(torch.version.cuda)} if torch.version.cuda else {}),
                **_strategy_backend_version(name),
            },
            "cpu_model": cpu_model(),
            "parameters": _parameters(trainer),
        }
        setattr(trainer, FACTS_ATTR, facts)
    return {
        "strategy": name,
        **where,
        "accelerator": accelerator,
        "device_names": device_names,
        "precision": str(trainer.precision),
        **facts,
    }


def cpu_model() -> str:
    """This host's CPU model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _parameters(trainer: pl.Trainer) -> int | None:
    """Parameters of the LightningModule (as this rank holds them)."""
    module = getattr(trainer, "lightning_module", None)
    try:
        return int(sum(p.numel() for p in module.parameters())) if module is not None else None
    except (AttributeError, RuntimeError):
        return None


def _strategy_backend_version(strategy: str) -> dict[str, str]:
    """The version of the library behind the strategy (DeepSpeed, Horovod, Ray), read from metadata."""
    from importlib import metadata

    for dist in ("deepspeed", "horovod", "ray"):
        if dist in strategy.lower():
            try:
                return {dist: metadata.version(dist)}
            except metadata.PackageNotFoundError:
                return {}
    return {}


def end_fields(exception: BaseException | None = None) -> dict[str, Any] | None:
    """The record's ``status`` and ``error`` at the end of fit: ``completed``; ``interrupted`` (Ctrl-C, or
    ``SystemExit``: a stop asked of the process, e.g. Ray Tune ending a trial) or ``failed``, each with the
    exception's message, secrets redacted. ``None`` when the run goes on in another process (an exception
    with ``run_continues = True``, e.g. a SLURM requeue exit): the record stays ``running``, so the resumed
    job adopts it instead of starting anew."""
    if exception is None:
        return {"status": "completed", "error": None}
    if getattr(exception, "run_continues", False):
        return None
    from itwinai_lightning.secrets import redact

    status = "interrupted" if isinstance(exception, (KeyboardInterrupt, SystemExit)) else "failed"
    return {"status": status, "error": redact(f"{type(exception).__name__}: {exception}")}


def contribute(
    trainer: pl.Trainer,
    *,
    summary: Mapping[str, Any] | None = None,
    epoch: int | None = None,
    epoch_values: Mapping[str, Any] | None = None,
    section: str | None = None,
    section_values: Mapping[str, Any] | None = None,
    fields: Mapping[str, Any] | None = None,
) -> None:
    """Merge figures into this run's record. Call on every rank; only global rank 0 writes."""
    if trainer.global_rank != 0:
        return
    run_id = getattr(trainer, "_itwinai_run_id", None)
    if run_id is None:  # one Trainer = one run: its first contribution starts a fresh record
        run_id = uuid.uuid4().hex[:12]
        trainer._itwinai_run_id = run_id  # type: ignore[attr-defined]
    run_dir = run_dir_of(trainer)
    merged = describe_trainer(trainer)
    if fields:
        merged.update(fields)
    update(
        run_dir,
        fields=merged,
        summary=summary,
        epoch=epoch,
        epoch_values=epoch_values,
        section=section,
        section_values=section_values,
        run_id=run_id,
    )
