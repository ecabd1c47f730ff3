"""Step-time cost of the HangWatchdog (on in every ``fit``), side by side in one run.

Configurations, interleaved (A, B, C, A, B, C ...) so machine load drifts hit all alike; medians reported:

* ``none``      -- no callbacks
* ``watchdog``  -- ``HangWatchdog()`` as ``fit`` installs it (poll every 10 s)
* ``busy``      -- ``HangWatchdog(poll_s=0.01)``: its thread wakes 100 times a second (a worst case)

Each run trains the quickstart model/data (configs/quickstart.yaml) for ``--epochs`` epochs without
validation; the step time is the last epoch's training wall time / steps (the probe of
``bench_monitoring.py``). A direct accounting of the per-batch heartbeat (one ``time.monotonic()`` stored)
is printed too: a side-by-side run on a busy machine has a noise floor above 0.5 %.

    python benchmarks/bench_watchdog.py [--reps 5] [--epochs 2] [--samples 2048]

Target: ``watchdog`` adds < 0.5 % to the step time of ``none`` (not measurable).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import Callback

from itwinai_lightning.callbacks import HangWatchdog
from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_monitoring import StepProbe  # noqa: E402


def callbacks_for(name: str) -> list[Callback]:
    return {"none": [], "watchdog": [HangWatchdog()], "busy": [HangWatchdog(poll_s=0.01)]}[name]


def one_run(name: str, quick: dict[str, Any], epochs: int, samples: int, root: Path) -> float:
    probe = StepProbe()
    trainer = pl.Trainer(
        default_root_dir=root / f"{name}-{time.monotonic_ns()}",
        accelerator="auto",
        devices=1,
        max_epochs=epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        callbacks=[probe, *callbacks_for(name)],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    pl.seed_everything(0, verbose=False)
    data_args = {**quick["data"]["init_args"], "num_samples": samples}
    trainer.fit(SpectrogramDenoiser(**quick["model"]["init_args"]), SpectrogramDataModule(**data_args))
    return probe.step_s[-1]


def heartbeat_us(n: int = 200_000) -> float:
    """µs per batch of the watchdog's heartbeat, measured directly."""
    watchdog = HangWatchdog()
    t0 = time.perf_counter()
    for i in range(n):
        watchdog.on_train_batch_end(None, None, None, None, i)  # type: ignore[arg-type]
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2, help="the last epoch is measured")
    parser.add_argument("--samples", type=int, default=2048, help="quickstart has 2048")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    quick = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    names = ["none", "watchdog", "busy"]
    wall: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name in names:
                wall[name].append(one_run(name, quick, args.epochs, args.samples, Path(tmp)))
            print(
                f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{n} {wall[n][-1] * 1e3:.2f} ms" for n in names)
            )
    base = statistics.median(wall["none"])
    result: dict[str, Any] = {}
    print(
        f"\nquickstart model, {args.samples} samples, last of {args.epochs} epochs, "
        f"{args.reps} interleaved reps"
    )
    print(f"{'config':<10} {'step (median)':>14} {'added':>8} {'min-max':>18}")
    for name in names:
        median = statistics.median(wall[name])
        result[name] = {"median_step_s": median, "added_pct": (median / base - 1) * 100, "step_s": wall[name]}
        print(
            f"{name:<10} {median * 1e3:>11.2f} ms {result[name]['added_pct']:>+7.2f}% "
            f"{min(wall[name]) * 1e3:>8.2f}-{max(wall[name]) * 1e3:.2f} ms"
        )
    beat = heartbeat_us()
    result["accounting"] = {"heartbeat_us_per_step": beat, "added_pct": beat / (base * 1e6) * 100}
    print(
        f"accounting: heartbeat {beat:.3f} us/step -> {result['accounting']['added_pct']:.4f} % of a "
        f"{base * 1e3:.1f} ms step (target < 0.5 %)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
