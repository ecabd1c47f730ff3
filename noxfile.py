"""nox sessions: tests, lint, typecheck, docs, bench.

Sessions run in the current environment (``venv_backend="none"``): the stack (torch, Ray, DeepSpeed,
a source-built Horovod) is installed once by ``scripts/setup.sh`` and takes minutes to rebuild.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "typecheck", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    session.run("python", "-m", "pytest", "-q", "-ra", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.run("python", "-m", "ruff", "check", "itwinai_lightning", "tests", "benchmarks", "noxfile.py")
    session.run("python", "-m", "ruff", "format", "--check", "itwinai_lightning", "tests", "benchmarks")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.run("python", "-m", "mypy", "itwinai_lightning")


@nox.session
def docs(session: nox.Session) -> None:
    session.run("python", "-m", "mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark in benchmarks/ (each prints side-by-side ratios measured in one run)."""
    import pathlib

    for script in sorted(pathlib.Path("benchmarks").glob("bench_*.py")):
        session.run("python", str(script), *session.posargs)
