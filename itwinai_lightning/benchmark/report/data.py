"""What a scalability report is made of, shared by the code that computes it (:mod:`.report`) and the code
that renders it as HTML (:mod:`.report_html`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from itwinai_lightning.benchmark.report import scaling
from itwinai_lightning.benchmark.report.table import Row, Run


@dataclass
class Report:
    """What ``report.build`` produced, for callers and tests."""

    out: Path
    runs: list[Run]
    rows: list[Row]
    recommendation: dict[str, Any]
    models: dict[tuple[str, str, str], scaling.ScalingModel]
    files: dict[str, Path]
    warnings: list[str]
    notes: list[str]  # series without a scaling model, and why
    left_out: dict[str, str] = field(default_factory=dict)  # figures the runs hold no data for, and why
