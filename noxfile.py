"""nox sessions: tests, installed, lint, typecheck, docs, bench.

Most sessions run in the current environment (``venv_backend="none"``): the stack (torch, Ray, DeepSpeed,
a source-built Horovod) is installed once by ``scripts/setup.sh`` and takes minutes to rebuild.
``installed-3.11``, ``installed-3.12`` and ``installed-3.13`` each build the wheel and install it with
``[all]`` into a fresh venv of that Python (tests/packaging/wheel.py), then run the installed-wheel journey
from outside the checkout and, on every Python but the main one (which runs the full suite), the core
suite. ``pythons`` runs the installed sessions of every Python but the main one side by side.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "typecheck", "tests"]

#: every supported Python; the full suite runs on MAIN, the core suite on the others
PYTHONS = ["3.11", "3.12", "3.13"]
MAIN = "3.11"
#: the core suite (tests marked ``core``): CLI errors, DDP under torchrun and mpirun on gloo, monitoring,
#: records, tracking with every backend read back, the extras report. Horovod is built per torch
#: (itwinai-lightning build-horovod), so the fresh venvs do not carry it.
CORE = "core and not gpu and not horovod"
nox.options.error_on_missing_interpreters = True  # a Python that is not there fails, never skips


def _put_interpreters_on_path() -> None:
    """Make ``python3.N`` of every supported Python findable by nox (pyenv keeps them off PATH): links in
    ``.nox/interpreters``, so ``python`` itself stays the one that runs nox."""
    import os
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    sys.path.insert(0, str(here))
    from tests.packaging.wheel import interpreter

    links = here / ".nox" / "interpreters"
    links.mkdir(parents=True, exist_ok=True)
    for version in PYTHONS:
        link = links / f"python{version}"
        try:
            target = Path(interpreter(version)).resolve()  # through an existing link to the interpreter
        except FileNotFoundError:  # nox reports a missing interpreter as an error
            link.unlink(missing_ok=True)
            continue
        if link.resolve() == target:
            continue
        fresh = links / f".python{version}.{os.getpid()}"  # atomic: concurrent nox runs may do the same
        fresh.unlink(missing_ok=True)
        fresh.symlink_to(target)
        fresh.replace(link)
    os.environ["PATH"] = f"{links}{os.pathsep}{os.environ['PATH']}"


_put_interpreters_on_path()


@nox.session
def tests(session: nox.Session) -> None:
    session.run("python", "-m", "pytest", "-q", "-ra", *session.posargs)


@nox.session(python=PYTHONS, venv_backend="venv", reuse_venv=False)
def installed(session: nox.Session) -> None:
    """A fresh venv per Python with the wheel and [all]; the installed journey; the core suite off MAIN."""
    import tempfile
    import time
    from pathlib import Path

    from tests.packaging import wheel

    started = time.monotonic()
    built = wheel.build_wheel(Path(tempfile.mkdtemp(prefix="itwinai-wheel-")))
    python = Path(session.virtualenv.location) / "bin" / "python"
    pins = wheel.install_into(python, built)
    took = time.monotonic() - started
    session.log(f"Python {session.python}: {built.name}[all] -> {len(pins)} distributions in {took:.0f} s")
    env = {"ITWINAI_INSTALLED_PYTHON": str(python)}
    pytest = ["python", "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider"]  # side by side with others
    session.run(*pytest, "-s", "tests/packaging/test_installed.py", env=env)
    if session.python != MAIN:
        session.run(*pytest, "-m", CORE, "tests", *session.posargs, env=env)


@nox.session
def pythons(session: nox.Session) -> None:
    """``installed-3.N`` for every Python but the main one, side by side, each in its own nox process.

    They spend much of their time waiting (pip, process start-up, rendezvous, servers), so on the 2-core
    CI machine two at once take little longer than one. Each session's output is printed, whole, when it
    has ended; the session fails when any of them failed.
    """
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    logs = Path(tempfile.mkdtemp(prefix="itwinai-pythons-"))
    running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    try:
        for version in (v for v in PYTHONS if v != MAIN):
            log = logs / f"installed-{version}.log"
            with log.open("wb") as out:
                cmd = [sys.executable, "-m", "nox", "-s", f"installed-{version}", "--", *session.posargs]
                running[version] = (subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT), log)
        failed = []
        for version, (proc, log) in running.items():
            code = proc.wait()
            print(log.read_text(errors="replace"), flush=True)
            session.log(f"installed-{version}: {'passed' if code == 0 else f'FAILED (exit {code})'}")
            if code != 0:
                failed.append(version)
    finally:
        for proc, _ in running.values():
            if proc.poll() is None:
                proc.terminate()
    if failed:
        session.error(f"installed sessions failed on Python {', '.join(failed)}; their output is above")


@nox.session
def lint(session: nox.Session) -> None:
    session.run("python", "-m", "ruff", "check", "itwinai_lightning", "tests", "benchmarks", "noxfile.py")
    session.run("python", "-m", "ruff", "format", "--check", "itwinai_lightning", "tests", "benchmarks")
    session.run("lint-imports")  # the import contracts in pyproject.toml: no import cycles


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
