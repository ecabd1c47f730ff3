"""hpc_fsdp: 2-process FSDP fits on CPU (gloo) under torchrun, srun and Lightning; resume; parity; YAML."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from itwinai_lightning.errors import UserError
from tests.helpers.childenv import child_env
from tests.strategies.conftest import REPO, load_weights, run_launch, torchrun_prefix
from tests.strategies.test_deepspeed_horovod import check_fit_and_resume, check_parity

pytestmark = pytest.mark.timeout(400)


def test_fsdp_torchrun_full_checkpoint_resume_and_parity(tmp_path: Path, ddp_reference: dict) -> None:
    """FULL_SHARD with Conv2d units, plain SGD: the weights of hpc_ddp; a full checkpoint resumes exactly."""
    args = ["--strategy", "hpc_fsdp", "--state-dict-type", "full", "--auto-wrap", "Conv2d"]
    results = run_launch(torchrun_prefix(), args, tmp_path, child_env())
    check_fit_and_resume(results, "HPCFSDPStrategy")
    assert [res["root_device"] for res in results] == ["cpu", "cpu"]
    assert Path(results[0]["last_ckpt"]).is_file()  # one file, gathered on rank 0
    check_parity(load_weights(tmp_path), ddp_reference)


@pytest.mark.slurm
def test_fsdp_srun_sharded_checkpoint_resume(slurm_cluster: Any, tmp_path: Path) -> None:
    """Under srun, a sharded checkpoint is a directory with one shard per rank, and Adam resumes from it."""
    env = child_env({"SLURM_CONF": slurm_cluster.env["SLURM_CONF"]})
    prefix = ["srun", "-N", "1", "--ntasks-per-node=2", "--kill-on-bad-exit=1"]
    args = ["--strategy", "hpc_fsdp", "--state-dict-type", "sharded", "--optimizer", "adam", "--lr", "0.01"]
    results = run_launch(prefix, args, tmp_path, env)
    check_fit_and_resume(results, "HPCFSDPStrategy")
    ckpt = Path(results[0]["last_ckpt"])
    assert ckpt.is_dir() and sorted(p.name for p in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert (ckpt / "meta.pt").is_file()


def _cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "itwinai_lightning", *args]
    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_fsdp_yaml_options_under_lightning_launcher(tmp_path: Path) -> None:
    """From YAML: auto-wrap, activation checkpointing, bf16-mixed on 2 CPU ranks that Lightning starts."""
    strategy = {
        "class_path": "itwinai_lightning.strategies.fsdp.HPCFSDPStrategy",
        "init_args": {"auto_wrap": ["Conv2d"], "activation_checkpointing": ["torch.nn.GELU"], "timeout": 120},
    }
    (tmp_path / "strategy.yaml").write_text(yaml.safe_dump({"trainer": {"strategy": strategy}}))
    args = [
        "fit", "--config", str(REPO / "tests/foundation/tiny.yaml"),
        "--config", str(tmp_path / "strategy.yaml"),
        "--trainer.devices", "2", "--trainer.max_epochs", "1", "--trainer.precision", "bf16-mixed",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.callbacks+=tests.strategies.fsdp_probe.FSDPProbe",
        "--trainer.callbacks.out_dir", str(tmp_path),
    ]  # fmt: skip
    proc = _cli(args, REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    probes = [json.loads((tmp_path / f"probe{r}.json").read_text()) for r in range(2)]
    for got in probes:
        assert got["backend"] == "gloo" and got["step"] == 4  # 64 samples / global batch 16
        assert "CheckpointWrapper" in got["classes"]  # the GELUs recompute their activations
        assert got["units"] == 1 + 3  # the root + one unit per Conv2d (3 layers at depth 3)
        assert 0.0 < got["loss"] < 1.0


def test_fsdp_bad_input_is_one_line(tmp_path: Path) -> None:
    """A class the model does not have, a bad option or fp16 on CPU: one line naming the key, exit 2."""
    from itwinai_lightning.strategies.fsdp import HPCFSDPStrategy

    fsdp = "itwinai_lightning.strategies.fsdp.HPCFSDPStrategy"
    cases: dict[str, tuple[str, dict[str, Any], list[str]]] = {
        "unknown class": ("has no module of class 'Block'", {"auto_wrap": ["Block"]}, []),
        "bad sharding": ("sharding_strategy: 'FULL' is not one of", {"sharding_strategy": "FULL"}, []),
        "fp16 on CPU": ("FSDP on CPU has no fp16", {}, ["--trainer.precision", "16-mixed"]),
    }
    base = ["fit", "--config", str(REPO / "tests/foundation/tiny.yaml"), "--trainer.devices", "2"]
    base += ["--trainer.default_root_dir", str(tmp_path)]
    for name, (needle, init_args, extra) in cases.items():
        config = tmp_path / "strategy.yaml"
        strategy = {"class_path": fsdp, "init_args": {"timeout": 60, **init_args}}
        config.write_text(yaml.safe_dump({"trainer": {"strategy": strategy}}))
        proc = _cli([*base, "--config", str(config), *extra], tmp_path)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, (name, proc.stderr[-2000:])
        errors = [line for line in lines if line.startswith("itwinai-lightning: error:")]
        assert len(errors) == 1 and needle in errors[0], (name, lines)
    with pytest.raises(UserError, match=r"auto_wrap \(module classes\) or min_num_params, not both"):
        HPCFSDPStrategy(auto_wrap=["Conv2d"], min_num_params=10)
    with pytest.raises(UserError, match=r"cannot import 'torch\.nn\.NoSuchLayer'"):
        HPCFSDPStrategy(activation_checkpointing=["torch.nn.NoSuchLayer"])
    with pytest.raises(UserError, match=r"mixed_precision.param_dtype: 'float8'"):
        HPCFSDPStrategy(mixed_precision={"param_dtype": "float8"})
    policy = HPCFSDPStrategy(
        mixed_precision={"param_dtype": "bf16", "reduce_dtype": "float32"}
    ).mixed_precision
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)


@pytest.mark.gpu
def test_fsdp_one_cuda_device_nccl(tmp_path: Path) -> None:
    """On a GPU: nccl, bf16-mixed, a sharded checkpoint (the default) that resumes."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    args = ["fit", "--config", str(REPO / "tests/foundation/tiny.yaml"), "--trainer.accelerator", "gpu",
            "--trainer.devices", "1", "--trainer.precision", "bf16-mixed", "--trainer.max_epochs", "1",
            "--trainer.strategy", "hpc_fsdp", "--trainer.enable_checkpointing", "true",
            "--trainer.callbacks+=tests.strategies.fsdp_probe.FSDPProbe",
            "--trainer.callbacks.out_dir", str(tmp_path),
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    proc = _cli(args, REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "probe0.json").read_text())
    assert got["backend"] == "nccl" and got["step"] == 8
    ckpt = next((tmp_path / "checkpoints").glob("*.ckpt"))
    assert ckpt.is_dir()  # sharded by default
    again = _cli([*args, "--trainer.max_epochs", "2", "--ckpt_path", str(ckpt)], REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "probe0.json").read_text())["step"] == 16


