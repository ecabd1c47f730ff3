"""Per-trial overhead of ``tune`` vs plain Ray Tune driving the same Lightning training, side by side.

Overhead of a trial = its wall time as Ray measures it (``time_total_s``) minus the time its training
epochs took (measured inside the trial the same way for both). Repetitions are interleaved
(ours, plain, ours, plain, ...) in one Ray session; medians are reported.

A 2-worker sweep of ``--ddp-trials`` trials: plain Ray starts a Tuner -> TorchTrainer per trial; ``tune``
books each trial's placement group through Tune and reuses the warm ranks from trial to trial, so its
first trial per sweep (cold: the rank actors start and import torch/Lightning) is shown apart as well.

    python benchmarks/bench_tune.py [--reps 2] [--trials 4] [--ddp-reps 2] [--ddp-trials 3] [--epochs 2]

Targets: (i) concurrent trials: ``tune`` median <= 3 s/trial; (ii) 2-worker trials: ``tune`` <= 1/2 of
the plain Tuner -> TorchTrainer (Train V2) baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TINY = REPO / "tests" / "tune" / "tiny.yaml"


class EpochTimer(pl.Callback):
    """Puts the cumulative training-epoch time into ``callback_metrics['trial_train_time_s']`` (s)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.total += time.perf_counter() - self.start
        trainer.callback_metrics["trial_train_time_s"] = torch.tensor(self.total)


def _plain_parts(lr: float) -> tuple[pl.LightningModule, pl.LightningDataModule]:
    from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser

    pl.seed_everything(42)
    model = SpectrogramDenoiser(width=8, depth=2, lr=lr)
    data = SpectrogramDataModule(num_samples=128, val_samples=64, freq_bins=16, time_steps=16, batch_size=32)
    return model, data


def plain_trial(config: dict[str, Any]) -> None:
    from ray.tune.integration.pytorch_lightning import TuneReportCheckpointCallback

    model, data = _plain_parts(config["lr"])
    report = TuneReportCheckpointCallback(on="train_epoch_end")
    trainer = pl.Trainer(
        max_epochs=config["epochs"], accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[EpochTimer(), report],
    )  # fmt: skip
    trainer.fit(model, datamodule=data)


def plain_ddp_loop(config: dict[str, Any]) -> None:
    from ray.train.lightning import (
        RayDDPStrategy,
        RayLightningEnvironment,
        RayTrainReportCallback,
        prepare_trainer,
    )

    model, data = _plain_parts(config["lr"])
    trainer = pl.Trainer(
        max_epochs=config["epochs"], accelerator="cpu", devices="auto", strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[EpochTimer(), RayTrainReportCallback()],
    )  # fmt: skip
    prepare_trainer(trainer).fit(model, datamodule=data)


def plain_ddp_trial(config: dict[str, Any]) -> None:
    import uuid

    from ray import train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    TorchTrainer(
        plain_ddp_loop,
        train_loop_config=config,
        scaling_config=train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.995}),
        run_config=train.RunConfig(
            name=uuid.uuid4().hex[:8], storage_path=config["storage"], callbacks=[TuneReportCallback()]
        ),
    ).fit()


def run_plain(out: Path, trials: int, epochs: int, ddp: bool) -> list[float]:
    from ray import tune

    if ddp:
        trainable = tune.with_resources(plain_ddp_trial, {"cpu": 0.01})
    else:
        trainable = tune.with_resources(plain_trial, {"cpu": 1})
    space = {"lr": tune.loguniform(1e-3, 1e-2), "epochs": epochs, "storage": str(out / "train")}
    grid = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=1 if ddp else None),
        run_config=tune.RunConfig(storage_path=str(out), name="plain", verbose=0),
    ).fit()
    return [r.metrics["time_total_s"] - r.metrics["trial_train_time_s"] for r in grid if not r.error]


def run_ours(out: Path, trials: int, epochs: int, ddp: bool) -> list[float]:
    from itwinai_lightning.tune.cli import main
    from itwinai_lightning.tune.results import read_rows

    out.mkdir(parents=True, exist_ok=True)
    search = out / "search.yaml"
    section = {
        "search_space": {"model.init_args.lr": {"loguniform": [1e-3, 1e-2]}},
        "num_samples": trials,
        "workers_per_trial": 2 if ddp else 1,
        "output_dir": str(out),
    }
    search.write_text(json.dumps({"tune": section}))
    code = main(["--config", str(TINY), "--config", str(search), f"--trainer.max_epochs={epochs}"])
    assert code == 0
    rows = read_rows(out / "sweep" / "results.csv")
    started = {row["trial_id"]: _first_start(out / "sweep" / "trials" / row["trial_id"]) for row in rows}
    rows.sort(key=lambda row: started[row["trial_id"]])  # in start order: the first one is the cold one
    return [row["trial_time_s"] - row["train_time_s"] for row in rows]


def _first_start(trial_dir: Path) -> float:
    first = (trial_dir / "params.jsonl").read_text().splitlines()[0]
    return float(json.loads(first)["time"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--ddp-reps", type=int, default=2)
    parser.add_argument("--ddp-trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from itwinai_lightning.strategies.ray_launcher import init_ray

    init_ray(num_cpus=2)
    results: dict[str, list[float]] = {"ours": [], "plain": [], "ours_ddp": [], "plain_ddp": []}
    cold: list[float] = []
    warm: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        for rep in range(max(args.reps, args.ddp_reps)):
            plan = []
            if rep < args.reps:
                plan += [("ours", False, args.trials), ("plain", False, args.trials)]
            if rep < args.ddp_reps:
                plan += [("ours_ddp", True, args.ddp_trials), ("plain_ddp", True, args.ddp_trials)]
            for name, ddp, n in plan:
                out = Path(tmp) / f"{name}-{rep}"
                runner = run_ours if name.startswith("ours") else run_plain
                overheads = runner(out, n, args.epochs, ddp)
                results[name] += overheads
                if name == "ours_ddp":
                    cold.append(overheads[0])
                    warm.extend(overheads[1:])
                print(
                    f"[rep {rep}] {name}: per-trial overhead (s) {[round(x, 2) for x in overheads]}",
                    flush=True,
                )
    med = {k: statistics.median(v) for k, v in results.items() if v}
    print("\nper-trial overhead, median seconds (trial wall time - its own training time)")
    for key, value in med.items():
        print(f"  {key:<10} {value:7.2f}  (n={len(results[key])})")
    if "ours" in med:
        print(
            f"(i)  concurrent: tune {med['ours']:.2f} s/trial (target <= 3 s); "
            f"plain Ray Tune {med['plain']:.2f} s"
        )
    if "ours_ddp" in med:
        ratio = med["ours_ddp"] / med["plain_ddp"]
        print(f"(ii) 2-worker: tune {med['ours_ddp']:.2f} s vs Tuner->TorchTrainer {med['plain_ddp']:.2f} s: "
              f"ratio {ratio:.2f} (target <= 0.5)")  # fmt: skip
        if warm:
            first, later = statistics.median(cold), statistics.median(warm)
            print(f"     tune split: first trial of a sweep (cold ranks) median {first:.2f} s "
                  f"(ratio {first / med['plain_ddp']:.2f}), "
                  f"later trials (warm ranks) median {later:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
