"""The same 2-process DDP fit (hpc_ddp, gloo) through every launcher ends with the single-process weights.

Data are not shuffled, the optimiser is plain SGD and the model has no batch norm, so 2 ranks x batch 4 must
equal 1 rank x batch 8 up to float rounding -- which only holds if DDP really averages the gradients
(rank 0 alone sees only the even samples).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.foundation.conftest import STEPS, Run, fit_args, free_port, max_abs_diff, run_cli
from tests.helpers.engines import require_executable

EXPECTED_ENV = {
    "lightning": "LightningEnvironment",
    "torchrun": "LauncherEnvironment",
    "mpirun": "LauncherEnvironment",
    "srun": "LauncherEnvironment",
}


def _launch(launcher: str, request: pytest.FixtureRequest, tmp_path: Path, env: dict[str, str]) -> Run:
    if launcher == "lightning":
        prefix: list[str] = []
    elif launcher == "torchrun":
        require_executable("torchrun", "pip install torch")
        prefix = ["torchrun", "--nproc_per_node", "2", "--master_port", str(free_port())]
    elif launcher == "mpirun":
        require_executable("mpirun", "apt-get install openmpi-bin")
        prefix = ["mpirun", "-np", "2", "--bind-to", "none"]
    else:
        cluster = request.getfixturevalue("slurm_cluster")
        env = {**env, **{k: v for k, v in cluster.env.items() if k == "SLURM_CONF"}}
        prefix = ["srun", "-N", "1", "--ntasks-per-node=2", "--kill-on-bad-exit=1"]
    return run_cli(prefix, fit_args(tmp_path), env, tmp_path)


@pytest.mark.parametrize(
    "launcher",
    [
        "lightning",
        pytest.param("torchrun", marks=pytest.mark.core),
        pytest.param("mpirun", marks=pytest.mark.core),
        "srun",
    ],
)
def test_ddp_fit_matches_single_process(
    launcher: str, reference: Run, request: pytest.FixtureRequest, tmp_path: Path, python_env: dict[str, str]
) -> None:
    run = _launch(launcher, request, tmp_path, python_env)
    assert run.returncode == 0, run.stderr[-4000:]

    # each rank saw the launch the way the launcher made it
    for rank in (0, 1):
        seen = run.launch(rank)
        assert seen["global_rank"] == rank
        assert seen["world_size"] == 2
        assert seen["strategy"] == "HPCDDPStrategy"
        assert seen["environment"] == EXPECTED_ENV[launcher]
        assert seen["backend"] == "gloo"
        assert seen["timeout_s"] == 60.0
        assert seen["steps"] == STEPS == reference.launch(0)["steps"]
        detected = seen["detected"]
        assert detected["launcher"] == ("local" if launcher == "lightning" else launcher)
        if launcher == "lightning" and rank == 0:
            continue  # rank 0 is the plain process that started rank 1 itself
        assert (detected["rank"], detected["local_rank"], detected["world_size"]) == (rank, rank, 2)
        assert (detected["node_rank"], detected["num_nodes"], detected["local_world_size"]) == (0, 1, 2)
    if launcher == "mpirun":
        assert run.launch(1)["detected"]["mpi_flavour"] == "openmpi"
    if launcher == "srun":
        assert run.launch(0)["detected"]["job_id"]

    # DDP keeps the replicas identical, bit for bit
    w0, w1 = run.weights(0), run.weights(1)
    assert max_abs_diff(w0, w1) == 0.0

    # training moved the weights by far more than the tolerance below
    ref = reference.weights(0)
    moved = max_abs_diff(ref, reference.weights(0, "initial"))
    assert moved > 1e-2
    assert max_abs_diff(run.weights(0, "initial"), reference.weights(0, "initial")) == 0.0  # same seed

    # 2 ranks x batch 4 == 1 rank x batch 8: the gradients were averaged across ranks. Float32 sums in a
    # different order drift by ~1e-4 of the total update over 16 steps; summed (not averaged) gradients or
    # a rank training on its half alone would be off by the order of the update itself.
    assert max_abs_diff(w0, ref) < 2e-3 * moved


@pytest.mark.gpu
def test_hpc_ddp_on_cuda_uses_nccl_and_pins_devices(tmp_path: Path, python_env: dict[str, str]) -> None:
    """On GPUs: nccl, one device per local rank, replicas identical (verified by hand on one H100)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    devices = min(2, torch.cuda.device_count())
    args = fit_args(tmp_path, "--trainer.accelerator=gpu", devices=devices)
    run = run_cli([], args, python_env, tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    for rank in range(devices):
        seen = run.launch(rank)
        assert seen["backend"] == "nccl" and seen["strategy"] == "HPCDDPStrategy"
        assert seen["steps"] == STEPS
    visible = ", ".join(map(str, range(devices)))
    assert f"LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [{visible}]" in run.stdout + run.stderr
    if devices == 2:
        assert max_abs_diff(run.weights(0), run.weights(1)) == 0.0
