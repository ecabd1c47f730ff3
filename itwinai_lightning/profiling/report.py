"""Write the merged py-spy hotspot report (``hotspots.md`` + ``hotspots.json``) from per-rank summaries."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from itwinai_lightning.profiling import hotspots

SUBDIR = Path("profiling") / "pyspy"


def build_report(
    out: Path, per_rank: Sequence[dict[str, Any] | None], top: int = 5, rate_hz: int | None = None
) -> dict[str, Any]:
    """Merge per-rank summaries and write ``hotspots.md`` and ``hotspots.json`` into ``out``."""
    ok = {int(s["rank"]): s for s in per_rank if s and "counts" in s}
    summary = hotspots.merge(ok, top)
    summary["errors"] = {str(s["rank"]): s["error"] for s in per_rank if s and s.get("error")}
    summary["rate_hz"] = rate_hz
    summary["files"] = {
        str(r): {
            kind: str(SUBDIR / f"rank{r}.{kind}") for kind in ("collapsed.txt", "speedscope.json", "svg")
        }
        for r in ok
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "hotspots.json").write_text(json.dumps(summary, indent=1))
    text = hotspots.to_markdown(summary)
    if summary["errors"]:
        text += "\n## Errors\n\n" + "\n".join(f"- rank {r}: {e}" for r, e in summary["errors"].items()) + "\n"
    (out / "hotspots.md").write_text(text)
    return summary
