"""Monitoring overhead on the quickstart workload, side by side in one run.

Configurations (interleaved A, B, C, A, B, C ... so machine load drifts hit all alike; medians reported):

* ``none``        -- no monitoring callbacks
* ``timing``      -- ``TimingMonitor`` alone, as ``fit`` installs it by default (``--default_callbacks``)
* ``lightning``   -- Lightning's ``DeviceStatsMonitor`` (the anchor)
* ``itwinai``     -- this package's ``GPUMonitor`` + ``TimingMonitor``
* ``itwinai_rapl`` -- the same with a RAPL reader on (package + DRAM zones of a sysfs tree made for the
  benchmark: this machine has no readable RAPL counters; the reads are the same file reads)

Each run trains the quickstart model/data (configs/quickstart.yaml) for ``--epochs`` epochs without
validation; the step time is the last epoch's training wall time / steps, measured by a probe callback
that every configuration carries, beside the process CPU time per step (all threads, so the sampler
thread counts; far less disturbed than wall time on a shared machine). All configurations log to a
CSVLogger (DeviceStatsMonitor needs one). A direct accounting of our per-step hooks and of one
sampler reading is printed too, as the noise floor of a side-by-side run on a busy machine is > 1 %.

    python benchmarks/bench_monitoring.py [--reps 5] [--epochs 2] [--samples 2048]

Target: ``itwinai`` adds <= 1 % to the step time of ``none``; ``timing`` (on in every fit) far below 1 %;
the RAPL reader leaves ``itwinai`` unchanged.
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
from lightning.pytorch.callbacks import Callback, DeviceStatsMonitor
from lightning.pytorch.loggers import CSVLogger

from itwinai_lightning.callbacks import GPUMonitor, TimingMonitor
from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser

REPO = Path(__file__).resolve().parents[1]


class StepProbe(Callback):
    """Wall and process-CPU time (all threads, incl. the sampler) of each training epoch, per step."""

    def __init__(self) -> None:
        self.step_s: list[float] = []
        self.cpu_step_s: list[float] = []
        self._t0 = self._c0 = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = max(1, trainer.num_training_batches)
        self.step_s.append((time.perf_counter() - self._t0) / steps)
        self.cpu_step_s.append((time.process_time() - self._c0) / steps)


def rapl_tree(root: Path) -> Path:
    """A sysfs tree with one socket's RAPL package and DRAM zones, every core on that socket."""
    import os

    for cpu in range(os.cpu_count() or 1):
        topology = root / f"sys/devices/system/cpu/cpu{cpu}/topology"
        topology.mkdir(parents=True, exist_ok=True)
        (topology / "physical_package_id").write_text("0\n")
    package = root / "sys/class/powercap/intel-rapl:0"
    for zone, name in ((package, "package-0"), (package / "intel-rapl:0:0", "dram")):
        zone.mkdir(parents=True, exist_ok=True)
        (zone / "name").write_text(f"{name}\n")
        (zone / "energy_uj").write_text("123456789\n")
        (zone / "max_energy_range_uj").write_text("262143328850\n")
    return root


def callbacks_for(name: str, root: Path) -> list[Callback]:
    if name == "none":
        return []
    if name == "lightning":
        return [DeviceStatsMonitor()]
    if name == "timing":
        return [TimingMonitor()]
    if name == "itwinai_rapl":
        return [GPUMonitor(sysfs_root=str(rapl_tree(root / "sysfs"))), TimingMonitor()]
    return [GPUMonitor(cpu_energy=False), TimingMonitor()]


