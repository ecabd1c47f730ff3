"""The benchmark report's HTML page (one self-contained file) and its tables.

:func:`page` renders what :func:`itwinai_lightning.benchmark.report.build.build` computed; nothing here
measures or derives figures (``table.py`` and ``derive`` do), it only lays them out.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from itwinai_lightning.benchmark.report import plots, scaling
from itwinai_lightning.benchmark.report.table import Row, Run, series_label

if TYPE_CHECKING:
    from itwinai_lightning.benchmark.report.data import Report


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: empty for None and non-finite floats, 4 significant digits for floats."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.{digits}g}"
    return str(value)


def _table_html(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(r[c]))}</td>" for c in columns) + "</tr>" for r in rows
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


def page(report: Report, findings: Sequence[str], images: Mapping[str, bytes], sources: Sequence[str]) -> str:
    """The self-contained page: findings, flags, results, figures (PNGs inlined), provenance, failures."""
    rec_items = "".join(f"<li>{html.escape(s)}</li>" for s in findings)
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
        if name not in images:
            continue
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
    if report.left_out:
        items = "".join(
            f"<li><b>{html.escape(plots.PLOTS[name])}</b>: {html.escape(why)}</li>"
            for name, why in report.left_out.items()
        )
        parts.append(f"<p>Figures left out (no data for them):</p><ul class='left-out'>{items}</ul>")
        if "scaling_model" in report.left_out and report.notes:
            notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
            parts.append(f"<div class='warn'><ul>{notes}</ul></div>")
    parts += _provenance_html(report.runs)
    if failed:
        parts.append(f"<h2>Failed runs ({len(failed)})</h2>")
        cols = ("strategy", "launcher", "workers", "repetition", "status", "run_dir", "error")
        body = "".join(
            "<tr>"
            + "".join(
                f"<td class='{'err' if c == 'error' else ''}'>{html.escape(fmt(r[c]))}</td>" for c in cols
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
