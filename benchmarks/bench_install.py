"""Time from a fresh virtual environment to a finished quickstart, per Python, the way users install.

For each Python: build the wheel (once), ``python -m venv``, ``pip install "<wheel>[all]"`` with plain pip
(this machine's pip configuration, nothing cached by this script), then ``itwinai-lightning examples --to``
and the full quickstart (12 epochs) from a directory outside the checkout. Prints, per Python, the seconds
for each step and the total; ``--repetitions N`` repeats each Python N times (a fresh venv each time) and
prints the median and the spread (min-max).

    python benchmarks/bench_install.py [--pythons 3.11 3.12 3.13] [--repetitions 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.packaging import wheel  # noqa: E402


def _timed(cmd: list[str], **kwargs: object) -> float:
    started = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, **kwargs)  # type: ignore[call-overload]
    return time.monotonic() - started


def one(version: str, built: Path, root: Path) -> dict[str, float]:
    venv = root / "venv"
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    work = root / "work"
    work.mkdir()
    times = {"venv_s": _timed([wheel.interpreter(version), "-m", "venv", str(venv)])}
    times["pip_install_s"] = _timed([str(python), "-m", "pip", "install", "-q", f"{built}[all]"], env=env)
    times["examples_s"] = _timed(["itwinai-lightning", "examples", "--to", "gallery"], env=env, cwd=work)
    quick = ["itwinai-lightning", "fit", "--config", "gallery/quickstart.yaml"]
    quick += ["--trainer.enable_progress_bar", "false"]
    times["quickstart_s"] = _timed(quick, env=env, cwd=work)
    times["total_s"] = sum(times.values())
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pythons", nargs="+", default=["3.11", "3.12", "3.13"])
    parser.add_argument("--repetitions", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-install-") as tmp:
        built = wheel.build_wheel(Path(tmp) / "dist")
        print(f"wheel: {built.name}")
        for version in args.pythons:
            runs = []
            for rep in range(args.repetitions):
                root = Path(tmp) / f"py{version}-{rep}"
                root.mkdir()
                runs.append(one(version, built, root))
                subprocess.run(["rm", "-rf", str(root)], check=False)
            for key in runs[0]:
                values = [r[key] for r in runs]
                spread = f" (min {min(values):.0f}, max {max(values):.0f})" if len(values) > 1 else ""
                print(f"Python {version}  {key:<14} median {statistics.median(values):6.0f}{spread}")


if __name__ == "__main__":
    main()
