"""The wheel, installed with ``[all]`` into a fresh virtual environment and run from outside the checkout:
the journey a user takes after ``pip install "itwinai-lightning[all]"``.

By default the wheel is built here and installed for this interpreter's Python. ``nox -s installed``
runs the same file for every supported Python (3.11-3.13), pointing ``ITWINAI_INSTALLED_PYTHON`` at the
venv it made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from packaging.version import Version

from tests.packaging import wheel

pytestmark = pytest.mark.slow

#: the quickstart scaled down, for the runs that check something other than the quickstart itself
SMALL = ["--trainer.max_epochs", "1", "--data.num_samples", "128", "--data.val_samples", "32"]
EXTRAS_OK = {"mlflow", "wandb", "prov", "ray", "deepspeed", "mpi", "report"}


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("ITWINAI_INSTALLED_PYTHON")
    if given:
        return Path(given)
    root = tmp_path_factory.mktemp("installed")
    built = wheel.build_wheel(root / "dist")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    python, _ = wheel.fresh_venv(version, root / "venv", built)
    return python


@pytest.fixture
def outside(tmp_path: Path, venv_python: Path) -> dict[str, str]:
    """An environment that knows nothing of the checkout: the venv's bin first, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv_python.parent}:{env['PATH']}"
    env["PYTHONWARNINGS"] = "ignore"
    assert wheel.REPO not in tmp_path.parents
    return env


