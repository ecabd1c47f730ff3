"""Launch ``fit_script.py`` under a real launcher and read back what every rank wrote."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.childenv import child_env

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("fit_script.py")
STEPS = 4  # optimizer steps per epoch (global batch 16, 64 samples)

Launch = Callable[..., list[dict[str, Any]]]


def run_launch(
    prefix: list[str], args: list[str], out: Path, env: dict[str, str], timeout: float = 300
) -> list[dict[str, Any]]:
    """Run ``prefix python fit_script.py args --out out``; return the per-rank JSON results (rank order)."""
    cmd = [*prefix, sys.executable, str(SCRIPT), *args, "--steps", str(STEPS), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    (out / "launch.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).splitlines()
        errors = [line for line in lines if "Error" in line and "File " not in line][:8]
        tail = "\n".join(errors + lines[-30:])
        pytest.fail(f"{' '.join(cmd)} failed with {proc.returncode}:\n{tail}", pytrace=False)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun_prefix(nproc: int = 2) -> list[str]:
    port = str(free_port())
    run = [sys.executable, "-m", "torch.distributed.run", "--no-python"]  # run_launch adds the interpreter
    return [*run, f"--nproc_per_node={nproc}", f"--master_port={port}"]


def load_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "weights_fit1.pt", weights_only=True)


@pytest.fixture(scope="package")
def ddp_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """Weights after STEPS steps of hpc_ddp at 2 ranks (torchrun): the parity reference."""
    out = tmp_path_factory.mktemp("ddp_ref")
    results = run_launch(torchrun_prefix(), ["--strategy", "hpc_ddp"], out, child_env())
    assert [r["strategy"] for r in results] == ["HPCDDPStrategy"] * 2
    return load_weights(out)
