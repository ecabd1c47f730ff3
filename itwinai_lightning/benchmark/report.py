"""``benchmark report DIR [DIR ...]``: RunRecords -> CSV, PNG plots, one self-contained HTML page.

The report reads only RunRecords (``run_record.json``, found recursively), so runs made on other
machines or clusters can be copied side by side and merged into one report.

Outputs (in ``out``, default the first DIR)::

    benchmark_summary.csv   one row per configuration (see table.py for every column's definition)
    benchmark_runs.csv      one row per run, failed ones with their error text
    report.json             the table, the recommendation and the fitted scaling models
    plots/<name>.png        one PNG per plot in plots.PLOTS
    report.html             everything above in one file (PNGs embedded as base64), no external assets
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from itwinai_lightning.benchmark import plots, scaling
from itwinai_lightning.benchmark.findings import recommend
from itwinai_lightning.benchmark.table import (
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


@dataclass
class Report:
    """What :func:`build` produced, for callers and tests."""

    out: Path
    runs: list[Run]
    rows: list[Row]
    recommendation: dict[str, Any]
    models: dict[tuple[str, str, str], scaling.ScalingModel]
    files: dict[str, Path]
    warnings: list[str]
    notes: list[str]  # series without a scaling model, and why


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


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.{digits}g}"
    return str(value)


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in columns})


def recommendation_lines(rec: Mapping[str, Any], rows: Sequence[Row]) -> list[str]:
    """The recommendation as short sentences (used in the HTML page and printed by the CLI)."""
    all_series = sorted({r.series for r in rows})

    def name(d: Mapping[str, Any]) -> str:
        label = series_label((d["strategy"], d["launcher"], d["scaling"]), all_series)
        return f"{label} with {d['workers']} workers"

    lines = []
    fastest = rec.get("fastest")
    lines.append(
        f"Fastest: {name(fastest)} ({fastest['epoch_time_s']:.3g} s per epoch)."
        if fastest
        else "Fastest: no run completed."
    )
    least = rec.get("least_energy")
    lines.append(
        f"Least energy per sample: {name(least)} ({least['energy_per_sample_wh'] * 1000:.3g} mWh per sample)."
        if least
        else "Least energy per sample: no energy recorded (needs GPUMonitor and a GPU with a power sensor)."
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


def _table_html(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1280px;padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{margin-top:1.4em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 6px;
text-align:right}th{background:#eee}.rec{background:#eef6ee;border-left:4px solid #3a3;padding:.6em 1em}
.warn{background:#fff4e5;border-left:4px solid #e80;padding:.6em 1em}img{width:100%;display:block}
.err{text-align:left;font-family:monospace;white-space:pre-wrap;max-width:700px}
.wide{overflow-x:auto;max-width:100%}.wide td{text-align:left;max-width:420px;word-break:break-word}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 1em;font-size:14px;margin:.6em 0}
.facts b{color:#555;font-weight:600}.grid{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:1em}
.grid figure{margin:0;border:1px solid #e4e4e4;padding:.4em}
.grid figcaption{font-weight:600;margin-bottom:.3em}.grid .full{grid-column:1 / -1}"""

#: The HTML's results table: the columns a reader needs at a glance (the CSV has every column).
KEY_COLUMNS = (
    "configuration", "nodes", "repetitions", "epoch time [s] median (min-max)", "speedup", "efficiency [%]",
    "samples/s", "MFU [%]", "energy [mWh/sample]", "time to target [s]", "flags",
)  # fmt: skip
#: plots that need the page's full width (many bars, or two panels)
FULL_WIDTH = ("energy", "accuracy", "scaling_model")