@pytest.mark.mpi
def test_fsdp_mpirun_parity(tmp_path: Path, ddp_reference: dict) -> None:
    """mpirun -np 2: the launcher table's environment serves hpc_fsdp as it serves hpc_ddp."""
    from tests.helpers.engines import require_executable

    require_executable("mpirun", "apt-get install openmpi-bin")
    prefix = ["mpirun", "-np", "2", "--bind-to", "none"]
    args = ["--strategy", "hpc_fsdp", "--state-dict-type", "full", "--auto-wrap", "Conv2d"]
    results = run_launch(prefix, args, tmp_path, child_env())
    check_fit_and_resume(results, "HPCFSDPStrategy")
    check_parity(load_weights(tmp_path), ddp_reference)


@pytest.mark.slurm
def test_fsdp_launch_mistake_is_one_line(slurm_cluster: Any, tmp_path: Path) -> None:
    """2 srun tasks per node but trainer.devices 1: the shared launch check says so once, exit 2."""
    env = child_env({"SLURM_CONF": slurm_cluster.env["SLURM_CONF"]})
    args = ["fit", "--config", str(REPO / "tests/foundation/tiny.yaml"), "--trainer.strategy", "hpc_fsdp",
            "--trainer.devices", "1", "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    cmd = ["srun", "-N", "1", "--ntasks-per-node=2", sys.executable, "-m", "itwinai_lightning", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "srun started 2 processes" in proc.stderr and "--trainer.devices 2" in proc.stderr
    assert "Traceback" not in proc.stderr
