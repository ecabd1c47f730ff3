"""Tracking overhead: no logger vs Lightning's ``logger=[...]`` list vs MultiLogger, same five backends.

    python benchmarks/bench_tracking.py [--steps 2000] [--reps 3]

Each run trains for ``--steps`` steps and logs 5 metrics per step (``log_every_n_steps=1``) to
TensorBoard + MLflow (HTTP to a local ``mlflow server``, started here) + W&B offline + yProv4ML + CSV.
Variants are interleaved (A,B,C,A,B,C,...) and medians reported. Wall time = building the logger(s) +
``trainer.fit`` (logger setup and final flush included). A variant's overhead is the median of its
per-rep differences to the no-logger run of the same rep. Targets: MultiLogger adds <= 5 % to the
no-logger time and <= 1/5 of what the list adds. ``--variants`` adds diagnostics: ``null`` (a no-op
Lightning Logger: the per-step cost any logger pays inside Lightning) and ``multi_csv`` (MultiLogger
with CSV only: the tracking-process mechanism without heavy backends).

Work per step: the demo SpectrogramDenoiser (width 8, depth 3, 3x3 convs) forward + backward + Adam on a
batch of 16 single-channel 32x32 spectrograms (512 generated in memory, cycled over epochs), one torch thread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning.pytorch as pl  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.loggers.logger import Logger  # noqa: E402

from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser  # noqa: E402
from itwinai_lightning.loggers import MultiLogger  # noqa: E402


class FiveMetrics(SpectrogramDenoiser):
    """The demo model logging 5 metrics every step."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        noisy, clean = batch
        pred = self(noisy)
        loss = torch.nn.functional.mse_loss(pred, clean)
        err = (pred - clean).detach()
        self.log_dict(
            {
                "train_loss": loss.detach(),
                "abs_err": err.abs().mean(),
                "max_err": err.abs().max(),
                "pred_mean": pred.detach().mean(),
                "pred_std": pred.detach().std(),
            }
        )
        return loss


class NullLogger(Logger):
    """Discards everything: the cost of Lightning's own per-step logging path, which any logger pays."""

    name = property(lambda self: "null")  # type: ignore[assignment]
    version = property(lambda self: "0")  # type: ignore[assignment]

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass


class SyncProvLogger(Logger):
    """yProv4ML called directly on the training thread (what a plain Lightning logger for it would do)."""

    def __init__(self, save_dir: str) -> None:
        super().__init__()
        import yprov4ml

        self._prov = yprov4ml
        self._dir = save_dir
        yprov4ml.start_run(
            experiment_name="bench", provenance_save_dir=save_dir, rank=0, metrics_file_type="csv"
        )

    name = property(lambda self: "prov")  # type: ignore[assignment]
    version = property(lambda self: "0")  # type: ignore[assignment]

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(params).items():
            self._prov.log_param(key, str(value))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self._prov.log_metric(key, float(value), context="training", step=int(step or 0))

    def finalize(self, status: str) -> None:
        self._prov.end_run()


def _lightning_list(run_dir: Path, uri: str) -> list[Logger]:
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    return [
        TensorBoardLogger(str(run_dir), name="tb"),
        MLFlowLogger(experiment_name="bench-list", tracking_uri=uri),
        WandbLogger(project="bench-list", save_dir=str(run_dir), offline=True),
        SyncProvLogger(str(run_dir / "prov")),
        CSVLogger(str(run_dir), name="csv"),
    ]


def _multi(uri: str, only_csv: bool = False, nice: int = 0) -> MultiLogger:
    backends: list[Any] = ["tensorboard", {"type": "mlflow", "tracking_uri": uri}, "wandb", "prov", "csv"]
    return MultiLogger(
        backends=["csv"] if only_csv else backends,
        experiment="bench-multi",
        flush_timeout_s=300,
        process_nice=nice,
    )


#: what each variant logs to; ``null``, ``multi_csv`` and ``multi_nice`` are diagnostics (``--variants``)
VARIANTS = {
    "none": "no logger",
    "null": "no-op Logger",
    "list": "logger=[...] list",
    "multi_csv": "MultiLogger, CSV only",
    "multi": "MultiLogger",
    "multi_nice": "MultiLogger, nice 10",
}


