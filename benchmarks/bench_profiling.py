"""Profiling overhead on the quickstart workload, side by side in one run.

Configurations (interleaved A, B, C, A, B, C ... so machine-load drift hits all alike; medians reported):

* ``none``      -- no profiling callbacks
* ``pyspy``     -- ``PySpyProfiler`` at ``--rate`` Hz (default 100) over the whole training, blocking
  (py-spy pauses the process for each sample)
* ``pyspy_nb``  -- the same with ``nonblocking=True`` (the default: stacks read without pausing)
* ``torchprof`` -- ``TorchProfilerBreakdown`` active on 10 % of the training steps (chrome trace export
  and breakdown included)

Each run trains the quickstart model/data (configs/quickstart.yaml) for ``--epochs`` epochs without
validation or checkpoints. Throughput is the last epoch's samples / training wall time (py-spy attaches
in the first epoch); whole-run wall time is ``trainer.fit`` from call to return.

    python benchmarks/bench_profiling.py [--reps 3] [--epochs 2] [--rate 100] [--samples 2048]

Targets: ``pyspy`` loses <= 5 % throughput vs ``none``; ``torchprof`` adds <= 10 % whole-run wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import Callback

from itwinai_lightning.callbacks import PySpyProfiler, TorchProfilerBreakdown
from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser

REPO = Path(__file__).resolve().parents[1]


class EpochProbe(Callback):
    """Training wall time and samples of each epoch."""

    def __init__(self) -> None:
        self.epochs: list[tuple[float, int]] = []
        self._t0 = 0.0
        self._samples = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0, self._samples = time.perf_counter(), 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, idx
    ) -> None:  # type: ignore[no-untyped-def]
        self._samples += int(batch[0].shape[0])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append((time.perf_counter() - self._t0, self._samples))


def quickstart() -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    return cfg["model"]["init_args"], cfg["data"]["init_args"]


def run_once(name: str, epochs: int, rate: int, root: Path, samples: int | None = None) -> dict[str, float]:
    model_args, data_args = quickstart()
    if samples:
        data_args["num_samples"] = samples
    steps = epochs * (int(data_args["num_samples"]) // int(data_args["batch_size"]))
    callbacks: list[Callback] = [EpochProbe()]
    if name in ("pyspy", "pyspy_nb"):
        callbacks.append(
            PySpyProfiler(rate_hz=rate, start_step=0, num_steps=None, nonblocking=name == "pyspy_nb")
        )
    elif name == "torchprof":
        callbacks.append(
            TorchProfilerBreakdown(skip_steps=4, warmup_steps=1, active_steps=max(1, steps // 10))
        )
    pl.seed_everything(42, verbose=False)
    trainer = pl.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    t0 = time.perf_counter()
    trainer.fit(SpectrogramDenoiser(**model_args), SpectrogramDataModule(**data_args))
    wall = time.perf_counter() - t0
    epoch_s, samples = callbacks[0].epochs[-1]  # type: ignore[attr-defined]
    return {"samples_per_s": samples / epoch_s, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--samples", type=int, default=None, help="override data.num_samples (2048)")
    parser.add_argument(
        "--configs", default="none,pyspy,pyspy_nb,torchprof", help="subset to run, comma-separated"
    )
    args = parser.parse_args()
    names = tuple(dict.fromkeys(["none", *args.configs.split(",")]))
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name in names:
                out = run_once(name, args.epochs, args.rate, Path(tmp) / f"{name}{rep}", args.samples)
                results[name].append(out)
                print(
                    f"rep {rep} {name:9s} {out['samples_per_s']:8.1f} samples/s  {out['wall_s']:6.2f} s",
                    flush=True,
                )
    med = {
        n: {k: statistics.median(r[k] for r in results[n]) for k in ("samples_per_s", "wall_s")}
        for n in names
    }
    summary: dict[str, Any] = {"medians": med, "pyspy_target_pct": 5.0, "torchprof_target_pct": 10.0}
    for name, label in (("pyspy", "pyspy"), ("pyspy_nb", "pyspy_nonblocking")):
        if name in med:
            loss = 1 - med[name]["samples_per_s"] / med["none"]["samples_per_s"]
            summary[f"{label}_throughput_loss_pct"] = 100 * loss
            summary[f"{label}_ok"] = loss <= 0.05
    if "torchprof" in med:
        extra = med["torchprof"]["wall_s"] / med["none"]["wall_s"] - 1
        summary["torchprof_wall_overhead_pct"] = 100 * extra
        summary["torchprof_ok"] = extra <= 0.10
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
