"""``benchmark report DIR [DIR ...]``: RunRecords -> CSV, PNG plots, one self-contained HTML page.

The report reads only RunRecords (``run_record.json``, found recursively), so runs made on other
machines or clusters can be copied side by side and merged into one report.

Outputs (in ``out``, default the first DIR)::

    benchmark_summary.csv   one row per configuration (see table.py for every column's definition)
    benchmark_runs.csv      one row per run, failed ones with their error text
    report.json             the table, the recommendation and the fitted scaling models
    plots/<name>.png        one PNG per plot in plots.PLOTS the runs hold data for (the others are named,
                            with the reason, in report.json's ``figures_left_out`` and on the page)
    report.html             everything above in one file (PNGs embedded as base64), no external assets
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from itwinai_lightning.benchmark.report import html as report_html
from itwinai_lightning.benchmark.report import plots, scaling
from itwinai_lightning.benchmark.report.data import Report
from itwinai_lightning.benchmark.report.findings import recommend
from itwinai_lightning.benchmark.report.table import (
    RUN_COLUMNS,
    SUMMARY_COLUMNS,
    Row,
    Run,
    aggregate,
    collect,
    series_label,
)
from itwinai_lightning.errors import UserError

DEFAULT_THRESHOLD_PCT = 70.0


def fit_models(
    runs: Sequence[Run], notes: list[str] | None = None
) -> dict[tuple[str, str, str], scaling.ScalingModel]:
    """One model per series measured at :data:`scaling.MIN_SIZES` or more distinct worker counts (completed
    runs); each series left out gets a line in ``notes`` saying why."""
    models = {}
    by_series: dict[tuple[str, str, str], list[Run]] = {}
    for run in runs:
        if run.ok:
            by_series.setdefault((run.strategy, run.launcher, run.scaling), []).append(run)
    for series, members in sorted(by_series.items()):
        sizes = len({r.workers for r in members})
        if sizes < scaling.MIN_SIZES:
            if notes is not None:
                notes.append(
                    f"No scaling model for {series[0]} ({series[1]}, {series[2]} scaling): {sizes} distinct "
                    f"worker count(s) measured, a model of 3 terms needs at least {scaling.MIN_SIZES}."
                )
            continue
        mode = series[2] if series[2] in scaling.MODES else "strong"
        times = [float(r.epoch_time_s or 0.0) for r in members]  # ok runs all have an epoch time
        models[series] = scaling.fit([r.workers for r in members], times, mode)
    return models


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in columns})


def _fastest_line(fastest: Mapping[str, Any] | None, name: Callable[[Mapping[str, Any]], str]) -> str:
    """The fastest configuration, or no winner when the noise cannot tell the best ones apart."""
    if not fastest:
        return "Fastest: no run completed."
    spread = " (one repetition: no spread measured)" if fastest.get("single_repetition") else ""
    tied = fastest.get("tied") or []
    if tied:
        names = ", ".join(f"{name(t)} ({t['epoch_time_s']:.3g} s)" for t in tied)
        return (
            f"Fastest: no clear winner{spread}: {name(fastest)} ({fastest['epoch_time_s']:.3g} s per epoch) "
            f"cannot be told apart from {names}; rerun with more repetitions."
        )
    return f"Fastest: {name(fastest)} ({fastest['epoch_time_s']:.3g} s per epoch){spread}."


def recommendation_lines(rec: Mapping[str, Any], rows: Sequence[Row]) -> list[str]:
    """The recommendation as short sentences (used in the HTML page and printed by the CLI)."""
    all_series = sorted({r.series for r in rows})

    def name(d: Mapping[str, Any]) -> str:
        label = series_label((d["strategy"], d["launcher"], d["scaling"]), all_series)
        return f"{label} with {d['workers']} workers"

    lines = []
    lines.append(_fastest_line(rec.get("fastest"), name))
    least = rec.get("least_energy")
    lines.append(
        f"Least energy per sample: {name(least)} ({least['energy_per_sample_wh'] * 1000:.3g} mWh per sample)."
        if least
        else "Least energy per sample: no energy recorded (needs GPUMonitor, and a GPU power sensor or "
        "readable RAPL counters)."
    )
    reached = rec.get("fastest_to_target")
    if reached:
        energy = reached.get("energy_to_target_wh")
        lines.append(
            f"Fastest to {reached['metric']} {reached['target']:.4g}: {name(reached)} "
            f"({reached['time_to_target_s']:.3g} s" + (f", {energy:.3g} Wh)." if energy is not None else ").")
        )
    threshold = rec["threshold_pct"]
    for drop in rec.get("efficiency_drop", []):
        label = series_label((drop["strategy"], drop["launcher"], drop["scaling"]), all_series)
        if drop["below_at_workers"] is not None:
            lines.append(
                f"{label}: efficiency drops below {threshold:g} % at {drop['below_at_workers']} workers "
                f"({drop['efficiency_pct']:.0f} %)."
            )
        elif drop.get("superlinear_at"):
            spans = ", ".join(
                f"{s['efficiency_pct']:.0f} % at {s['workers']}" for s in drop["superlinear_at"]
            )
            lines.append(
                f"{label}: efficiency above 100 % ({spans} workers) is not good scaling: the 1-worker "
                "baseline was slower than it should be (threads, warm-up, noise) or the work differs; "
                "check the baseline before trusting these figures."
            )
        elif drop["max_measured"] is not None:
            lines.append(
                f"{label}: efficiency stays above {threshold:g} % up to {drop['max_measured']} workers."
            )
        if drop.get("uncertain_at"):
            spans = ", ".join(
                f"{u['workers']} workers span {u['low_pct']:.0f}-{u['high_pct']:.0f} %"
                for u in drop["uncertain_at"]
            )
            lines.append(
                f"{label}: this verdict is uncertain, the repetitions fall on both sides of {threshold:g} % "
                f"({spans}); rerun with more repetitions on a quieter machine."
            )
    return lines


def build(
    dirs: Sequence[str | Path], out: str | Path | None = None, threshold_pct: float = DEFAULT_THRESHOLD_PCT
) -> Report:
    """Read every RunRecord under ``dirs`` and write the report into ``out`` (default: the first DIR)."""
    if not dirs:
        raise UserError("benchmark report needs at least one directory holding run_record.json files")
    for d in dirs:
        if not Path(d).is_dir():
            raise UserError(f"benchmark report: {str(d)!r} is not a directory")
    runs, warnings = collect(dirs)
    if not runs:
        raise UserError(
            f"no run_record.json found under {', '.join(map(str, dirs))}; run 'benchmark' first or point "
            "'benchmark report' at a directory holding runs"
        )
    if not 0 < threshold_pct <= 100:
        raise UserError(f"--threshold must be a percentage in (0, 100], got {threshold_pct}")
    out_dir = Path(out) if out is not None else Path(dirs[0])
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    rows = aggregate(runs)
    notes: list[str] = []
    models = fit_models(runs, notes)
    report = Report(
        out_dir,
        runs,
        rows,
        recommend(rows, threshold_pct, [r for r in runs if r.ok]),
        models,
        {},
        warnings,
        notes,
    )
    images, report.left_out = plots.render_all(rows, models=models, threshold_pct=threshold_pct, runs=runs)
    for stale in (out_dir / "plots").glob("*.png"):  # a figure left out this time must not linger
        if stale.stem not in images:
            stale.unlink()
    for name, png in images.items():
        path = out_dir / "plots" / f"{name}.png"
        path.write_bytes(png)
        report.files[name] = path
    report.files["summary_csv"] = out_dir / "benchmark_summary.csv"
    _write_csv(report.files["summary_csv"], SUMMARY_COLUMNS, [r.as_row() for r in rows])
    report.files["runs_csv"] = out_dir / "benchmark_runs.csv"
    _write_csv(report.files["runs_csv"], RUN_COLUMNS, [r.as_row() for r in runs])
    report.files["json"] = out_dir / "report.json"
    findings = recommendation_lines(report.recommendation, rows)
    payload = {
        "rows": [r.as_row() for r in rows],
        "recommendation": report.recommendation,
        "recommendation_text": findings,
        "models": [
            {"strategy": s[0], "launcher": s[1], "scaling": s[2], **m.as_dict()}
            for s, m in sorted(models.items())
        ],
        "warnings": warnings,
        "notes": notes,
        "figures_left_out": report.left_out,
        "provenance": report_html.provenance_rows(runs),
        "flags": [{"strategy": r.strategy, "workers": r.workers, "flags": r.flags} for r in rows if r.flags],
    }
    report.files["json"].write_text(json.dumps(payload, indent=2))
    report.files["html"] = out_dir / "report.html"
    report.files["html"].write_text(report_html.page(report, findings, images, [str(d) for d in dirs]))
    return report
