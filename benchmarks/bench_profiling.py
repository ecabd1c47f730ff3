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

``--paired`` measures py-spy's cost inside one training run, which this noisy machine needs (separate
runs differ by +-25 % among themselves): blocks of ``--block`` steps alternate without py-spy and with
each py-spy setting of ``--settings`` (``off, A, off, B, off, A ...``), py-spy attached between blocks
(the attach is not timed). Each "on" block is compared with the mean of the "off" blocks on either side;
the figures are the median and spread of those ratios over every block of every repetition. The samples
of each setting are pooled and classified into the hotspot categories, and each setting's categories are
compared with those of the first setting (the reference, 100 Hz).

    python benchmarks/bench_profiling.py --paired [--reps 3] [--block 24] [--settings 100,default]
"""

from __future__ import annotations

import argparse
import json
import os
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


class Alternating(Callback):
    """Blocks of ``block`` training steps: off, then each setting in turn, then off again, and so on."""

    def __init__(self, block: int, settings: list[dict[str, Any]], out: Path) -> None:
        self.block = block
        self.settings = settings
        self.out = out
        self.blocks: list[tuple[str, float]] = []  # (setting name or "off", seconds per step)
        self.samples: dict[str, str] = {s["name"]: "" for s in settings}
        self._order = [s for setting in settings for s in (None, setting)]
        self._step = 0
        self._t0 = 0.0
        self._current: dict[str, Any] | None = None
        self._recorder: Any = None

    def _begin(self) -> None:
        from itwinai_lightning.profiling.recorder import PySpyRecorder

        index = (self._step // self.block) % len(self._order)
        self._current = self._order[index]
        if self._current is not None:
            self._recorder = PySpyRecorder(
                os.getpid(), self.out / f"{self._current['name']}-{self._step}.txt", **self._current["args"]
            )
            error = self._recorder.start()
            if error:
                raise SystemExit(error)
        self._t0 = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, idx) -> None:  # type: ignore[no-untyped-def]
        if self._step % self.block == 0:
            self._begin()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, idx
    ) -> None:  # type: ignore[no-untyped-def]
        self._step += 1
        if self._step % self.block:
            return
        per_step = (time.perf_counter() - self._t0) / self.block
        name = "off" if self._current is None else self._current["name"]
        self.blocks.append((name, per_step))
        if self._recorder is not None:
            self.samples[name] += self._recorder.stop() or ""
            self._recorder = None


def pyspy_settings(spec: str) -> list[dict[str, Any]]:
    """``100`` (a continuous 100 Hz reference), ``default`` (PySpyProfiler's defaults), or a rate in Hz."""
    defaults = PySpyProfiler()
    out = []
    for item in spec.split(","):
        reference = {"rate_hz": 100, "subprocesses": False, "nonblocking": True, "idle": True}
        if item == "default":
            options = defaults.recorder_options(subprocesses=False)
        elif item.isdigit():
            options = {**reference, "rate_hz": int(item)}
        elif item.endswith("idle") and item[:-4].isdigit():  # SCHED_IDLE py-spy
            options = {**reference, "rate_hz": int(item[:-4]), "lowest_priority": True}
        else:
            raise SystemExit(f"--settings: {item!r} is neither 'default' nor a rate in Hz")
        out.append({"name": item, "args": options})
    return out


def paired(args: argparse.Namespace) -> None:
    from itwinai_lightning.profiling import hotspots, stacks

    settings = pyspy_settings(args.settings)
    ratios: dict[str, list[float]] = {s["name"]: [] for s in settings}
    pooled: dict[str, str] = {s["name"]: "" for s in settings}
    model_args, data_args = quickstart()
    if args.samples:
        data_args["num_samples"] = args.samples
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            probe = Alternating(args.block, settings, Path(tmp))
            pl.seed_everything(42, verbose=False)
            trainer = pl.Trainer(
                default_root_dir=tmp, accelerator="cpu", devices=1, max_epochs=args.epochs,
                limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, callbacks=[probe],
            )  # fmt: skip
            trainer.fit(SpectrogramDenoiser(**model_args), SpectrogramDataModule(**data_args))
            blocks = probe.blocks[1:]  # the first block pays the start-up
            for i, (name, per_step) in enumerate(blocks):
                if name == "off" or i == 0 or i + 1 >= len(blocks):
                    continue
                around = (blocks[i - 1][1] + blocks[i + 1][1]) / 2
                ratios[name].append(per_step / around)
            for name, text in probe.samples.items():
                pooled[name] += text
            print(f"rep {rep + 1}: " + ", ".join(f"{n} {len(ratios[n])} blocks" for n in ratios), flush=True)
    reference = None
    result: dict[str, Any] = {}
    for setting in settings:
        name = setting["name"]
        cats = hotspots.summarize_rank(stacks.parse_collapsed(pooled[name]))
        fractions = {c: 100 * float(cats["categories"].get(c, 0.0)) for c in hotspots.CATEGORIES}
        reference = reference or fractions
        deviation = max(abs(fractions[c] - reference[c]) for c in hotspots.CATEGORIES)
        r = ratios[name]
        cost = 100 * (statistics.median(r) - 1)
        result[name] = {
            "options": setting["args"], "cost_pct_median": cost, "ratios": r, "samples": cats.get("samples"),
            "categories_pct": fractions, "max_deviation_pp": deviation,
        }  # fmt: skip
        print(
            f"{name:>8}: step time {cost:+.1f} % (median of {len(r)} paired blocks, "
            f"{100 * (min(r) - 1):+.1f} to {100 * (max(r) - 1):+.1f} %), {cats.get('samples')} samples, "
            f"categories within {deviation:.1f} pp of '{settings[0]['name']}': "
            + ", ".join(f"{c} {v:.0f}" for c, v in fractions.items() if v >= 1)
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--samples", type=int, default=None, help="override data.num_samples (2048)")
    parser.add_argument(
        "--configs", default="none,pyspy,pyspy_nb,torchprof", help="subset to run, comma-separated"
    )
    parser.add_argument("--paired", action="store_true", help="py-spy's cost inside one run (see above)")
    parser.add_argument("--block", type=int, default=24, help="steps per block (--paired)")
    parser.add_argument("--settings", default="100,default", help="py-spy settings to alternate (--paired)")
    parser.add_argument("--json", type=Path, help="also write the figures here (--paired)")
    args = parser.parse_args()
    if args.paired:
        paired(args)
        return
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
