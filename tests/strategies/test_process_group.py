"""A user's own script (no CLI) using an HPC strategy leaves no live process group to interpreter teardown."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.childenv import child_env
from tests.helpers.engines import require_module

SCRIPT = """
import atexit, json, sys
import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.demos.boring_classes import BoringModel
from itwinai_lightning.strategies import ddp, deepspeed

strategy = ddp.HPCDDPStrategy() if sys.argv[1] == "ddp" else deepspeed.HPCDeepSpeedStrategy(stage=0)
trainer = pl.Trainer(strategy=strategy, accelerator="cpu", devices=1, max_steps=2, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(BoringModel())
after_fit = dist.is_initialized()
atexit._run_exitfuncs()  # what the interpreter runs first on exit, before native teardown
state = {"after_fit": after_fit, "after_atexit": dist.is_initialized(), "step": trainer.global_step}
print(json.dumps(state))
"""


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_strategy_destroys_its_group_at_exit(strategy: str) -> None:
    if strategy == "deepspeed":
        require_module("deepspeed", 'pip install "itwinai-lightning[deepspeed]"')
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, strategy], env=child_env(), capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"after_fit": True, "after_atexit": False, "step": 2}
