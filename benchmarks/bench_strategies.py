"""Throughput of hpc_ddp, hpc_deepspeed (ZeRO 0/2) and horovod at 2 workers on the quickstart workload.

    python benchmarks/bench_strategies.py [--reps 2] [--epochs 2] [--stage 2]

Runs interleave (DDP, DeepSpeed, Horovod, DDP, DeepSpeed, Horovod, ...): each is a real 2-process launch
(torchrun for DDP and DeepSpeed, ``horovodrun --gloo`` for Horovod) of the quickstart model and data
(configs/quickstart.yaml). Throughput = training samples per second over the epochs after the first (warm-up),
summed over ranks. Prints the medians and the ratios to DDP.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("hpc_ddp", "hpc_deepspeed", "horovod")


def worker(out: Path, strategy: str, epochs: int, stage: int) -> None:
    import lightning.pytorch as pl
    import yaml
    from lightning.pytorch.callbacks import Callback

    import itwinai_lightning.strategies  # noqa: F401
    from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser

    class EpochClock(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.started = 0.0

        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.times.append(time.perf_counter() - self.started)

    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    pl.seed_everything(config["seed_everything"])
    model = SpectrogramDenoiser(**config["model"]["init_args"])
    data = SpectrogramDataModule(**config["data"]["init_args"])
    chosen: object = strategy
    devices = 1 if strategy == "horovod" else 2
    if strategy == "hpc_deepspeed":
        from itwinai_lightning.strategies.deepspeed import HPCDeepSpeedStrategy

        chosen = HPCDeepSpeedStrategy(stage=stage)
    clock = EpochClock()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=chosen,  # type: ignore[arg-type]
        max_epochs=epochs,
        limit_val_batches=0,
        callbacks=[clock],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    if trainer.global_rank == 0:
        samples = config["data"]["init_args"]["num_samples"]
        steady = clock.times[1:] or clock.times
        result = {"samples_per_s": samples * len(steady) / sum(steady), "epoch_s": clock.times}
        (out / "result.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(strategy: str, epochs: int, stage: int, workdir: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=workdir))
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    args = [sys.executable, __file__, "--worker", strategy, "--out", str(out), "--epochs", str(epochs)]
    args += ["--stage", str(stage)]
    if strategy == "horovod":
        prefix = ["horovodrun", "--gloo", "-np", "2", "-H", "localhost:2"]
    else:
        prefix = [sys.executable, "-m", "torch.distributed.run", "--no-python", "--nproc_per_node=2"]
        prefix.append(f"--master_port={_free_port()}")
    proc = subprocess.run([*prefix, *args], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{strategy} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return float(json.loads((out / "result.json").read_text())["samples_per_s"])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--stage", type=int, default=2, help="DeepSpeed ZeRO stage")
    parser.add_argument("--worker", choices=STRATEGIES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.out, args.worker, args.epochs, args.stage)
        return 0
    runs: dict[str, list[float]] = {name: [] for name in STRATEGIES}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name in STRATEGIES:
                runs[name].append(launch(name, args.epochs, args.stage, Path(tmp)))
                print(f"rep {rep} {name:14s} {runs[name][-1]:8.1f} samples/s", flush=True)
    base = statistics.median(runs["hpc_ddp"])
    print(f"\n2 workers, quickstart, ZeRO stage {args.stage}; medians of {args.reps} runs")
    for name in STRATEGIES:
        med = statistics.median(runs[name])
        print(f"{name:14s} {med:8.1f} samples/s   ratio to hpc_ddp {med / base:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
