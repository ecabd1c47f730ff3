"""Fixtures for the SLURM tests: the real one-node cluster (session fixture ``slurm_cluster``) plus env."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"

#: The quickstart made tiny: 128 samples, batch 16 -> 4 optimizer steps per epoch on each of 2 DDP ranks.
TINY = [
    "--config", str(QUICKSTART),
    "--trainer.devices", "2",
    "--trainer.strategy", "ddp",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--data.num_samples", "128",
    "--data.val_samples", "32",
    "--data.batch_size", "16",
    "--model.width", "8",
    "--model.depth", "2",
]  # fmt: skip
STEPS_PER_EPOCH = 128 // 2 // 16


@pytest.fixture
def slurm_env(slurm_cluster: object, python_env: dict[str, str]) -> dict[str, str]:
    """Environment for sbatch/srun/scontrol and the jobs they start (the repo importable, this python)."""
    env = dict(python_env)
    env["SLURM_CONF"] = slurm_cluster.env["SLURM_CONF"]  # type: ignore[attr-defined]
    return env


def python_flag() -> list[str]:
    return ["--slurm.python", sys.executable]
