"""``python -m itwinai_lightning benchmark ...``: run the scaling grid, or ``benchmark report DIR``.

Grid::

    python -m itwinai_lightning benchmark --config base.yaml \\
        --benchmark.strategies [hpc_ddp, hpc_deepspeed] --benchmark.workers [1, 2] \\
        --benchmark.launcher local|torchrun|mpirun|srun|horovodrun|ray

The ``benchmark:`` section may also live in any ``--config`` file; everything else is passed to every
grid point's ``fit``. Exit code 0 when every point completed (or was skipped as already completed),
1 when some failed (they are in the report), 2 on bad input.

Report (also written at the end of a grid)::

    python -m itwinai_lightning benchmark report DIR [DIR ...] [--out OUT] [--threshold 70]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from itwinai_lightning.errors import CommandParser, UserError
from itwinai_lightning.sections import keep_rewritten_configs, split_section

USAGE = __doc__ or ""


def report_main(argv: list[str]) -> int:
    parser = CommandParser(
        prog="itwinai-lightning benchmark report",
        description="Build the scalability report (CSV, PNG plots, HTML page) from the RunRecords in DIRs.",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="directories holding run_record.json files")
    parser.add_argument("--out", default=None, help="where to write the report (default: the first DIR)")
    parser.add_argument(
        "--threshold", type=float, default=70.0, help="parallel efficiency threshold in percent (default 70)"
    )
    args = parser.parse_args(argv)
    _print_report(args.dirs, args.out, args.threshold)
    return 0


def _print_report(dirs: list[str], out: str | None, threshold: float) -> None:
    from itwinai_lightning.benchmark.report.build import build, recommendation_lines

    report = build(dirs, out, threshold)
    for warning in report.warnings:
        print(f"benchmark: warning: skipped {warning}", file=sys.stderr)
    for line in recommendation_lines(report.recommendation, report.rows):
        print(line)
    for row in report.rows:  # doubtful figures are said, not only drawn
        if row.flags:
            print(f"check {row.strategy} ({row.launcher}) at {row.workers} workers: {row.flags}")
    for note in report.notes:
        print(note)
    print(f"report: {report.files['html']}")


def main(argv: list[str]) -> int:
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    if any(a in ("-h", "--help") for a in argv):
        from itwinai_lightning.benchmark.settings import help_text

        print(help_text())
        return 0
    from itwinai_lightning.benchmark.runner import GridInterrupted, GridRunner
    from itwinai_lightning.benchmark.settings import check_devices, parse

    with tempfile.TemporaryDirectory(prefix="itwinai-benchmark-") as tmp:
        values, lightning_argv = split_section(argv, "benchmark", workdir=tmp)
        settings = parse(values, lightning_argv)  # every check before anything is written under output_dir
        for warning in check_devices(settings):
            print(warning, file=sys.stderr)
        out_dir = Path(settings.output_dir)
        # configs that held a benchmark: section, rewritten without it, live beside the runs (SLURM jobs
        # read them after this command has ended)
        lightning_argv = keep_rewritten_configs(lightning_argv, Path(tmp), out_dir / "configs")
    if not any(a.startswith(("--config", "-c", "--model", "--data")) for a in lightning_argv):
        raise UserError("benchmark needs the training config: pass --config base.yaml (as for 'fit')")
    try:
        results = GridRunner(settings, lightning_argv).run()
    except GridInterrupted as stop:
        print(
            f"benchmark: {stop}; completed points are kept, run the same command to resume", file=sys.stderr
        )
        return stop.exit_code
    failed = [r for r in results if r.status == "failed"]
    submitted = [r for r in results if r.status == "submitted"]
    print(
        f"benchmark: {len(results)} points: "
        + ", ".join(
            f"{n} {s}"
            for s in ("completed", "skipped", "failed", "submitted", "dry-run")
            if (n := sum(r.status == s for r in results))
        )
    )
    if submitted and not settings.slurm.get("wait"):
        print(f"benchmark: run 'benchmark report {out_dir}' once the SLURM jobs have finished")
    elif settings.report and not settings.dry_run:
        _print_report([str(out_dir)], None, settings.threshold_pct)
    return 1 if failed else 0
