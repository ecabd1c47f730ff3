"""The package's shape, checked by import-linter's contracts in pyproject.toml (the same as ``nox -s lint``):
no import cycles between the modules or folders of one package, imports inside functions included, and
no upward import across the layers (command table > subcommands > run path > capabilities > records >
launchers)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.helpers.childenv import REPO, child_env


def test_the_import_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports")
    assert exe is not None, "lint-imports is missing: pip install -e '.[dev]' (bash scripts/setup.sh)"
    proc = subprocess.run([exe, "--no-cache"], cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "Contracts: 2 kept, 0 broken." in proc.stdout


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    """The layers contract bites: a copy of the package where launch/ imports the CLI fails it."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "itwinai_lightning", copy / "itwinai_lightning")
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    upward = copy / "itwinai_lightning" / "launch" / "upward.py"
    upward.write_text("def f() -> None:\n    from itwinai_lightning.cli import run  # noqa: F401\n")
    exe = shutil.which("lint-imports")
    assert exe is not None
    env = {**child_env(), "PYTHONPATH": str(copy)}
    proc = subprocess.run([exe, "--no-cache"], cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "itwinai_lightning.launch.upward -> itwinai_lightning.cli.run" in proc.stdout
