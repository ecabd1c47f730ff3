"""Cost of the preemption-safe requeue callback per training step, 2-rank DDP (gloo), side by side.

Configurations (interleaved A, B, C, A, B, C ... so machine load drifts hit all alike; medians reported):

* ``none``     -- no SlurmRequeue
* ``every1``   -- ``SlurmRequeue(check_every_n_steps=1)`` (default: one all-reduce of one value per step)
* ``every10``  -- ``SlurmRequeue(check_every_n_steps=10)``

Each repetition trains the quickstart model (width 32, depth 4, batch 32) on 2 DDP ranks started by
Lightning's own launcher (this script is re-run as rank 1) for ``--epochs`` epochs without validation; the
step time is the last epoch's training wall time / steps.

    python benchmarks/bench_slurm.py [--reps 3] [--epochs 2] [--samples 1024]

Target: ``every1`` adds <= 2 % to the step time of ``none`` on CPU/gloo.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser
from itwinai_lightning.slurm.requeue import SlurmRequeue

CONFIGS = ("none", "every1", "every10")


class StepProbe(Callback):
    """Wall time of the training part of each epoch, divided by its steps."""

    def __init__(self) -> None:
        self.step_s: list[float] = []
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.step_s.append((time.perf_counter() - self._t0) / max(1, trainer.num_training_batches))


def run_once(name: str, epochs: int, samples: int, root: str) -> float:
    probe = StepProbe()
    callbacks: list[Callback] = [probe]
    if name != "none":
        callbacks.append(SlurmRequeue(check_every_n_steps=1 if name == "every1" else 10, requeue="none"))
    trainer = pl.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=epochs,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    data = SpectrogramDataModule(num_samples=samples, val_samples=32, batch_size=32, num_workers=0)
    trainer.fit(SpectrogramDenoiser(width=32, depth=4), datamodule=data)
    return probe.step_s[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1024)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    root = os.environ.setdefault("BENCH_SLURM_ROOT", tempfile.mkdtemp(prefix="bench-slurm-"))
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(args.reps):
        for name in CONFIGS:
            times[name].append(run_once(name, args.epochs, args.samples, root))
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return
    base = statistics.median(times["none"])
    result = {
        name: {
            "step_ms_median": round(1000 * statistics.median(v), 3),
            "ratio_vs_none": round(statistics.median(v) / base, 4),
        }
        for name, v in times.items()
    }
    print(json.dumps({"reps": args.reps, "epochs": args.epochs, "samples": args.samples, **result}, indent=2))


if __name__ == "__main__":
    main()
