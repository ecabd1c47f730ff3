"""No secret leaves the machine in a checkpoint: the files on disk and the copy MLflow stores are
redacted, MLflow's artifacts stay under the run directory, and the secret can be given again at load."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from itwinai_lightning.secrets import REDACTED
from tests.helpers.engines import require_module

TOKEN = "hf_s3cr3t_value_123"
MODULE = """
from itwinai_lightning.demo import SpectrogramDenoiser


class TokenModel(SpectrogramDenoiser):
    def __init__(self, width: int = 8, depth: int = 2, lr: float = 1e-3, optimizer: str = "adam",
                 api_token: str = "", data_url: str = "") -> None:
        super().__init__(width=width, depth=depth, lr=lr, optimizer=optimizer)
"""
CONFIG = textwrap.dedent(
    """
    trainer:
      max_epochs: 1
      accelerator: cpu
      enable_progress_bar: false
      callbacks:
        - class_path: lightning.pytorch.callbacks.ModelCheckpoint
          init_args: {{monitor: val_loss, mode: min, save_last: true}}
      logger:
        class_path: itwinai_lightning.loggers.MultiLogger
        init_args:
          backends: [mlflow]
          log_checkpoints: best
    model:
      class_path: token_model.TokenModel
      init_args: {{api_token: {token}, data_url: "https://user:{token}@data.example.org/x"}}
    data:
      class_path: itwinai_lightning.demo.SpectrogramDataModule
      init_args: {{num_samples: 64, val_samples: 16, batch_size: 16}}
    """
)


def test_checkpoints_on_disk_and_in_mlflow_carry_no_secret(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    require_module("mlflow", 'pip install "itwinai-lightning[mlflow]"')
    (tmp_path / "token_model.py").write_text(MODULE)
    (tmp_path / "c.yaml").write_text(CONFIG.format(token=TOKEN))
    run_dir = tmp_path / "run"
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {**python_env, "PYTHONPATH": f"{tmp_path}:{python_env.get('PYTHONPATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "fit", "--config", str(tmp_path / "c.yaml"),
         "--trainer.default_root_dir", str(run_dir)],
        env=env, cwd=elsewhere, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoints = list(run_dir.rglob("*.ckpt"))
    uploaded = [p for p in checkpoints if "mlartifacts" in p.parts]
    assert uploaded, "the best checkpoint is an MLflow artifact under <run_dir>/mlartifacts"
    assert not (elsewhere / "mlruns").exists() and not list(elsewhere.iterdir())  # nothing in the cwd
    for path in checkpoints:
        assert TOKEN.encode() not in path.read_bytes(), path
        hparams = torch.load(path, map_location="cpu", weights_only=False)["hyper_parameters"]
        assert hparams["api_token"] == REDACTED
        assert hparams["data_url"] == f"https://user:{REDACTED}@data.example.org/x"
    # the documented way back: give the secret again when loading
    sys.path.insert(0, str(tmp_path))
    try:
        from token_model import TokenModel  # type: ignore[import-not-found]

        model = TokenModel.load_from_checkpoint(uploaded[0], api_token=TOKEN, map_location="cpu")
    finally:
        sys.path.remove(str(tmp_path))
    assert model.hparams["api_token"] == TOKEN
