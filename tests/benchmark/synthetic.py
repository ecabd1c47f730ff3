"""Synthetic RunRecords from a known scaling law (tests, the report benchmark, trying the report out).

Each record is built by the same Recorder (types, derived figures) a real run uses, with the
epoch time from :mod:`scaling`'s law plus optional multiplicative noise, so a fit must recover the law.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from itwinai_lightning.benchmark.report.scaling import basis
from itwinai_lightning.records.recorder import Recorder

#: model FLOPs per sample and one device's peak FLOP/s of the synthetic workload (MFU of a few percent)
FLOPS_PER_SAMPLE = 6e9
PEAK_FLOPS_PER_S = 100e12


def epoch_time(workers: int, law: Sequence[float], mode: str = "strong") -> float:
    """``law = (compute, communication, serial)`` seconds; see scaling.py."""
    row = basis([workers], mode)[0]
    return float(sum(c * b for c, b in zip(law, row, strict=True)))


def make_record(
    run_dir: Path,
    strategy: str,
    workers: int,
    repetition: int,
    law: Sequence[float],
    *,
    mode: str = "strong",
    launcher: str = "torchrun",
    samples_per_epoch: int = 4096,
    epochs: int = 2,
    power_w_per_worker: float | None = 250.0,
    noise: float = 0.0,
    rng: random.Random | None = None,
    profile: bool = True,
    cpu_power_w_per_node: float | None = None,
) -> dict[str, Any]:
    """Build and save one completed RunRecord in ``run_dir``; returns the record."""
    rng = rng or random.Random(0)
    recorder = Recorder(run_dir)  # the same writer, types and derived figures as a real run
    law_t = epoch_time(workers, law, mode)
    entries = []
    elapsed = 0.5  # start-up before the first epoch
    for e in range(epochs):
        t = law_t * (1.0 + rng.gauss(0.0, noise)) if noise else law_t
        elapsed += t
        entry: dict[str, Any] = {
            "epoch": e,
            "wall_time_s": t,
            "steps": samples_per_epoch // 64,
            "samples": samples_per_epoch,
            "samples_per_s": samples_per_epoch / t,
            "elapsed_s": elapsed,
            # the same optimisation at every worker count (same global batch): the loss depends on the epoch
            "metrics": {"val_loss": 1.0 / (1.0 + e)},
        }
        if power_w_per_worker is not None:
            util = max(5.0, 95.0 - 8.0 * (workers.bit_length() - 1))
            entry["energy_wh"] = power_w_per_worker * workers * t / 3600.0
            entry["gpu_util_mean_pct"] = util
            entry["gpu_util_mean_pct_ranks"] = {"min": util - 2, "mean": util, "max": util + 2}
            entry["gpu_power_mean_w"] = power_w_per_worker
            entry["gpu_power_mean_w_ranks"] = {
                "min": power_w_per_worker,
                "mean": power_w_per_worker,
                "max": 260.0,
            }
        if cpu_power_w_per_node is not None:  # RAPL: package + DRAM of each node's sockets
            entry["cpu_energy_wh"] = cpu_power_w_per_node * max(1, workers // 4) * t / 3600.0
        entries.append(entry)
    total_t = sum(e["wall_time_s"] for e in entries)
    total_samples = samples_per_epoch * epochs
    summary: dict[str, Any] = {
        "fit_wall_time_s": total_t + 1.0,
        "time_to_first_step_s": 0.5,
        "mean_epoch_time_s": total_t / epochs,
        "samples_per_s": total_samples / total_t,
        "total_samples": total_samples,
        "cpu_util_mean_pct": 80.0,
        "flops_per_sample": FLOPS_PER_SAMPLE,
        "monitor": "val_loss",
        "monitor_mode": "min",
    }
    if power_w_per_worker is not None:
        summary["peak_flops_per_s"] = PEAK_FLOPS_PER_S * workers
    if power_w_per_worker is not None:
        energy = sum(e["energy_wh"] for e in entries)
        util = entries[0]["gpu_util_mean_pct"]
        summary |= {
            "energy_wh": energy,
            "gpu_util_mean_pct": util,
            "gpu_power_mean_w": power_w_per_worker,
        }
    if cpu_power_w_per_node is not None:
        summary["cpu_energy_wh"] = sum(e["cpu_energy_wh"] for e in entries)
    sections: dict[str, Any] = {
        "benchmark": {
            "strategy": strategy,
            "workers": workers,
            "repetition": repetition,
            "launcher": launcher,
            "scaling": mode,
            "grid_point": f"{strategy}-w{workers}-r{repetition}",
        }
    }
    if profile:
        comm_t = basis([workers], mode)[0][1] * law[1]
        comm = comm_t / law_t if law_t > 0 else 0.0
        sections["torch_profiler"] = {
            "fractions": {"compute": 0.85 * (1 - comm), "communication": comm, "memcpy": 0.05 * (1 - comm),
                          "other": 0.10 * (1 - comm)},
            "overlap": 0.1,
        }  # fmt: skip
    fields: dict[str, Any] = {
        "status": "completed",
        "strategy": strategy,
        "launcher": launcher,
        "world_size": workers,
        "devices_per_node": min(workers, 4),
        "num_nodes": max(1, workers // 4),
        "accelerator": "cuda" if power_w_per_worker is not None else "cpu",
        "global_batch_size": 64,
        "hostnames": [f"node{i:02d}" for i in range(max(1, workers // 4))],
        "cpu_model": "Synthetic CPU @ 2.0GHz",
        "device_names": ["Synthetic GPU"] if power_w_per_worker is not None else [],
        "versions": {"python": "3.11", "torch": "2.x", "lightning": "2.x"},
        "parameters": 1_000_000,
    }
    recorder.contribute(fields=fields, summary=summary)
    for entry in entries:
        recorder.contribute(epoch=entry["epoch"], epoch_values=entry)
    for name, values in sections.items():
        recorder.contribute(section=name, section_values=values)
    recorder.flush()
    return dict(recorder.record)


def make_grid(
    root: Path,
    strategies: dict[str, Sequence[float]],
    workers: Sequence[int],
    repetitions: int = 1,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """One record per strategy x workers x repetition under ``root/<strategy>-w<N>-r<rep>``."""
    rng = random.Random(kwargs.pop("seed", 0))
    out = []
    for strategy, law in strategies.items():
        for n in workers:
            for rep in range(repetitions):
                run_dir = root / f"{strategy}-w{n}-r{rep}"
                out.append(make_record(run_dir, strategy, n, rep, law, rng=rng, **kwargs))
    return out
