"""The package's shape, checked by import-linter's contracts in pyproject.toml (the same as ``nox -s lint``):
no import cycles between the modules or folders of one package, imports inside functions included."""

from __future__ import annotations

import shutil
import subprocess

from tests.helpers.childenv import REPO, child_env


def test_the_import_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports")
    assert exe is not None, "lint-imports is missing: pip install -e '.[dev]' (bash scripts/setup.sh)"
    proc = subprocess.run([exe, "--no-cache"], cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "Contracts: 1 kept, 0 broken." in proc.stdout
