"""Updates to a RunRecord go through one typed API (records.amend / records.merge): a key the schema does
not name fails type-checking before anything runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.childenv import REPO, child_env

SNIPPET = """
from itwinai_lightning import records

records.amend("run", summary={"samples_per_s": 1.0, "total_samples": 8}, fields={"status": "completed"})
records.amend("run", summary={"sample_per_s": 1.0})
records.amend("run", epoch=0, epoch_values={"train_time": 2.0})
records.amend("run", fields={"stauts": "failed"})
"""


def test_a_misspelt_record_key_fails_type_checking(tmp_path: Path) -> None:
    snippet = tmp_path / "update.py"
    snippet.write_text(SNIPPET)
    cmd = [sys.executable, "-m", "mypy", "--follow-imports=silent", str(snippet)]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert proc.returncode == 1, proc.stdout
    assert [line.split(":")[1] for line in errors] == ["5", "6", "7"], proc.stdout  # the good line passes
    expected = ['"summary"', "Summary"], ['"epoch_values"', "EpochEntry"], ['"fields"', "RunRecord"]
    for line, (argument, schema_type) in zip(errors, expected, strict=True):
        assert f"Argument {argument}" in line and f'expected "{schema_type} | None"' in line, line
