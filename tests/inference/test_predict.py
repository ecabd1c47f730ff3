"""Distributed batch inference: N inputs (N not divisible by the world size) over 1, 2 and 3 ranks give
exactly N predictions in input order, equal to one process and to the model applied by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from itwinai_lightning import inference, records
from itwinai_lightning.errors import UserError
from itwinai_lightning.inference import layout
from tests.helpers.childenv import child_env

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "foundation" / "tiny.yaml"
N = 37  # not divisible by 2 or 3; batch 4 leaves a short last batch on every rank
WRITER = "--trainer.callbacks+=itwinai_lightning.inference.ShardedPredictionWriter"

pytestmark = pytest.mark.timeout(600)


def cli(prefix: list[str], args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Any:
    python = (
        ["-m", "itwinai_lightning"]
        if prefix[:1] == ["torchrun"]
        else [sys.executable, "-m", "itwinai_lightning"]
    )
    cmd = [*prefix, *python, *args]
    return subprocess.run(cmd, env=env or child_env(), cwd=cwd, capture_output=True, text=True, timeout=400)


def predict_args(ckpt: str, out: Path, devices: int) -> list[str]:
    return [
        "predict", "--config", str(TINY), "--trainer.devices", str(devices),
        "--data.init_args.val_samples", str(N), "--data.init_args.batch_size", "4",
        "--trainer.default_root_dir", str(out), WRITER, "--ckpt_path", ckpt,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the tiny fit, checkpointed."""
    out = tmp_path_factory.mktemp("fit")
    args = [
        "fit",
        "--config",
        str(TINY),
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_checkpointing",
        "true",
    ]
    proc = cli([], [*args, "--trainer.default_root_dir", str(out)], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ckpt,) = (out / "latest" / "checkpoints").glob("*.ckpt")
    return ckpt


@pytest.fixture(scope="module")
def by_hand(checkpoint: Path) -> torch.Tensor:
    """The checkpoint's model applied to the N predict inputs in one process, without Lightning."""
    from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser

    model = SpectrogramDenoiser.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    data = SpectrogramDataModule(num_samples=64, val_samples=N, freq_bins=16, time_steps=16)
    data.setup("predict")
    assert data.val_set is not None
    with torch.no_grad():
        return model(data.val_set.noisy)


@pytest.mark.parametrize("devices", [1, 2, 3])
def test_n_predictions_in_input_order_at_any_world_size(
    devices: int, checkpoint: Path, by_hand: torch.Tensor, tmp_path: Path
) -> None:
    proc = cli([], predict_args(str(checkpoint), tmp_path, devices), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "version_0" / "predictions"  # the predict run's own directory
    index = json.loads((out / "index.json").read_text())
    assert (index["num_samples"], index["world_size"], index["duplicates_dropped"]) == (N, devices, 0)
    assert len(index["files"]) == devices and sum(index["samples"]) == N  # every rank wrote its share
    predictions = inference.read(str(out))
    assert isinstance(predictions, torch.Tensor) and predictions.shape == (N, 1, 16, 16)
    torch.testing.assert_close(predictions, by_hand, atol=1e-6, rtol=1e-5)
    record = records.load(tmp_path)
    assert record["status"] == "completed" and record["world_size"] == devices
    assert record["summary"]["total_samples"] == N and record["summary"]["samples_per_s"] > 0
    assert record["sections"]["predictions"]["output_dir"] == str(out)
    assert f"{N} predictions from {devices} rank(s)" in proc.stdout


def test_torchrun_predict_and_an_existing_output_is_one_line(
    checkpoint: Path, by_hand: torch.Tensor, tmp_path: Path
) -> None:
    from tests.strategies.conftest import free_port

    prefix = ["torchrun", "--nproc_per_node=2", f"--master_port={free_port()}"]
    env = child_env()
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    proc = cli(prefix, predict_args(str(checkpoint), tmp_path, 2), tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("version_*")) == ["version_0"]  # both ranks, one directory
    out = tmp_path / "version_0" / "predictions"
    torch.testing.assert_close(inference.read(str(out)), by_hand, atol=1e-6, rtol=1e-5)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # an output_dir named by the user that holds predictions is refused, not replaced
    named = [*predict_args(str(checkpoint), tmp_path, 2), "--trainer.callbacks.output_dir", str(out)]
    again = cli([], named, tmp_path)
    errors = [line for line in again.stderr.splitlines() if line.startswith("itwinai-lightning: error:")]
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-2000:]
    assert len(errors) == 1 and "already holds predictions" in errors[0] and "overwrite: true" in errors[0]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # kept


def test_index_drops_padding_duplicates_and_names_missing_inputs(tmp_path: Path) -> None:
    """A padding sampler repeats inputs: the index keeps one of each; a lost input is an error."""
    rows = torch.arange(5, dtype=torch.float32).view(5, 1) * 10  # prediction of input i is 10 * i
    layout.write_part(tmp_path, 0, 0, [(torch.tensor([0, 2, 4]), rows[[0, 2, 4]])])
    layout.write_part(tmp_path, 1, 0, [(torch.tensor([1, 3, 0]), rows[[1, 3, 0]])])  # 0 again: padding
    index = layout.write_index(tmp_path, 5, 2, elapsed_s=0.5)
    assert (index["duplicates_dropped"], index["samples_per_s"]) == (1, 10.0)
    assert inference.read(str(tmp_path)).flatten().tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]
    layout.write_part(tmp_path, 1, 0, [(torch.tensor([1]), rows[[1]])])  # input 3 now has no prediction
    with pytest.raises(UserError, match=r"1 of 5 inputs have no prediction \(first: position 3\)"):
        layout.write_index(tmp_path, 5, 2, elapsed_s=0.5)
    dicts = tmp_path / "dicts"
    dicts.mkdir()
    layout.write_part(dicts, 0, 0, [(torch.tensor([1, 0]), {"y": rows[[1, 0]], "z": -rows[[1, 0]]})])
    layout.write_index(dicts, 2, 1, elapsed_s=1.0)
    read = inference.read(str(dicts))
    assert isinstance(read, dict) and read["y"].flatten().tolist() == [0.0, 10.0]
    assert read["z"].flatten().tolist() == [0.0, -10.0]
    with pytest.raises(UserError, match="first dimension is the batch"):
        layout.detached(torch.zeros(3, 2), batch=4)


@pytest.mark.gpu
def test_predict_on_one_gpu(checkpoint: Path, by_hand: torch.Tensor, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    proc = cli([], [*predict_args(str(checkpoint), tmp_path, 1), "--trainer.accelerator", "gpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictions = inference.read(str(tmp_path / "latest" / "predictions"))
    torch.testing.assert_close(predictions, by_hand, atol=1e-4, rtol=1e-3)
