"""hpc_deepspeed and horovod: real 2-process fits (torchrun, srun, horovodrun), resume, metrics, parity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.childenv import child_env
from tests.helpers.engines import require_executable, require_module
from tests.strategies.conftest import STEPS, load_weights, run_launch, torchrun_prefix

pytestmark = pytest.mark.timeout(400)


def check_fit_and_resume(results: list[dict[str, Any]], strategy: str) -> None:
    """Both ranks: the strategy asked for, one epoch, ranks reduced/gathered right, resume continued."""
    for rank, res in enumerate(results):
        assert res["rank"] == rank and res["world_size"] == 2 and res["strategy"] == strategy
        assert res["fit1_global_step"] == STEPS
        metrics = res["metrics"]
        assert metrics["rank_mean"] == pytest.approx(0.5)  # (0 + 1) / 2 on every rank
        assert metrics["rank_max"] == pytest.approx(1.0)
        assert metrics["rank_sum"] == pytest.approx(2.0)  # 2 val batches x (0 + 1)
        assert res["gathered"] == [0.0, 1.0]
        assert res["broadcasted"] == "from-rank-0"
        assert res["resume_start_step"] == STEPS and res["resume_final_step"] == 2 * STEPS
        assert res["resume_start_matches_fit1"] is True
        assert Path(res["last_ckpt"]).exists()
    # the synced validation loss and the (replicated) weights are the same on both ranks
    assert results[0]["metrics"]["val_loss"] == pytest.approx(results[1]["metrics"]["val_loss"], rel=1e-6)
    assert results[0]["fit1_weight_sum"] == pytest.approx(results[1]["fit1_weight_sum"], rel=1e-6)


def check_parity(weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    from itwinai_lightning.demo import SpectrogramDenoiser

    torch.manual_seed(0)
    initial = SpectrogramDenoiser(width=8, depth=3).state_dict()
    assert weights.keys() == reference.keys()
    moved = max(float((reference[k] - initial[k]).abs().max()) for k in reference)
    assert moved > 1e-3, "the reference run did not train"
    for key in reference:
        torch.testing.assert_close(weights[key], reference[key], atol=2e-6, rtol=1e-5, msg=key)


@pytest.mark.deepspeed
@pytest.mark.parametrize("stage", [0, 2])
def test_deepspeed_torchrun_fit_resume(stage: int, tmp_path: Path, ddp_reference: dict) -> None:
    require_module("deepspeed", 'pip install "itwinai-lightning[deepspeed]"')
    args = ["--strategy", "hpc_deepspeed", "--stage", str(stage)]
    results = run_launch(torchrun_prefix(), args, tmp_path, child_env())
    check_fit_and_resume(results, "HPCDeepSpeedStrategy")
    for res in results:
        assert res["zero_stage"] == stage and res["engine_zero_stage"] == stage
        assert res["root_device"] == f"cpu:{res['rank']}"
    # a DeepSpeed checkpoint is a directory of shards
    assert Path(results[0]["last_ckpt"]).is_dir()
    # ZeRO 0 and ZeRO 2 both average gradients over the global batch: same weights as DDP
    check_parity(load_weights(tmp_path), ddp_reference)


@pytest.mark.deepspeed
@pytest.mark.slurm
def test_deepspeed_srun_fit_resume(slurm_cluster: Any, tmp_path: Path) -> None:
    require_module("deepspeed", 'pip install "itwinai-lightning[deepspeed]"')
    env = child_env({"SLURM_CONF": slurm_cluster.env["SLURM_CONF"]})
    prefix = ["srun", "-N", "1", "--ntasks-per-node=2", "--kill-on-bad-exit=1"]
    results = run_launch(prefix, ["--strategy", "hpc_deepspeed", "--stage", "2"], tmp_path, env)
    check_fit_and_resume(results, "HPCDeepSpeedStrategy")
    assert all(res["engine_zero_stage"] == 2 for res in results)


@pytest.mark.horovod
def test_horovod_horovodrun_fit_resume_parity(tmp_path: Path, ddp_reference: dict) -> None:
    require_module("horovod", "itwinai-lightning build-horovod")
    horovodrun = require_executable("horovodrun", "itwinai-lightning build-horovod")
    prefix = [horovodrun, "--gloo", "-np", "2", "-H", "localhost:2"]
    results = run_launch(prefix, ["--strategy", "horovod", "--devices", "1"], tmp_path, child_env())
    check_fit_and_resume(results, "HorovodStrategy")
    assert Path(results[0]["last_ckpt"]).is_file()  # an ordinary Lightning checkpoint from rank 0
    check_parity(load_weights(tmp_path), ddp_reference)  # plain SGD, averaged gradients == DDP


@pytest.mark.gpu
@pytest.mark.deepspeed
def test_deepspeed_one_cuda_device_nccl(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    require_module("deepspeed", 'pip install "itwinai-lightning[deepspeed]"')
    cmd = torchrun_prefix(nproc=1)
    code = (
        "import sys, json, torch, lightning.pytorch as pl\n"
        "from itwinai_lightning.strategies.deepspeed import HPCDeepSpeedStrategy\n"
        "from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser\n"
        "s = HPCDeepSpeedStrategy(stage=2)\n"
        "seen = set()\n"
        "class Probe(pl.Callback):  # where the weights live DURING training (teardown moves them to CPU)\n"
        "    def on_train_batch_end(self, trainer, module, *args):\n"
        "        seen.add(str(next(module.parameters()).device))\n"
        "t = pl.Trainer(accelerator='gpu', devices=1, strategy=s, max_steps=4, logger=False,\n"
        "               callbacks=[Probe()], enable_progress_bar=False, limit_val_batches=1,\n"
        "               default_root_dir=sys.argv[1])\n"
        "t.fit(SpectrogramDenoiser(width=8, depth=3), SpectrogramDataModule(num_samples=64, batch_size=8))\n"
        "device = ','.join(sorted(seen))\n"
        "got = {'backend': torch.distributed.get_backend(), 'device': device, 'step': t.global_step}\n"
        "json.dump(got, open(sys.argv[1] + '/gpu.json', 'w'))\n"
    )
    script = tmp_path / "gpu_fit.py"
    script.write_text(code)
    proc = subprocess.run(
        [*cmd, sys.executable, str(script), str(tmp_path)], env=child_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "gpu.json").read_text())
    assert got == {"backend": "nccl", "device": "cuda:0", "step": 4}
