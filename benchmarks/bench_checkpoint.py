"""Time training is blocked per checkpoint: TimedCheckpoint in the background vs synchronous, in one run.

For each strategy (2 ranks under Lightning's launcher, CPU/gloo, the demo model at width 128 and depth 8:
~1.2 M parameters, ~14 MB with Adam's state), ``fit`` runs with ``TimedCheckpoint(every_min=0.005,
check_every_n_steps=1)`` (a save every 0.3 s of training: as in real use, where saves are minutes apart, a
save never waits for the previous write, which takes tens of ms here), once with ``background: true`` and
once with ``false``, interleaved over ``--reps``; ``hpc_ddp (1 rank)`` is one process (no barrier, no second
rank competing with the writer thread for this machine's 2 cores). The figures are rank 0's, from the
RunRecord's ``timed_checkpoints`` section: the median seconds training waited per save
(``blocked_s_median``), the part of it spent copying (``copy_s_median``) and the writer's seconds per file
(``written_s_median``).

    python benchmarks/bench_checkpoint.py [--reps 3]

Target: background blocked time <= 20 % of the synchronous one.
All three write in the background: full states and DeepSpeed's files by the writer thread, FSDP's sharded
state by torch's distributed checkpoint in that thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "foundation" / "tiny.yaml"
PKG = "itwinai_lightning.strategies"
STRATEGIES = {
    "hpc_ddp (1 rank)": ["--trainer.devices=1", "--data.init_args.batch_size=8"],
    "hpc_ddp": [],  # the tiny config's strategy
    "hpc_fsdp (full)": [
        f"--trainer.strategy={PKG}.fsdp.HPCFSDPStrategy",
        "--trainer.strategy.init_args.state_dict_type=full",
    ],
    "hpc_fsdp (sharded)": ["--trainer.strategy=hpc_fsdp"],
    "hpc_deepspeed": ["--trainer.strategy=hpc_deepspeed"],
}


def one_run(strategy: str, background: bool, root: Path, width: int = 128, depth: int = 8) -> dict[str, Any]:
    out = root / f"{strategy.split()[0]}-{background}-{len(list(root.iterdir()))}"
    # (later flags win: the 1-rank case overrides devices and the batch, keeping the global batch of 8)
    args = [
        sys.executable, "-m", "itwinai_lightning", "fit", "--config", str(TINY),
        "--trainer.devices=2", "--data.init_args.batch_size=4", "--trainer.max_epochs=8",
        f"--model.init_args.width={width}", f"--model.init_args.depth={depth}",
        "--model.init_args.optimizer=adam",
        f"--trainer.default_root_dir={out}", *STRATEGIES[strategy],
        "--trainer.callbacks+=TimedCheckpoint", "--trainer.callbacks.every_min=0.005",
        "--trainer.callbacks.check_every_n_steps=1",
        f"--trainer.callbacks.background={str(background).lower()}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=root)
    if proc.returncode != 0:
        raise SystemExit(f"{strategy} background={background} failed:\n{proc.stderr[-3000:]}")
    record = json.loads(next(out.rglob("run_record.json")).read_text())
    return dict(record["sections"]["timed_checkpoints"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--strategies", nargs="*", default=list(STRATEGIES))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--width", type=int, default=128, help="the demo model's width (the issue's: 128)")
    parser.add_argument("--depth", type=int, default=8)
    args = parser.parse_args()
    blocked: dict[tuple[str, bool], list[float]] = {}
    written: dict[tuple[str, bool], list[float]] = {}
    own_way: dict[str, bool] = {}
    copied: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for strategy in args.strategies:
                for background in (True, False):
                    section = one_run(strategy, background, Path(tmp), args.width, args.depth)
                    blocked.setdefault((strategy, background), []).append(section["blocked_s_median"])
                    if background and section.get("copy_s_median") is not None:
                        copied.setdefault(strategy, []).append(section["copy_s_median"])
                    if section.get("written_s_median") is not None:
                        written.setdefault((strategy, background), []).append(section["written_s_median"])
                    if background:
                        own_way[strategy] = not section["background"]
                    waited = section.get("waited_s_max")
                    print(
                        f"rep {rep + 1}: {strategy:<20} background={background!s:<5} "
                        f"saves {section['saves']:>3} blocked {section['blocked_s_median'] * 1e3:7.1f} ms"
                        + (f" (longest wait for the previous write {waited * 1e3:.1f} ms)" if waited else ""),
                        flush=True,
                    )
    result: dict[str, Any] = {}
    print(
        f"\n{'strategy':<20} {'blocked bg':>12} {'blocked sync':>13} {'bg/sync':>8} {'copy':>9} "
        f"{'writer':>9}  "
        "spread (bg; sync)"
    )
    for strategy in args.strategies:
        bg, sync = blocked[(strategy, True)], blocked[(strategy, False)]
        ratio = statistics.median(bg) / statistics.median(sync)
        write = written.get((strategy, True)) or [float("nan")]
        copy = copied.get(strategy) or [float("nan")]
        result[strategy] = {
            "blocked_bg_s": bg,
            "blocked_sync_s": sync,
            "ratio": ratio,
            "own_way": own_way[strategy],
            "copy_s": copy,
            "written_s": write,
        }
        note = " (writes its own way: synchronous)" if own_way[strategy] else ""
        print(
            f"{strategy:<20} {statistics.median(bg) * 1e3:>9.1f} ms "
            f"{statistics.median(sync) * 1e3:>10.1f} ms "
            f"{ratio * 100:>7.0f}% {statistics.median(copy) * 1e3:>6.1f} ms "
            f"{statistics.median(write) * 1e3:>6.1f} ms  "
            f"{min(bg) * 1e3:.1f}-{max(bg) * 1e3:.1f}; {min(sync) * 1e3:.1f}-{max(sync) * 1e3:.1f} ms{note}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
