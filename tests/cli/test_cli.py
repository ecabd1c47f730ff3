"""The CLI: bad input = one line + exit 2; foreign LightningModules work unchanged; quickstart; ``env``."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
import yaml

from tests.foundation.conftest import TINY, free_port, run_cli
from tests.helpers.engines import require_executable

REPO = Path(__file__).resolve().parents[2]


def _cli(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )


@pytest.mark.core
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, python_env: dict[str, str]) -> None:
    (tmp_path / "malformed.yaml").write_text("trainer:\n  max_epochs: [1\n")
    (tmp_path / "unknown_key.yaml").write_text("trainer:\n  max_epochz: 1\n")
    (tmp_path / "unknown_class.yaml").write_text("model:\n  class_path: nosuch.module.Model\n")
    cases = {
        "malformed.yaml": ["not valid YAML", "malformed.yaml", "line 3"],
        "unknown_key.yaml": ["trainer.max_epochz", "unknown_key.yaml"],
        "unknown_class.yaml": ["nosuch.module.Model", "unknown_class.yaml"],
        "missing.yaml": ["missing.yaml", "does not exist"],
    }
    for name, expected in cases.items():
        proc = _cli(["fit", "--config", str(TINY), "--config", name], python_env, tmp_path)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("itwinai-lightning: error:")]
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        assert len(errors) == 1 and "Traceback" not in proc.stderr, (name, proc.stderr[-2000:])
        for fragment in expected:
            assert fragment in errors[0], (name, errors[0])

    # Trainer arguments Lightning rejects are user errors too
    proc = _cli(["fit", "--config", str(TINY), "--trainer.strategy", "nonsense"], python_env, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "invalid strategy name" in proc.stderr and "hpc_ddp" in proc.stderr
    proc = _cli(["frobnicate"], python_env, tmp_path)
    assert proc.returncode == 2 and "unknown command 'frobnicate'" in proc.stderr


def test_foreign_lightning_module_runs_unchanged(tmp_path: Path, python_env: dict[str, str]) -> None:
    """Lightning's own BoringModel/BoringDataModule, by class path, over 2 hpc_ddp ranks, with checkpoints."""
    run_dir = tmp_path / "run"
    args = [
        "fit",
        "--model=lightning.pytorch.demos.boring_classes.BoringModel",
        "--data=lightning.pytorch.demos.boring_classes.BoringDataModule",
        "--trainer.strategy=hpc_ddp",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=4",
        "--trainer.limit_val_batches=2",
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.enable_progress_bar=false",
    ]
    run = run_cli([], args, python_env, run_dir, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    saved = yaml.safe_load((run_dir / "latest" / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "lightning.pytorch.demos.boring_classes.BoringModel"
    assert saved["trainer"]["strategy"] == "hpc_ddp"
    ckpts = list(run_dir.rglob("*.ckpt"))
    assert len(ckpts) == 1
    ckpt = torch.load(ckpts[0], weights_only=False)
    assert ckpt["global_step"] == 8 and ckpt["epoch"] == 1  # 2 epochs x 4 batches
    record = json.loads((run_dir / "version_0" / "run_record.json").read_text())  # one directory, 2 ranks
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) == ["latest", "version_0"]
    assert record["config"]["model"]["class_path"].endswith("BoringModel")
    assert (record["status"], record["error"]) == ("completed", None)  # ended without a TimingMonitor too


def test_quickstart_writes_checkpoints_logs_and_progress(tmp_path: Path, python_env: dict[str, str]) -> None:
    """configs/quickstart.yaml as shipped, scaled down to seconds by overrides."""
    run_dir = tmp_path / "quickstart"
    args = [
        "fit",
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        "--trainer.max_epochs=2",
        "--data.init_args.num_samples=128",
        "--data.init_args.val_samples=32",
        "--model.init_args.width=8",
        f"--trainer.default_root_dir={run_dir}",
    ]
    run = run_cli([], args, python_env, run_dir, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Epoch 1" in run.stdout and "val_loss" in run.stdout  # the progress bar (TQDM on stdout)
    assert (run_dir / "latest" / "config.yaml").is_file()
    names = {p.name for p in (run_dir / "latest" / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in names and len(names) == 2  # best (by val_loss) + last
    events = list((run_dir / "latest" / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard log"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    val_loss = [e.value for e in acc.Scalars("val_loss")]
    assert len(val_loss) == 2 and val_loss[-1] < val_loss[0]  # it learns


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_env_under_a_real_launcher(
    launcher: str, request: pytest.FixtureRequest, tmp_path: Path, python_env: dict[str, str]
) -> None:
    env = dict(python_env)
    if launcher == "torchrun":
        require_executable("torchrun", "pip install torch")
        prefix = ["torchrun", "--nproc_per_node", "2", "--master_port", str(free_port())]
    else:
        env["SLURM_CONF"] = request.getfixturevalue("slurm_cluster").env["SLURM_CONF"]
        prefix = ["srun", "-N", "1", "--ntasks-per-node=2"]
    run = run_cli(prefix, ["env", "--json"], env, tmp_path, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    reports = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["cluster"]["rank"] for r in reports) == [0, 1]
    for report in reports:
        cluster = report["cluster"]
        assert cluster["launcher"] == launcher
        assert (cluster["world_size"], cluster["local_world_size"], cluster["num_nodes"]) == (2, 2, 1)
        assert cluster["local_rank"] == cluster["rank"]
        assert report["lightning_environment"] == "LauncherEnvironment"
        assert report["backend"] == "gloo"
        # the installed distribution's version (PyPI's CUDA torch says 2.x.y there, 2.x.y+cu130 at run time)
        assert report["versions"]["torch"] == metadata.version("torch")
        assert report["accelerators"]["cpu_count"] >= 1
    if launcher == "srun":
        assert all(r["cluster"]["job_id"] for r in reports)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["profile", "report", "run", "--bogus"], "profile: unrecognized arguments: --bogus"),
        (["profile"], "profile: the following arguments are required: action"),
        (["logs", "replay", "run", "--bogus"], "logs: unrecognized arguments: --bogus"),
        (["benchmark", "report", "--bogus"], "benchmark report: the following arguments are required: DIR"),
        (["examples", "--bogus"], "examples: unknown argument(s) --bogus"),
        (["env", "--bogus"], "env: unknown argument(s) --bogus"),
    ],
)
def test_every_subcommand_refuses_a_bad_flag_in_one_line(
    args: list[str], expected: str, tmp_path: Path, python_env: dict[str, str]
) -> None:
    proc = _cli(args, python_env, tmp_path)
    assert proc.returncode == 2 and "usage:" not in proc.stderr and "Traceback" not in proc.stderr, (
        proc.stderr
    )
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"itwinai-lightning: error: {expected}") and "--help" in line
