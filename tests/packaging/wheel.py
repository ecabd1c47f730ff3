"""Build this package's wheel and install it, with its extras, into a fresh virtual environment.

pip resolves (``pip install --dry-run --report``: the resolver a user runs, on the target interpreter,
with this machine's pip configuration), then uv installs exactly the distributions pip chose. The result
is what ``pip install "itwinai-lightning[all]"`` gives, in about a minute instead of pip's fifteen or more
on 2 cores (unpacking and byte-compiling several GB of CUDA torch). ``benchmarks/bench_install.py``
times the plain ``pip install`` path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NAME = "itwinai-lightning"


def _run(cmd: list[str], timeout: int = 1800, **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc  # type: ignore[no-any-return]


def build_wheel(out: Path) -> Path:
    """The wheel of the checkout's files as git sees them: tracked and new ones, never ignored ones (a stale
    ``build/`` or ``*.egg-info`` cannot leak into it)."""
    src = out / "src"
    listing = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    files = _run(listing, cwd=REPO).stdout.split("\0")
    for name in filter(None, files):
        path = REPO / name
        if path.is_file() and not path.is_symlink():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(src),
        ]
    )
    [wheel] = out.glob("itwinai_lightning-*.whl")
    return wheel


def interpreter(version: str) -> str:
    """The python executable for ``3.N``: on PATH (``python3.N``) or under pyenv."""
    found = shutil.which(f"python{version}")
    if found:
        probe = subprocess.run([found, "-c", "import sys"], capture_output=True, check=False)
        if probe.returncode == 0:
            return found
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for candidate in sorted(root.glob(f"{version}.*"), reverse=True):
        if (candidate / "bin" / "python").exists():
            return str(candidate / "bin" / "python")
    raise FileNotFoundError(f"no Python {version} found (python{version} on PATH or pyenv {root})")


def pip_resolution(python: str, requirement: str) -> list[str]:
    """``name==version`` of every distribution pip would install for ``requirement`` on ``python``."""
    report = Path(python).parent.parent / "pip-report.json"
    _run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--dry-run",
            "--ignore-installed",
            "--report",
            str(report),
            requirement,
        ]
    )
    chosen = json.loads(report.read_text())["install"]
    return [
        f"{d['metadata']['name']}=={d['metadata']['version']}"
        for d in chosen
        if d["metadata"]["name"] != NAME
    ]


def install_into(python: Path, wheel: Path, extras: str = "all") -> list[str]:
    """Install ``wheel[extras]`` into the venv of ``python`` as pip resolves it; the pins. Test tools
    (pytest) come after, so they cannot change what pip chose."""
    pins = pip_resolution(str(python), f"{wheel}[{extras}]")
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    env = dict(os.environ)
    if os.environ.get("PIP_FIND_LINKS"):  # where pip found local wheels, uv looks too
        env["UV_FIND_LINKS"] = os.environ["PIP_FIND_LINKS"]
    _run([uv, "pip", "install", "-q", "--python", str(python), "--no-deps", *pins, str(wheel)], env=env)
    _run([uv, "pip", "install", "-q", "--python", str(python), "pytest", "pytest-timeout"], env=env)
    return pins


def fresh_venv(version: str, where: Path, wheel: Path, extras: str = "all") -> tuple[Path, list[str]]:
    """A new venv for Python ``version`` with ``wheel[extras]`` installed (:func:`install_into`)."""
    _run([interpreter(version), "-m", "venv", str(where)])
    python = where / "bin" / "python"
    return python, install_into(python, wheel, extras)
