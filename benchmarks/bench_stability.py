"""Stability of the scalability report: the same grid run twice on this machine.

Runs ``benchmark`` twice with identical inputs (into two output directories, so nothing is reused) and
prints, for each run, every configuration's epoch time and parallel efficiency as the median with its
spread (min-max over the repetitions), then whether the two reports' verdicts agree:

* the fastest configuration;
* per series, where efficiency first drops below the threshold (or that it stays above), and where
  the report calls that uncertain (repetitions on both sides of the threshold);
and, apart, whether the same configurations were flagged (spread, efficiency above 100 %).

A verdict that changes between identical runs is the failure this benchmark exists to catch.

    python benchmarks/bench_stability.py [--workers "[1, 2]"] [--repetitions 3] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from itwinai_lightning.benchmark import report  # noqa: E402

CONFIG = """
seed_everything: 1
trainer:
  enable_progress_bar: false
  enable_checkpointing: false
  enable_model_summary: false
  logger: false
  num_sanity_val_steps: 0
model:
  class_path: itwinai_lightning.demo.SpectrogramDenoiser
  init_args: {width: 16, depth: 3}
data:
  class_path: itwinai_lightning.demo.SpectrogramDataModule
  init_args: {num_samples: 1024, val_samples: 64, batch_size: 32, num_workers: 0}
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONWARNINGS="ignore")
    return env


def _grid(cfg: Path, out: Path, args: argparse.Namespace) -> float:
    cmd = [sys.executable, "-m", "itwinai_lightning", "benchmark", "--config", str(cfg),
           "--trainer.max_epochs", str(args.epochs), "--benchmark.strategies", "[hpc_ddp]",
           "--benchmark.workers", args.workers, "--benchmark.repetitions", str(args.repetitions),
           "--benchmark.launcher", "local", "--benchmark.output_dir", str(out),
           "--benchmark.accelerator", "cpu"]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=3600, cwd=out.parent)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.monotonic() - start


def _verdict(built: report.Report) -> dict[str, Any]:
    """The findings a reader acts on: the fastest configuration and where efficiency drops (and whether
    the report called that uncertain)."""
    rec = built.recommendation
    fastest = rec.get("fastest") or {}
    return {
        "fastest": [fastest.get("strategy"), fastest.get("workers")],
        "efficiency_drop": [
            [d["strategy"], d["below_at_workers"], [u["workers"] for u in d.get("uncertain_at", [])]]
            for d in rec.get("efficiency_drop", [])
        ],
    }


def _flagged(built: report.Report) -> list[list[Any]]:
    return sorted([r.strategy, r.workers] for r in built.rows if r.flags)


def _figures(built: report.Report) -> list[dict[str, Any]]:
    out = []
    for row in built.rows:
        eff = row.efficiency_pct
        k = eff / row.speedup if eff is not None and row.speedup else None
        out.append(
            {
                "workers": row.workers,
                "epoch_time_s": row.epoch_time_s,
                "epoch_time_min_max_s": (row.epoch_time_min_s, row.epoch_time_max_s),
                "efficiency_pct": eff,
                "efficiency_min_max_pct": (
                    (row.speedup_min * k, row.speedup_max * k)
                    if k is not None and row.speedup_min is not None and row.speedup_max is not None
                    else None
                ),
                "flags": row.flags,
            }
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="[1, 2]")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="itwinai-stability-") as tmp:
        cfg = Path(tmp, "base.yaml")
        cfg.write_text(CONFIG)
        results = []
        for name in ("first", "second"):
            out = Path(tmp, name)
            wall = _grid(cfg, out, args)
            built = report.build([out])
            results.append(
                {"run": name, "wall_s": wall, "rows": _figures(built), "verdict": _verdict(built),
                 "flagged": _flagged(built)}
            )  # fmt: skip
    for result in results:
        print(f"{result['run']} run ({result['wall_s']:.0f} s):")
        for row in result["rows"]:
            lo, hi = row["epoch_time_min_max_s"]
            band = row["efficiency_min_max_pct"]
            spread = f" [{band[0]:.0f}-{band[1]:.0f}]" if band else ""
            print(
                f"  N={row['workers']}: epoch {row['epoch_time_s']:.3f} s [{lo:.3f}-{hi:.3f}], "
                f"efficiency {row['efficiency_pct']:.0f} %{spread}"
                + (f"  FLAGGED: {row['flags']}" if row["flags"] else "")
            )
        print(f"  verdict: {json.dumps(result['verdict'])}; flagged: {json.dumps(result['flagged'])}")
    agree = results[0]["verdict"] == results[1]["verdict"]
    same_flags = results[0]["flagged"] == results[1]["flagged"]
    print(f"verdicts agree: {agree}; flagged configurations agree: {same_flags}")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
