"""Foundation benchmarks, side by side in one run (interleaved A, B, A, B ...; medians reported).

(a) CLI cold start: ``python -m itwinai_lightning --help`` and ``... fit --help`` against a plain LightningCLI
    script (same subclass mode) doing the same; plus ``python -X importtime`` proof that neither imports Ray,
    MLflow, W&B, DeepSpeed, Horovod or yProv4ML.                      Target: ratio <= 1.05x.
(b) DDP throughput at 2 processes on the quickstart workload (configs/quickstart.yaml): ``hpc_ddp`` against
    Lightning's ``ddp`` (DDPStrategy), training samples/s of the last epoch (no validation), measured by a
    probe callback both runs carry.                                      Target: ratio >= 0.98x.

    python benchmarks/bench_foundation.py [--reps 7] [--ddp-reps 3] [--epochs 2] [--samples 1024] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("ray", "mlflow", "wandb", "deepspeed", "horovod", "yprov4ml")
PLAIN_CLI = """\
import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True)
"""


class ThroughputProbe(pl.Callback):
    """Rank 0 writes ``{"samples_per_s", "train_time_s", "steps"}`` for the last training epoch to ``out``."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.start = 0.0
        self.steps = 0
        self.samples = 0

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start, self.steps, self.samples = time.perf_counter(), 0, 0

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.steps += 1
        self.samples += int(batch[0].shape[0]) * trainer.world_size

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.strategy.barrier()
        elapsed = time.perf_counter() - self.start
        if trainer.global_rank == 0:
            figures = {"samples_per_s": self.samples / elapsed, "train_time_s": elapsed, "steps": self.steps}
            Path(self.out).write_text(json.dumps(figures))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO), str(REPO / "benchmarks"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    return time.perf_counter() - start


def heavy_imports(args: list[str], env: dict[str, str]) -> list[str]:
    """Top-level packages from HEAVY that ``python -X importtime -m itwinai_lightning <args>`` imports."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "itwinai_lightning", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    found = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            module = line.rsplit("|", 1)[1].strip()
            if module.split(".")[0] in HEAVY:
                found.add(module.split(".")[0])
    return sorted(found)


def bench_cold_start(reps: int) -> dict[str, Any]:
    env = _env()
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp, "plain_cli.py")
        plain.write_text(PLAIN_CLI)
        pairs = {
            "--help": (
                [sys.executable, "-m", "itwinai_lightning", "--help"],
                [sys.executable, str(plain), "--help"],
            ),
            "fit --help": (
                [sys.executable, "-m", "itwinai_lightning", "fit", "--help"],
                [sys.executable, str(plain), "fit", "--help"],
            ),
        }
        times: dict[str, dict[str, list[float]]] = {k: {"itwinai": [], "lightning": []} for k in pairs}
        for ours, theirs in pairs.values():  # warm the file cache once
            _timed(ours, env)
            _timed(theirs, env)
        for _ in range(reps):
            for name, (ours, theirs) in pairs.items():
                times[name]["itwinai"].append(_timed(ours, env))
                times[name]["lightning"].append(_timed(theirs, env))
    result: dict[str, Any] = {}
    for name, t in times.items():
        ours_s, theirs_s = statistics.median(t["itwinai"]), statistics.median(t["lightning"])
        result[name] = {"itwinai_s": ours_s, "lightning_s": theirs_s, "ratio": ours_s / theirs_s}
    result["heavy_imports"] = {
        "--help": heavy_imports(["--help"], env),
        "fit --help": heavy_imports(["fit", "--help"], env),
    }
    return result


def _ddp_run(strategy: str, epochs: int, samples: int, out: Path, env: dict[str, str]) -> dict[str, float]:
    cmd = [
        sys.executable,
        "-m",
        "itwinai_lightning",
        "fit",
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        f"--trainer.strategy={strategy}",
        "--trainer.devices=2",
        f"--trainer.max_epochs={epochs}",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.callbacks=bench_foundation.ThroughputProbe",
        f"--trainer.callbacks.out={out}",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={out.parent}",
        f"--data.init_args.num_samples={samples}",
        "--data.init_args.batch_size=16",  # per rank: global batch 32, as the 1-process quickstart
    ]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    return dict(json.loads(out.read_text()))


def bench_ddp(reps: int, epochs: int, samples: int) -> dict[str, Any]:
    env = _env()
    rates: dict[str, list[float]] = {"hpc_ddp": [], "ddp": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            for strategy in rates:
                out = Path(tmp, f"{strategy}-{rep}", "probe.json")
                out.parent.mkdir()
                rates[strategy].append(_ddp_run(strategy, epochs, samples, out, env)["samples_per_s"])
    ours, theirs = statistics.median(rates["hpc_ddp"]), statistics.median(rates["ddp"])
    return {
        "hpc_ddp_samples_per_s": ours,
        "ddp_samples_per_s": theirs,
        "ratio": ours / theirs,
        "all": rates,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=7, help="cold-start repetitions per command")
    parser.add_argument("--ddp-reps", type=int, default=3, help="DDP runs per strategy")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--only", choices=("cold", "ddp"), default=None, help="run one part only")
    args = parser.parse_args()
    ok = True
    figures: dict[str, Any] = {}
    if args.only != "ddp":
        figures["cold_start"] = cold = bench_cold_start(args.reps)
        ok = _report_cold(cold)
    if args.only != "cold":
        figures["ddp"] = ddp = bench_ddp(args.ddp_reps, args.epochs, args.samples)
        print(
            f"DDP 2 procs: hpc_ddp {ddp['hpc_ddp_samples_per_s']:.0f} samples/s  "
            f"ddp {ddp['ddp_samples_per_s']:.0f} samples/s  ratio {ddp['ratio']:.3f}x (target >= 0.98)"
        )
        ok = ok and ddp["ratio"] >= 0.98
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0 if ok else 1


def _report_cold(cold: dict[str, Any]) -> bool:
    for name in ("--help", "fit --help"):
        c = cold[name]
        print(
            f"cold start {name:<11} itwinai {c['itwinai_s']:.2f} s  LightningCLI {c['lightning_s']:.2f} s  "
            f"ratio {c['ratio']:.3f}x (target <= 1.05)"
        )
    for name, found in cold["heavy_imports"].items():
        print(f"heavy imports ({name}): {', '.join(found) or 'none'} (target: none)")
    return all(cold[n]["ratio"] <= 1.05 for n in ("--help", "fit --help")) and not any(
        cold["heavy_imports"].values()
    )


if __name__ == "__main__":
    raise SystemExit(main())