def key_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The results table of the HTML page: one line per configuration, spreads beside the medians."""
    all_series = sorted({r.series for r in rows})

    def spread(r: Row) -> str:
        if r.epoch_time_s is None:
            return ""
        if r.repetitions > 1 and r.epoch_time_min_s is not None and r.epoch_time_max_s is not None:
            return f"{r.epoch_time_s:.3g} ({r.epoch_time_min_s:.3g}-{r.epoch_time_max_s:.3g})"
        return f"{r.epoch_time_s:.3g}"

    return [
        {
            "configuration": f"{series_label(r.series, all_series)} x {r.workers}",
            "nodes": r.nodes,
            "repetitions": f"{r.repetitions}" + (f" (+{r.failed} failed)" if r.failed else ""),
            "epoch time [s] median (min-max)": spread(r),
            "speedup": r.speedup,
            "efficiency [%]": r.efficiency_pct,
            "samples/s": r.samples_per_s,
            "MFU [%]": r.mfu_pct,
            "energy [mWh/sample]": r.energy_per_sample_wh * 1000 if r.energy_per_sample_wh else None,
            "time to target [s]": r.time_to_target_s,
            "flags": "see above" if r.flags else "",
        }
        for r in rows
    ]


def _facts_html(runs: Sequence[Run]) -> str:
    """The header: hardware, software and workload of the runs, each distinct value once."""
    provenance = [r.provenance for r in runs if r.ok] or [r.provenance for r in runs]

    def values(key: str) -> str:
        seen = [str(p.get(key)) for p in provenance if p.get(key) not in (None, "")]
        distinct = list(dict.fromkeys(seen))
        return "; ".join(distinct[:4]) + (f" (+{len(distinct) - 4} more)" if len(distinct) > 4 else "")

    hosts = sorted({h.strip() for p in provenance for h in str(p.get("hosts") or "").split(",") if h.strip()})
    facts = {
        "hosts": f"{len(hosts)}: {', '.join(hosts[:8])}" + (" ..." if len(hosts) > 8 else ""),
        "CPU": values("cpu"),
        "devices": values("devices"),
        "software": values("software"),
        "model": f"{values('parameters')} parameters" if values("parameters") else "",
        "workload": f"global batch {values('global_batch')}, {values('samples_per_epoch')} samples per "
        f"epoch, {values('epochs')} epochs ({values('warmup_epochs')} warm-up)",
    }
    items = "".join(
        f"<b>{html.escape(k)}</b><span>{html.escape(v)}</span>" for k, v in facts.items() if v.strip(" :;")
    )
    return f"<div class='facts'>{items}</div>"


PROVENANCE_COLUMNS = (
    "configuration", "hosts", "nodes", "cpu", "devices", "software", "parameters", "global_batch",
    "per_worker_batch", "samples_per_epoch", "epochs", "warmup_epochs", "command",
)  # fmt: skip


def provenance_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per configuration (its first completed run): what ran where, and how."""
    seen: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: (r.strategy, r.launcher, r.scaling, r.workers, r.repetition)):
        key = (run.strategy, run.launcher, run.scaling, run.workers)
        if run.ok and key not in seen:
            seen[key] = {
                "configuration": f"{run.strategy} ({run.launcher}) x {run.workers}",
                **run.provenance,
            }
    return list(seen.values())


def _provenance_html(runs: Sequence[Run]) -> list[str]:
    provenance = provenance_rows(runs)
    if not provenance:
        return []
    table = _table_html(PROVENANCE_COLUMNS, provenance)
    return ["<h2>Provenance: what ran where</h2>", f"<div class='wide'>{table}</div>"]


def _flags_html(rows: Sequence[Row]) -> list[str]:
    """A "Check these figures" section listing every flagged configuration, or nothing."""
    flagged = [r for r in rows if r.flags]
    if not flagged:
        return []
    all_series = sorted({r.series for r in rows})
    items = "".join(
        f"<li><b>{html.escape(series_label(r.series, all_series))}, {r.workers} workers</b>: "
        f"{html.escape(r.flags)}</li>"
        for r in flagged
    )
    return [f"<h2>Check these figures</h2><div class='warn'><ul>{items}</ul></div>"]


