"""``python -m itwinai_lightning profile report RUN_DIR``: rebuild the profiling summaries from saved files.

Reads ``RUN_DIR/profiling/pyspy/rank<N>.collapsed.txt`` (py-spy stacks) and, when present,
``RUN_DIR/profiling/torch/rank<N>.trace.json`` (chrome traces); rewrites ``hotspots.md``/``hotspots.json``
and the RunRecord sections ``pyspy`` / ``torch_profiler``, and prints the markdown summary.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from itwinai_lightning import records
from itwinai_lightning.errors import CommandParser, UserError
from itwinai_lightning.profiling import breakdown, hotspots, stacks
from itwinai_lightning.profiling.report import SUBDIR, build_report

TORCH_SUBDIR = Path("profiling") / "torch"
_RANK = re.compile(r"rank(\d+)\.")


def _ranked(directory: Path, pattern: str) -> dict[int, Path]:
    found = {}
    for path in sorted(directory.glob(pattern)):
        match = _RANK.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def report(run_dir: Path, top: int = 5) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """Rebuild both summaries; raise :class:`UserError` when ``run_dir`` holds no saved profile."""
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; pass a run directory (runs/x/version_0)")
    from itwinai_lightning.records.store import run_of

    run_dir = run_of(run_dir)
    collapsed = _ranked(run_dir / SUBDIR, "rank*.collapsed.txt")
    traces = _ranked(run_dir / TORCH_SUBDIR, "rank*.trace.json")
    if not collapsed and not traces:
        raise UserError(
            f"no saved profile in {run_dir}: expected {SUBDIR}/rank<N>.collapsed.txt or "
            f"{TORCH_SUBDIR}/rank<N>.trace.json (add PySpyProfiler or TorchProfilerBreakdown to the run)"
        )
    per_rank = []
    for rank, path in collapsed.items():
        summary = hotspots.summarize_rank(stacks.read_collapsed(path), top)
        per_rank.append({"rank": rank, "error": None, **summary})
    pyspy = build_report(run_dir / SUBDIR, per_rank, top) if collapsed else {}
    torch_summary = None
    if traces:
        try:
            results = {rank: breakdown.analyze_file(path) for rank, path in traces.items()}
        except ValueError as err:
            raise UserError(str(err)) from err
        torch_summary = breakdown.merge(results)
        torch_summary["trace_files"] = [str(TORCH_SUBDIR / p.name) for p in traces.values()]
    if records.record_path(run_dir).exists():
        if collapsed:
            records.amend(run_dir, section="pyspy", section_values=pyspy)
        if torch_summary is not None:
            records.amend(run_dir, section="torch_profiler", section_values=torch_summary)
    text = hotspots.to_markdown(pyspy) if collapsed else ""
    if torch_summary is not None:
        fr = torch_summary["fractions"]
        text += (
            "\n# torch.profiler breakdown\n\n"
            + "\n".join(f"- {k}: {100 * fr[k]:.1f}%" for k in breakdown.FRACTIONS)
            + f"\n- compute/communication overlap: {100 * torch_summary['overlap']:.1f}%\n"
        )
    return text, pyspy, torch_summary


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(
        prog="itwinai-lightning profile", description="Profiling reports from a run directory."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    rep = sub.add_parser("report", help="rebuild the hotspot summary (and torch breakdown) from saved files")
    rep.add_argument("run_dir", type=Path, help="the run directory, or the root of runs (its latest run)")
    rep.add_argument("--top", type=int, default=5, help="top functions per category (default 5)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    text, _, _ = report(args.run_dir, args.top)  # a UserError is the CLI's one line
    print(text)
    return 0