def _itl(
    args: list[str], env: dict[str, str], cwd: Path, timeout: int = 900
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["itwinai-lightning", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_the_installed_package_is_the_wheel_not_the_checkout(
    tmp_path: Path, venv_python: Path, outside: dict[str, str]
) -> None:
    code = "import itwinai_lightning as m, sysconfig; print(m.__file__); print(sysconfig.get_path('purelib'))"
    module, site_packages = subprocess.run(
        [str(venv_python), "-c", code], env=outside, cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    assert Path(module) == Path(site_packages) / "itwinai_lightning" / "__init__.py"


def test_env_reports_every_extra_usable_but_horovod_and_amd_and_says_how_to_get_them(
    tmp_path: Path, outside: dict[str, str]
) -> None:
    report = json.loads(_itl(["env", "--json"], outside, tmp_path).stdout)
    states = {name: s["state"] for name, s in report["extras"].items()}
    # [all] leaves out amdsmi: it needs ROCm's library, on AMD GPU nodes only
    assert states == {**dict.fromkeys(EXTRAS_OK, "ok"), "horovod": "missing", "amd": "missing"}, states
    assert report["extras"]["horovod"]["fix"] == "itwinai-lightning build-horovod"
    assert "amdsmi" in report["extras"]["amd"]["fix"]
    assert report["torch_companions"] == []  # pip chose a torchvision paired with its torch
    # the newest yProv4ML where it parses (3.12+), 3.2.3 on 3.11 (pyproject.toml says why)
    prov = Version(report["versions"]["yprov4ml"])
    assert prov == Version("3.2.3") if report["python"].startswith("3.11") else prov >= Version("3.2.8")


def test_examples_copies_the_shipped_gallery(tmp_path: Path, outside: dict[str, str]) -> None:
    _itl(["examples", "--to", "gallery"], outside, tmp_path)
    shipped = {p.name: p.read_text() for p in (wheel.REPO / "configs").iterdir() if p.is_file()}
    copied = {p.name: p.read_text() for p in (tmp_path / "gallery").iterdir()}
    assert set(copied) == set(shipped)
    for name, text in shipped.items():  # the same files; only the headers name them as they lie in the copy
        code = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
        assert [ln for ln in copied[name].splitlines() if not ln.lstrip().startswith("#")] == code, name
        assert "configs/" not in copied[name] and len(copied[name].splitlines()) == len(text.splitlines())


def test_the_quickstart_trains_from_the_copied_gallery(
    tmp_path: Path, venv_python: Path, outside: dict[str, str]
) -> None:
    _itl(["examples", "--to", "gallery"], outside, tmp_path)
    # the whole quickstart where the full suite runs (this Python); the other Pythons' sessions (nox
    # installed-3.N) run the same journey scaled down, its steps checked the same way
    whole = "ITWINAI_INSTALLED_PYTHON" not in os.environ
    started = time.monotonic()
    proc = _itl(
        ["fit", "--config", "gallery/quickstart.yaml", "--trainer.enable_progress_bar", "false",
         *([] if whole else SMALL)],
        outside,
        tmp_path,
    )  # fmt: skip
    print(f"quickstart from the installed wheel: {time.monotonic() - started:.0f} s")
    run_dir = tmp_path / "runs" / "quickstart" / "version_0"
    record = json.loads((run_dir / "run_record.json").read_text())
    assert record["status"] == "completed" and f"run directory: {run_dir}" in proc.stdout
    [last] = run_dir.rglob("last.ckpt")
    code = "import sys, torch; c = torch.load(sys.argv[1], weights_only=False)"
    code += "; print(c['epoch'], c['global_step'])"
    epoch_step = subprocess.run(
        [str(venv_python), "-c", code, str(last)], env=outside, capture_output=True, text=True, check=True
    ).stdout.split()
    config = yaml.safe_load((tmp_path / "gallery" / "quickstart.yaml").read_text())
    epochs = config["trainer"]["max_epochs"] if whole else 1
    samples = config["data"]["init_args"]["num_samples"] if whole else 128
    steps = epochs * samples // config["data"]["init_args"]["batch_size"]
    assert epoch_step == [str(epochs - 1), str(steps)]  # whole: 12 epochs of 64 steps
    assert len(list(run_dir.rglob("*.ckpt"))) == 2 and list(run_dir.rglob("events.out.tfevents.*"))


def test_slurm_renders_with_a_shipped_preset(
    tmp_path: Path, venv_python: Path, outside: dict[str, str]
) -> None:
    _itl(["examples", "--to", "gallery"], outside, tmp_path)
    _itl(
        [
            "slurm",
            "--config",
            "gallery/quickstart.yaml",
            "--config",
            "gallery/slurm_vega.yaml",
            "--slurm.account",
            "p1",
        ],
        outside,
        tmp_path,
    )
    code = (
        "from importlib.resources import files; "
        "print(files('itwinai_lightning') / 'slurm' / 'presets' / 'vega.yaml')"
    )
    preset_file = subprocess.run(
        [str(venv_python), "-c", code], env=outside, cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()
    preset = yaml.safe_load(Path(preset_file).read_text())
    script = (tmp_path / "runs" / "quickstart" / "slurm" / "job.sbatch").read_text()
    assert f"#SBATCH --partition={preset['partition']}" in script and "#SBATCH --account=p1" in script
    assert "#SBATCH --nodes=2" in script and f"--gpus-per-node={preset['gpus_per_node']}" in script
    syntax = subprocess.run(
        ["bash", "-n", str(tmp_path / "runs" / "quickstart" / "slurm" / "job.sbatch")], check=False
    )
    assert syntax.returncode == 0


def test_a_multilogger_fit_reaches_every_backend(tmp_path: Path, outside: dict[str, str]) -> None:
    _itl(["examples", "--to", "gallery"], outside, tmp_path)
    run_dir = tmp_path / "run"
    proc = _itl(
        [
            "fit",
            "--config",
            "gallery/quickstart.yaml",
            "--config",
            "gallery/monitoring.yaml",
            *SMALL,
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(run_dir),
        ],
        outside,
        tmp_path,
    )
    assert "logs: tensorboard, metrics.csv, mlflow.db, wandb, prov" in proc.stdout
    run_dir = run_dir / "version_0"  # the run's own directory: the same layout as without MultiLogger
    assert {"checkpoints", "config.yaml", "run_record.json"} <= {p.name for p in run_dir.iterdir()}
    summary = json.loads((run_dir / "tracking_summary.json").read_text())
    assert {b["backend"]: b["errors"] for b in summary["backends"]} == {
        name: [] for name in ("tensorboard", "csv", "mlflow", "wandb", "prov")
    }
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines()]
    assert rows[0] == ["step", "key", "value", "time"] and "val_loss" in {row[1] for row in rows[1:]}
    assert (run_dir / "mlflow.db").stat().st_size > 0 and list((run_dir / "wandb").rglob("*.wandb"))
    [prov_json] = (run_dir / "prov" / "rank0").glob("quickstart_*/prov_quickstart_GR0_*.json")
    assert "val_loss" in prov_json.read_text()
    assert not (tmp_path / "requirements.txt").exists()  # yProv4ML >= 3.2.8 must not write into the cwd