def _html(report: Report, images: Mapping[str, bytes], sources: Sequence[str]) -> str:
    rec_items = "".join(
        f"<li>{html.escape(s)}</li>" for s in recommendation_lines(report.recommendation, report.rows)
    )
    model_rows = []
    for series, model in sorted(report.models.items()):
        opt = model.optimal_workers()
        ext = model.as_dict()
        band = ext["extrapolated_band_s"]
        model_rows.append(
            {
                "series": series_label(series, sorted(report.models)),
                "formula": model.formula(),
                "R²": model.r2,
                "RMSE [s]": model.rmse_s,
                "measured N": ", ".join(map(str, model.measured_workers)),
                "optimum N (model)": opt,
                f"T({ext['extrapolated_workers']}) [s], extrapolated": (
                    f"{ext['extrapolated_s']:.3g} ({100 * scaling.BAND_LEVEL:.0f} % band "
                    f"{band[0]:.3g}-{band[1]:.3g})"
                    if isinstance(band, list)
                    else f"{ext['extrapolated_s']:.3g} ({ext['band_note']})"
                ),
            }
        )
    failed = [r.as_row() for r in report.runs if not r.ok]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>itwinai-lightning benchmark report</title>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<style>{_CSS}</style></head><body><h1>Benchmark report</h1>",
        f"<p>{len(report.runs)} runs ({sum(r.ok for r in report.runs)} completed) from "
        f"{html.escape(', '.join(sources))}; generated {datetime.now(UTC).isoformat(timespec='seconds')}."
        "</p>",
        _facts_html(report.runs),
        f"<h2>Findings</h2><div class='rec'><ul>{rec_items}</ul></div>",
        *_flags_html(report.rows),
        "<h2>Results (median over repetitions)</h2>",
        "<p>speedup = epoch time(N0) / epoch time(N); efficiency = speedup / (N / N0), N0 = the smallest "
        "worker count of the same strategy, launcher and scaling mode. Every column: benchmark_summary.csv."
        "</p>",
        f"<div class='wide'>{_table_html(KEY_COLUMNS, key_rows(report.rows))}</div>",
        "<h2>Figures</h2><div class='grid'>",
    ]
    for name, title in plots.PLOTS.items():
        data = base64.b64encode(images[name]).decode("ascii")
        wide = " class='full'" if name in FULL_WIDTH else ""
        parts.append(
            f"<figure{wide}><figcaption>{html.escape(title)}</figcaption>"
            f"<img alt='{name}' src='data:image/png;base64,{data}'>"
        )
        if name == "scaling_model" and report.notes:
            items = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
            parts.append(f"<div class='warn'><ul>{items}</ul></div>")
        if name == "scaling_model" and model_rows:
            parts.append(
                "<p class='warn'>Curves beyond the largest measured worker count (shaded, dashed) are "
                "<b>extrapolation</b> from the fitted model, not measurements.</p>"
            )
            parts.append(f"<div class='wide'>{_table_html(list(model_rows[0]), model_rows)}</div>")
        parts.append("</figure>")
    parts.append("</div>")
    parts += _provenance_html(report.runs)
    if failed:
        parts.append(f"<h2>Failed runs ({len(failed)})</h2>")
        cols = ("strategy", "launcher", "workers", "repetition", "status", "run_dir", "error")
        body = "".join(
            "<tr>"
            + "".join(
                f"<td class='{'err' if c == 'error' else ''}'>{html.escape(_fmt(r[c]))}</td>" for c in cols
            )
            + "</tr>"
            for r in failed
        )
        parts.append(
            "<table><thead><tr>"
            + "".join(f"<th>{c}</th>" for c in cols)
            + f"</tr></thead><tbody>{body}</tbody></table>"
        )
    if report.warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in report.warnings)
        parts.append(f"<h2>Skipped files</h2><div class='warn'><ul>{items}</ul></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


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
    images = plots.render_all(rows, models=models, threshold_pct=threshold_pct, runs=runs)
    for name, png in images.items():
        path = out_dir / "plots" / f"{name}.png"
        path.write_bytes(png)
        report.files[name] = path
    report.files["summary_csv"] = out_dir / "benchmark_summary.csv"
    _write_csv(report.files["summary_csv"], SUMMARY_COLUMNS, [r.as_row() for r in rows])
    report.files["runs_csv"] = out_dir / "benchmark_runs.csv"
    _write_csv(report.files["runs_csv"], RUN_COLUMNS, [r.as_row() for r in runs])
    report.files["json"] = out_dir / "report.json"
    payload = {
        "rows": [r.as_row() for r in rows],
        "recommendation": report.recommendation,
        "recommendation_text": recommendation_lines(report.recommendation, rows),
        "models": [
            {"strategy": s[0], "launcher": s[1], "scaling": s[2], **m.as_dict()}
            for s, m in sorted(models.items())
        ],
        "warnings": warnings,
        "notes": notes,
        "provenance": provenance_rows(runs),
        "flags": [{"strategy": r.strategy, "workers": r.workers, "flags": r.flags} for r in rows if r.flags],
    }
    report.files["json"].write_text(json.dumps(payload, indent=2))
    report.files["html"] = out_dir / "report.html"
    report.files["html"].write_text(_html(report, images, [str(d) for d in dirs]))
    return report
