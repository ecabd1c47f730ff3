"""The RunRecord schema: typed shapes of ``run_record.json`` (and of the per-stage records).

Units are in the key names: ``_s`` seconds, ``_wh`` watt-hours, ``_w`` watts, ``_pct`` percent, ``_gb``
GiB, ``_mhz`` MHz, ``_c`` degrees Celsius, ``flops`` floating-point operations (``_per_s``: per second).

**One shape per figure.** A figure is always a number: for a run of many ranks it is the figure that
sets the pace (the slowest rank's time, the sum of the ranks' energy and samples, the mean utilisation).
The spread across ranks, where there is one, is a separate key ``<figure>_ranks`` holding
:class:`RankStats`. Readers never have to guess whether a key is a number or a mapping.

Changes are additive within a schema version: readers ignore keys they do not know.
"""

from __future__ import annotations

from typing import Any, TypedDict

SCHEMA_VERSION = 1
#: The fit's record; the other stages write ``run_record.<stage>.json`` beside it (see ``store``).
RECORD_FILENAME = "run_record.json"
#: the symbolic link in a root of runs to its newest run directory (see itwinai_lightning.runs.run_dir)
LATEST_LINK = "latest"
STAGES = ("fit", "validate", "test", "predict")
FINISHED = ("completed", "failed", "interrupted")


class RankStats(TypedDict):
    """One per-rank figure across ranks."""

    min: float
    mean: float
    max: float


class EpochEntry(TypedDict, total=False):
    """One training epoch, merged from the callbacks that measured it (keyed by ``epoch``).

    TimingMonitor: ``ranks``, ``wall_time_s`` (incl. validation), ``train_time_s``, ``val_time_s``,
    ``steps``, ``samples`` (all ranks), ``samples_per_s``, ``step_time_{mean,p50,p90,p99}_s`` (the slowest
    rank's), ``global_batch_size``, ``time_to_first_step_s``, ``flops_per_s`` (achieved model FLOP/s, all
    ranks), ``mfu_pct`` (model FLOPs utilisation), ``elapsed_s`` (fit time at the end of this epoch,
    across requeues) and ``metrics`` (the scalars the module logged for this epoch, e.g. ``val_loss``).
    GPUMonitor: ``energy_wh`` (sum over ranks), ``gpu_util_mean_pct``, ``gpu_util_max_pct``,
    ``gpu_power_mean_w`` (mean over ranks), ``cpu_util_mean_pct``, ``host_mem_max_gb``,
    ``integrated_energy_wh`` (trapezoid only, for comparison with the counter), ``cpu_energy_wh`` (RAPL
    package + DRAM of the ranks' sockets, each counted once).
    Any figure may come with ``<figure>_ranks`` (:class:`RankStats`).
    """

    epoch: int
    ranks: int
    wall_time_s: float
    train_time_s: float
    val_time_s: float
    steps: int
    samples: int
    samples_per_s: float
    step_time_mean_s: float
    step_time_p50_s: float
    step_time_p90_s: float
    step_time_p99_s: float
    elapsed_s: float
    flops_per_s: float
    mfu_pct: float
    metrics: dict[str, float]
    energy_wh: float
    gpu_util_mean_pct: float
    gpu_util_max_pct: float
    gpu_power_mean_w: float
    cpu_util_mean_pct: float
    host_mem_max_gb: float
    integrated_energy_wh: float
    cpu_energy_wh: float


class Summary(TypedDict, total=False):
    """Run-level figures. Those marked *derived* are computed by :func:`records.derive.derive` only."""

    fit_wall_time_s: float  # setup to fit end, summed over requeued jobs
    wall_time_s: float  # validate/test/predict: setup to the stage's end
    metrics: dict[str, float]  # validate/test/predict: the scalars the module logged
    time_to_first_step_s: float
    mean_epoch_time_s: float
    samples_per_s: float
    total_samples: int
    epochs_completed: int
    step_time_p50_s: float  # median over epochs
    flops_per_sample: float  # model FLOPs of one training sample (forward + backward), counted once
    peak_flops_per_s: float  # the devices' peak (all ranks) for the precision, when known
    flops_per_s: float  # derived: flops_per_sample x samples_per_s
    mfu_pct: float  # derived: 100 x flops_per_s / peak_flops_per_s
    monitor: str  # the metric time-to-accuracy follows (e.g. "val_loss") ...
    monitor_mode: str  # ... and whether lower ("min") or higher ("max") is better
    best_metric: float  # derived: the best value of ``monitor`` over the epochs
    energy_wh: float  # the GPUs'
    cpu_energy_wh: float  # the CPU sockets' (RAPL)
    energy_per_sample_wh: float  # derived: (energy_wh + cpu_energy_wh) / total_samples
    gpu_util_mean_pct: float
    gpu_power_mean_w: float
    cpu_util_mean_pct: float
    host_mem_max_gb: float
    gpu_mem_used_max_gb: float


class Checkpoints(TypedDict, total=False):
    """The checkpoints this run wrote and keeps (paths relative to ``run_dir`` where below it)."""

    best: str | None  # the best of a ModelCheckpoint that monitors a metric
    last: str | None  # the newest (``last.ckpt``, or a monitor-less callback's latest)
    monitor: str | None  # the metric ``best`` is best in
    files: list[str]  # every checkpoint file of this run still on disk, oldest first


class RunRecord(TypedDict, total=False):
    """``run_record.json``. Written by one :class:`~itwinai_lightning.records.recorder.Recorder` per run.

    ``launcher`` is the launcher that started the processes (torchrun|horovodrun|mpirun|srun|ray|local);
    ``hostnames`` every rank's host, distinct, rank 0's first; ``ranks`` rank/hostname/local_rank/
    node_rank of every rank; ``sections`` free-form figures of one contributor each (``pyspy``,
    ``torch_profiler``, ``benchmark``, ``device_monitor``, ``tracking``, ``slurm``).
    """

    schema_version: int
    run_id: str
    created_at: str  # ISO-8601 UTC, first write
    updated_at: str  # ISO-8601 UTC, last write
    stage: str  # fit | validate | test | predict
    status: str  # running | completed | failed | interrupted
    error: str | None
    run_dir: str
    config: dict[str, Any]  # the resolved run config, secrets redacted
    strategy: str | None
    launcher: str | None
    world_size: int
    num_nodes: int
    devices_per_node: int
    accelerator: str | None
    device_names: list[str]
    precision: str | None
    global_batch_size: int | None
    hostnames: list[str]
    ranks: list[dict[str, Any]]
    versions: dict[str, str]  # python, torch, lightning, itwinai_lightning, cuda, the strategy's backend
    cpu_model: str
    threads_per_process: int  # torch's intra-op threads of rank 0 (``OMP_NUM_THREADS``)
    parameters: int | None
    epochs: list[EpochEntry]
    summary: Summary
    checkpoints: Checkpoints  # fit: what this run wrote (``--ckpt_path RUN_DIR`` and the summary read it)
    sections: dict[str, dict[str, Any]]