def thread_clock() -> tuple[float, float]:
    """The calling thread's (CPU seconds, seconds runnable but waiting for a core), from Linux schedstat."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
            on_cpu, waiting = f.read().split()[:2]
    except OSError:  # not Linux
        return float("nan"), float("nan")
    return int(on_cpu) / 1e9, int(waiting) / 1e9


#: per variant, the training thread's (CPU s, run-queue wait s, other waits s) of each rep
THREAD: dict[str, list[tuple[float, float, float]]] = {}


def run_once(variant: str, steps: int, root: Path, uri: str) -> float:
    """Seconds from building the logger(s) to the end of ``trainer.fit`` (final flush included)."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{variant}-", dir=root))
    cpu0, wait0 = thread_clock()
    start = time.perf_counter()
    logger: Any = False
    if variant == "list":
        logger = _lightning_list(run_dir, uri)
    elif variant == "null":
        logger = NullLogger()
    elif variant.startswith("multi"):
        logger = _multi(uri, only_csv=variant == "multi_csv", nice=10 if variant == "multi_nice" else 0)
    pl.seed_everything(0)
    model = FiveMetrics(width=8, depth=3)
    data = SpectrogramDataModule(num_samples=512, val_samples=16, batch_size=16)
    trainer = pl.Trainer(
        default_root_dir=run_dir, max_steps=steps, max_epochs=-1, logger=logger, log_every_n_steps=1,
        accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, data)
    if variant.startswith("multi"):
        assert logger.summary and all(r["spooled"] == 0 for r in logger.summary["backends"]), logger.summary
    wall = time.perf_counter() - start
    cpu1, wait1 = thread_clock()
    cpu, wait = cpu1 - cpu0, wait1 - wait0
    THREAD.setdefault(variant, []).append((cpu, wait, wall - cpu - wait))
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--variants", default="none,list,multi", help=f"comma list of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",")]
    if "none" not in variants or any(v not in VARIANTS for v in variants):
        parser.error(f"--variants: 'none' plus any of {', '.join(VARIANTS)}")
    torch.set_num_threads(1)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    from tests.loggers.conftest import MLflowServer, free_port

    root = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    server = MLflowServer(root / "mlflow", free_port())
    (root / "mlflow").mkdir()
    server.start(timeout_s=180)
    times: dict[str, list[float]] = {v: [] for v in variants}
    try:
        run_once("none", 50, root, server.uri)  # warm-up: imports, first allocations
        resident = {c.pid for c in psutil.Process().children(recursive=True)}
        for rep in range(args.reps):
            for variant in times:
                settle(resident)
                seconds = run_once(variant, args.steps, root, server.uri)
                times[variant].append(seconds)
                print(f"rep {rep} {variant:<6} {seconds:7.2f} s", flush=True)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    report(times, args.steps)


def settle(resident: set[int], timeout_s: float = 60.0) -> None:
    """Wait until the previous run's helpers are gone (a tracking process that is still tearing down,
    W&B's service), so that no run pays for its predecessor. ``resident``: children that outlive every
    run (the MLflow server and its workers; the ``orted`` of an MPI singleton that Lightning's MPI
    detection starts when mpi4py is installed)."""
    me = psutil.Process()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(c.pid not in resident for c in me.children(recursive=True)):
        time.sleep(0.2)
    time.sleep(1.0)  # let the server finish what the last run sent


def report(times: dict[str, list[float]], steps: int) -> None:
    """Medians per variant, and each variant's overhead as the median of its per-rep paired differences
    against the no-logger run of the same rep (slow drift of a noisy machine cancels out)."""
    med = {k: statistics.median(v) for k, v in times.items()}
    pairs = {k: list(zip(v, times["none"], strict=True)) for k, v in times.items()}
    add = {k: statistics.median(t - n for t, n in p) for k, p in pairs.items()}
    rel = {k: statistics.median(100 * (t - n) / n for t, n in p) for k, p in pairs.items()}
    reps = len(times["none"])
    print(f"\n{steps} steps x 5 metrics, {reps} reps (medians; overhead = median paired difference):")
    print(f"  {VARIANTS['none']:<22} {med['none']:7.2f} s")
    for key in (k for k in times if k != "none"):
        spread = ""
        if reps >= 4:  # the middle half of the per-rep relative differences
            q = statistics.quantiles([100 * (t - n) / n for t, n in pairs[key]], n=4)
            spread = f", middle half of reps {q[0]:+.1f} .. {q[2]:+.1f} %"
        print(f"  {VARIANTS[key]:<22} {med[key]:7.2f} s  ({add[key]:+.2f} s, {rel[key]:+.1f} %{spread})")
    print("  training thread (medians; Linux schedstat): CPU, waiting for a core, other waits (GIL, flush)")
    for key in times:
        rows = THREAD.get(key, [])[-reps:]
        cpu, wait, other = (statistics.median(r[i] for r in rows) for i in range(3))
        print(f"    {VARIANTS[key]:<22} {cpu:7.2f} s  {wait:5.2f} s  {other:5.2f} s")
    if "multi" in add:
        print(f"  MultiLogger overhead = {rel['multi']:.1f} % of no-logger time (target <= 5 %)")
    if "multi" in add and "list" in add and add["list"] > 0:
        print(f"  MultiLogger overhead / list overhead = {add['multi'] / add['list']:.3f}  (target <= 0.2)")


if __name__ == "__main__":
    main()
