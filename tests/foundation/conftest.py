"""Foundation test helpers: run the real CLI under a real launcher, read back what each rank saved."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

HERE = Path(__file__).resolve().parent
TINY = HERE / "tiny.yaml"
#: 64 samples, global batch 8, 2 epochs -> 16 optimizer steps whatever the number of ranks
STEPS = 16


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    out_dir: Path

    def weights(self, rank: int = 0, kind: str = "weights") -> dict[str, torch.Tensor]:
        return torch.load(self.out_dir / f"{kind}_rank{rank}.pt")

    def launch(self, rank: int = 0) -> dict[str, Any]:
        return json.loads((self.out_dir / f"launch_rank{rank}.json").read_text())


def fit_args(out_dir: Path, *extra: str, devices: int = 2) -> list[str]:
    """``fit`` on the tiny config; each rank's batch is 8/devices so the global batch is always 8."""
    return [
        "fit",
        "--config",
        str(TINY),
        "--trainer.devices",
        str(devices),
        "--data.init_args.batch_size",
        str(8 // devices),
        "--trainer.default_root_dir",
        str(out_dir),
        "--trainer.callbacks+=tests.foundation.weights.SaveFinalWeights",
        "--trainer.callbacks.out_dir",
        str(out_dir),
        *extra,
    ]


def run_cli(
    prefix: list[str], args: list[str], env: dict[str, str], out_dir: Path, timeout: float = 240
) -> Run:
    """Run ``<prefix> python -m itwinai_lightning <args>`` (prefix: a launcher command line, or [])."""
    python = [sys.executable, "-m", "itwinai_lightning"]
    if prefix and prefix[0] == "torchrun":
        python = ["-m", "itwinai_lightning"]  # torchrun runs a module with -m
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*prefix, *python, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a timeout kills the launcher *and* its ranks
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(prefix + args)}\n{stderr[-3000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # no rank outlives its test
    return Run(proc.returncode, stdout, stderr, time.perf_counter() - start, out_dir)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One process, batch 8, plain Lightning (no DDP): what every 2-rank run must reproduce."""
    from tests.conftest import REPO

    out = tmp_path_factory.mktemp("reference")
    env = _env(REPO)
    run = run_cli([], fit_args(out, "--trainer.strategy", "auto", devices=1), env, out)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _env(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONWARNINGS="ignore")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env