def one_run(name: str, quick: dict[str, Any], epochs: int, samples: int, root: Path) -> tuple[float, float]:
    probe = StepProbe()
    run_dir = root / f"{name}-{time.monotonic_ns()}"
    trainer = pl.Trainer(
        default_root_dir=run_dir,
        accelerator="auto",
        devices=1,
        max_epochs=epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=quick["trainer"].get("log_every_n_steps", 10),
        logger=CSVLogger(run_dir),
        callbacks=[probe, *callbacks_for(name, root)],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    model_args = quick["model"]["init_args"]
    data_args = {**quick["data"]["init_args"], "num_samples": samples}
    pl.seed_everything(0, verbose=False)
    trainer.fit(SpectrogramDenoiser(**model_args), SpectrogramDataModule(**data_args))
    return probe.step_s[-1], probe.cpu_step_s[-1]


def hook_cost_us(root: Path, n: int = 20000) -> tuple[float, float, float]:
    """Cost of our per-step hooks (µs per step) and of one sampler reading (µs) without and with the RAPL
    reader, measured directly."""
    import torch

    from itwinai_lightning.monitoring.backends import HostBackend
    from itwinai_lightning.monitoring.rapl import RaplBackend
    from itwinai_lightning.monitoring.sampler import Sampler

    timing, monitor = TimingMonitor(), GPUMonitor()
    batch = (torch.zeros(32, 1, 32, 32), torch.zeros(32, 1, 32, 32))
    t0 = time.perf_counter()
    for i in range(n):
        timing.on_train_batch_start(None, None, batch, i)  # type: ignore[arg-type]
        timing.on_train_batch_end(None, None, None, batch, i)  # type: ignore[arg-type]
        monitor.on_train_batch_end(None, None, None, batch, i)  # type: ignore[arg-type]
    hooks = (time.perf_counter() - t0) / n * 1e6
    reads = []
    for backends in ([HostBackend()], [HostBackend(), RaplBackend.open({0}, rapl_tree(root / "direct"))]):
        sampler = Sampler(backends, interval_s=1.0)
        sampler.open("run")
        t0 = time.perf_counter()
        for _ in range(200):
            sampler.sample_once()
        reads.append((time.perf_counter() - t0) / 200 * 1e6)
    return hooks, reads[0], reads[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2, help="the last epoch is measured")
    parser.add_argument("--samples", type=int, default=2048, help="quickstart has 2048")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    quick = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    names = ["none", "timing", "lightning", "itwinai", "itwinai_rapl"]
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name in names:
                w, c = one_run(name, quick, args.epochs, args.samples, Path(tmp))
                wall[name].append(w)
                cpu[name].append(c)
            line = ", ".join(f"{n} {wall[n][-1] * 1e3:.1f} ms (cpu {cpu[n][-1] * 1e3:.1f})" for n in names)
            print(f"rep {rep + 1}/{args.reps}: {line}", flush=True)
    result: dict[str, Any] = {}
    base_w, base_c = statistics.median(wall["none"]), statistics.median(cpu["none"])
    print(
        f"\nquickstart model, {args.samples} samples, last of {args.epochs} epochs, "
        f"{args.reps} interleaved reps"
    )
    print(f"{'config':<10} {'wall/step':>10} {'added':>8} {'cpu/step':>10} {'added':>8} {'wall min-max':>16}")
    for name in names:
        mw, mc = statistics.median(wall[name]), statistics.median(cpu[name])
        result[name] = {
            "median_step_s": mw,
            "added_pct": (mw / base_w - 1) * 100,
            "step_s": wall[name],
            "median_cpu_step_s": mc,
            "added_cpu_pct": (mc / base_c - 1) * 100,
            "cpu_step_s": cpu[name],
        }
        r = result[name]
        print(
            f"{name:<10} {mw * 1e3:>7.2f} ms {r['added_pct']:>+7.2f}% "
            f"{mc * 1e3:>7.2f} ms {r['added_cpu_pct']:>+7.2f}% "
            f"{min(wall[name]) * 1e3:>7.2f}-{max(wall[name]) * 1e3:.2f} ms"
        )
    with tempfile.TemporaryDirectory() as tmp:
        hooks_us, sample_us, rapl_us = hook_cost_us(Path(tmp))
    interval_us = GPUMonitor().interval_s * 1e6
    accounted = hooks_us / (base_w * 1e6) * 100 + sample_us / interval_us * 100
    accounted_rapl = hooks_us / (base_w * 1e6) * 100 + rapl_us / interval_us * 100
    result["accounting"] = {
        "hooks_us_per_step": hooks_us,
        "sample_us": sample_us,
        "sample_with_rapl_us": rapl_us,
        "added_pct": accounted,
        "added_with_rapl_pct": accounted_rapl,
    }
    print(
        f"accounting: our hooks {hooks_us:.1f} us/step + one sample {sample_us:.0f} us "
        f"({rapl_us:.0f} us with the RAPL reader) every {GPUMonitor().interval_s} s -> {accounted:.3f} % "
        f"({accounted_rapl:.3f} %) of a {base_w * 1e3:.1f} ms step"
    )
    print(f"RAPL reader: {result['itwinai_rapl']['added_pct']:+.2f} % wall vs itwinai's "
          f"{result['itwinai']['added_pct']:+.2f} %")  # fmt: skip
    print(
        f"anchor DeviceStatsMonitor: {result['lightning']['added_pct']:+.2f} % wall, "
        f"{result['lightning']['added_cpu_pct']:+.2f} % cpu; "
        f"TimingMonitor alone (every fit's default): {result['timing']['added_pct']:+.2f} % wall, "
        f"{result['timing']['added_cpu_pct']:+.2f} % cpu; "
        f"ours: {result['itwinai']['added_pct']:+.2f} % wall, "
        f"{result['itwinai']['added_cpu_pct']:+.2f} % cpu "
        "(target <= 1 %)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
