"""Distributed batch inference: samples/s at 1 vs 2 ranks, side by side in one run.

    python benchmarks/bench_inference.py [--reps 3] [--samples 4096]

Each run is the user's command: ``python -m itwinai_lightning predict`` of the quickstart model (its initial
weights: throughput does not depend on them) with the ShardedPredictionWriter, at ``--trainer.devices`` 1
and 2 (gloo on CPU), interleaved 1, 2, 1, 2, ... The figure is the writer's: unique inputs per second over
the prediction loop (``index.json``), plus the command's wall time. Prints medians, min-max and the ratio.
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

REPO = Path(__file__).resolve().parents[1]
RANKS = (1, 2)


def run(ranks: int, samples: int, workdir: Path, threads: int | None = None) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(dir=workdir))
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    if threads:  # per rank: on a small machine one rank's intra-op threads already take every core
        env["OMP_NUM_THREADS"] = str(threads)
    quick = str(REPO / "configs" / "quickstart.yaml")
    cmd = [sys.executable, "-m", "itwinai_lightning", "predict", "--config", quick,
           "--trainer.devices", str(ranks), "--data.val_samples", str(samples), "--data.batch_size", "64",
           "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(out),
           "--trainer.callbacks+=itwinai_lightning.inference.ShardedPredictionWriter",
           "--ckpt_path", "module"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=workdir)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{ranks} rank(s) failed:\n{proc.stderr[-3000:]}")
    index = json.loads((out / "predictions" / "index.json").read_text())
    assert index["num_samples"] == samples and index["duplicates_dropped"] == 0
    return {"samples_per_s": index["samples_per_s"], "command_s": wall}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS per rank (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in RANKS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for n in RANKS:
                runs[n].append(run(n, args.samples, Path(tmp), args.threads))
                got = runs[n][-1]
                rate, wall = got["samples_per_s"], got["command_s"]
                print(f"rep {rep} ranks {n}: {rate:.0f} samples/s, command {wall:.1f} s", flush=True)
    threads = f"{args.threads} thread(s) per rank" if args.threads else "torch's threads per rank"
    print(f"\n{args.samples} inputs, quickstart model, {threads}; median (min-max) of {args.reps} runs")
    medians = {}
    for n in RANKS:
        rates = [r["samples_per_s"] for r in runs[n]]
        walls = [r["command_s"] for r in runs[n]]
        medians[n] = statistics.median(rates)
        print(f"{n} rank(s): {medians[n]:8.0f} samples/s ({min(rates):.0f}-{max(rates):.0f}); "
              f"command {statistics.median(walls):.1f} s ({min(walls):.1f}-{max(walls):.1f})")  # fmt: skip
    print(f"2 ranks / 1 rank: {medians[2] / medians[1]:.2f}x samples/s")
    if args.json:
        args.json.write_text(json.dumps({"runs": {str(k): v for k, v in runs.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
