"""hpc_fsdp vs hpc_ddp at 2 workers: training throughput and memory per rank, side by side in one run.

    python benchmarks/bench_fsdp.py [--reps 3] [--epochs 3] [--width 128] [--depth 8]

Runs interleave (DDP, FSDP, DDP, FSDP, ...): each a real 2-process torchrun launch (gloo on CPU, nccl on a
GPU) of the demo denoiser made wide enough for its states to matter, with Adam. Per rank it measures:

* throughput: training samples per second over the epochs after the first, summed over ranks;
* state bytes: the parameters, gradients and Adam state this rank holds (what FSDP shards), in MiB;
* peak memory: the process's peak resident set (CPU) or ``torch.cuda.max_memory_allocated`` (GPU), MiB.

Prints medians and min-max over the repetitions, and the FSDP/DDP ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("hpc_ddp", "hpc_fsdp")


def worker(out: Path, strategy: str, epochs: int, width: int, depth: int) -> None:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import Callback

    import itwinai_lightning.strategies  # noqa: F401
    from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser

    class Probe(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.started = 0.0
            self.state_mib = 0.0

        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.times.append(time.perf_counter() - self.started)
            tensors = [p for p in trainer.strategy.model.parameters()]  # type: ignore[union-attr]
            tensors += [p.grad for p in tensors if p.grad is not None]
            for opt in trainer.optimizers:
                for state in opt.state.values():
                    tensors += [v for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
            self.state_mib = sum(t.numel() * t.element_size() for t in tensors) / 2**20

    gpu = torch.cuda.is_available()
    pl.seed_everything(0)
    model = SpectrogramDenoiser(width=width, depth=depth, lr=1e-3, optimizer="adam")
    model.example_input_array = None
    data = SpectrogramDataModule(num_samples=512, val_samples=16, batch_size=16, freq_bins=32, time_steps=32)
    probe = Probe()
    strategy: object = strategy
    if strategy == "hpc_fsdp":
        from itwinai_lightning.strategies.fsdp import HPCFSDPStrategy

        strategy = HPCFSDPStrategy(auto_wrap=["Conv2d"])
    trainer = pl.Trainer(
        accelerator="gpu" if gpu else "cpu", devices=2 if not gpu else min(2, torch.cuda.device_count()),
        strategy=strategy,  # type: ignore[arg-type]
        max_epochs=epochs, limit_val_batches=0, callbacks=[probe], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    if gpu:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    steady = probe.times[1:] or probe.times
    result = {
        "samples_per_s": 512 * len(steady) / sum(steady),
        "state_mib": probe.state_mib,
        "peak_mib": peak,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(strategy: str, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(dir=workdir))
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
    ]
    cmd += [__file__, "--worker", strategy, "--out", str(out), "--epochs", str(args.epochs)]
    cmd += ["--width", str(args.width), "--depth", str(args.depth)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise SystemExit(f"{strategy} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return {
        "samples_per_s": ranks[0]["samples_per_s"],
        "state_mib": max(r["state_mib"] for r in ranks),
        "peak_mib": max(r["peak_mib"] for r in ranks),
    }


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f})"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--worker", choices=STRATEGIES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.out, args.worker, args.epochs, args.width, args.depth)
        return 0
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in STRATEGIES}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name in STRATEGIES:
                got = launch(name, args, Path(tmp))
                runs[name].append(got)
                print(f"rep {rep} {name:9s} " + "  ".join(f"{k} {v:.1f}" for k, v in got.items()), flush=True)
    print(f"\n2 workers, width {args.width} depth {args.depth}, Adam; median (min-max) of {args.reps} runs")
    figures: dict[str, dict[str, float]] = {}
    for name in STRATEGIES:
        cols = {k: [r[k] for r in runs[name]] for k in ("samples_per_s", "state_mib", "peak_mib")}
        figures[name] = {k: statistics.median(v) for k, v in cols.items()}
        print(f"{name:9s} samples/s {_fmt(cols['samples_per_s'])}  state MiB/rank {_fmt(cols['state_mib'])}"
              f"  peak MiB/rank {_fmt(cols['peak_mib'])}")  # fmt: skip
    ratios = {k: figures["hpc_fsdp"][k] / figures["hpc_ddp"][k] for k in figures["hpc_ddp"]}
    print("hpc_fsdp / hpc_ddp: " + "  ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    if args.json:
        args.json.write_text(json.dumps({"medians": figures, "ratios": ratios, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
