"""The examples gallery: every file runs (scaled down) the way its header says, and the docs name only
files that exist. If a doc or an example rots, this fails."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from itwinai_lightning import records
from itwinai_lightning.gallery import cli as gallery
from tests.helpers.engines import require, require_module

REPO = Path(__file__).resolve().parents[2]
GALLERY = gallery.gallery_dir()
QUICK = str(GALLERY / "quickstart.yaml")
#: the quickstart scaled down: 1 epoch of 128 samples
SMALL = [
    "--trainer.max_epochs",
    "1",
    "--data.num_samples",
    "128",
    "--data.val_samples",
    "32",
    "--data.batch_size",
    "16",
    "--trainer.enable_progress_bar",
    "false",
]
ITL = [sys.executable, "-m", "itwinai_lightning"]


def _run(
    cmd: list[str], env: dict[str, str], cwd: Path, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_the_docs_name_only_gallery_files_that_exist() -> None:
    named: set[str] = set()
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        named |= set(re.findall(r"configs/([\w.-]+\.(?:yaml|py))", doc.read_text()))
    shipped = {p.name for p in gallery.examples()}
    assert named and named <= shipped, f"named in the docs but not shipped: {sorted(named - shipped)}"
    assert (REPO / "configs").resolve() == GALLERY.resolve()  # the clone's configs/ is the shipped gallery
    assert {
        "quickstart.yaml",
        "monitoring.yaml",
        "profiling.yaml",
        "tune_asha.yaml",
        "tune_ddp.yaml",
        "tune_pbt.yaml",
        "benchmark.yaml",
        "deepspeed.yaml",
        "horovod.yaml",
        "my_model.py",
        "my_model.yaml",
        "slurm_generic.yaml",
        "slurm_juwels_booster.yaml",
        "slurm_lumi_g.yaml",
        "slurm_vega.yaml",
    } <= shipped


def test_examples_lists_copies_and_never_overwrites(tmp_path: Path, python_env: dict[str, str]) -> None:
    listing = _run([*ITL, "examples"], python_env, tmp_path).stdout
    assert all(p.name in listing for p in gallery.examples())
    for line in listing.splitlines()[: len(gallery.examples())]:  # each description is whole sentences
        assert line.rstrip().endswith((".", ")")), line
    _run([*ITL, "examples", "--to", "mine"], python_env, tmp_path)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == sorted(p.name for p in gallery.examples())
    # the copies' headers name the files as they lie in the copy, and run from there as written
    header = (tmp_path / "mine" / "tune_asha.yaml").read_text().splitlines()[1]
    assert "--config quickstart.yaml --config tune_asha.yaml" in header and "configs/" not in header
    assert not [
        p.name for p in (tmp_path / "mine").iterdir() if "# " in p.read_text() and "configs/" in p.read_text()
    ]
    body = [
        ln for ln in (tmp_path / "mine" / "predict.yaml").read_text().splitlines() if not ln.startswith("#")
    ]
    assert body == [
        ln for ln in (GALLERY / "predict.yaml").read_text().splitlines() if not ln.startswith("#")
    ]
    (tmp_path / "mine" / "quickstart.yaml").write_text("# my edits\n")
    again = subprocess.run(
        [*ITL, "examples", "--to", "mine"],
        env=python_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "mine" / "quickstart.yaml").read_text() == "# my edits\n"  # nothing lost


def test_monitoring_adds_callbacks_and_fans_out_to_all_five_backends(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    for module, extra in (("mlflow", "mlflow"), ("wandb", "wandb"), ("yprov4ml", "prov")):
        require_module(module, f'pip install "itwinai-lightning[{extra}]"')
    run_dir = tmp_path / "run"
    proc = _run(
        [
            *ITL,
            "fit",
            "--config",
            QUICK,
            "--config",
            str(GALLERY / "monitoring.yaml"),
            *SMALL,
            "--trainer.default_root_dir",
            str(run_dir),
        ],
        python_env,
        tmp_path,
    )
    assert "replaces trainer.callbacks" not in proc.stderr  # callbacks+: added to quickstart's list
    # quiet by default: none of the known noise, a word before the final flush, a summary at the end
    from itwinai_lightning import quiet

    noise = [*quiet.WARNINGS, "litlogger", "Creating initial MLflow database", "Symlinked"]
    assert not [n for n in noise if re.search(n, proc.stderr + proc.stdout)], proc.stderr[-3000:]
    assert "MultiLogger: sending the last records to tensorboard, csv, mlflow, wandb, prov" in proc.stderr
    run_dir = run_dir / "version_0"
    assert f"run directory: {run_dir}" in proc.stdout
    assert "logs: tensorboard, metrics.csv, mlflow.db, wandb, prov" in proc.stdout
    assert re.search(r"record: run_record.json \(status completed, 1 epochs, [0-9.]+ s", proc.stdout)
    assert list(run_dir.rglob("*.ckpt")), "quickstart's ModelCheckpoint must survive the composition"
    rec = records.load(run_dir)
    assert rec["status"] == "completed" and rec["epochs"][0]["samples"] == 128
    assert "cpu_util_mean_pct" in rec["epochs"][0] and rec["summary"]["flops_per_sample"] > 0
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert "val_loss" in (run_dir / "metrics.csv").read_text()
    assert (run_dir / "mlflow.db").stat().st_size > 0
    assert list((run_dir / "wandb").rglob("*.wandb"))
    assert list((run_dir / "prov" / "rank0").glob("quickstart_*/prov_quickstart_GR0_*.json"))
    import json

    summary = json.loads((run_dir / "tracking_summary.json").read_text())
    assert {b["backend"]: b["errors"] for b in summary["backends"]} == {
        name: [] for name in ("tensorboard", "csv", "mlflow", "wandb", "prov")
    }


def test_profiling_example_records_both_profilers(tmp_path: Path, python_env: dict[str, str]) -> None:
    require(shutil.which("py-spy") is not None, "py-spy", "pip install py-spy")
    run_dir = tmp_path / "run"
    proc = _run(
        [
            *ITL,
            "fit",
            "--config",
            QUICK,
            "--config",
            str(GALLERY / "profiling.yaml"),
            *SMALL,
            "--trainer.max_epochs",
            "2",
            "--trainer.default_root_dir",
            str(run_dir),
        ],
        python_env,
        tmp_path,
    )
    sections = records.load(run_dir)["sections"]
    assert sum(sections["torch_profiler"]["fractions"].values()) == pytest.approx(1.0, abs=0.01)
    assert sections["pyspy"]["samples"] > 0
    assert "USDT" not in proc.stderr and "profiler_start" not in proc.stderr  # Kineto's per-window lines
    assert "profiling: profiling/ (pyspy, torch_profiler)" in proc.stdout  # the summary names them


def test_my_model_template_trains_from_a_copied_gallery(tmp_path: Path, python_env: dict[str, str]) -> None:
    _run([*ITL, "examples", "--to", "proj"], python_env, tmp_path)
    env = {**python_env, "PYTHONPATH": f".:{python_env.get('PYTHONPATH', '')}"}
    proj = tmp_path / "proj"
    _run(
        [
            *ITL,
            "fit",
            "--config",
            "my_model.yaml",
            "--trainer.max_epochs",
            "2",
            "--trainer.accelerator",
            "cpu",
            "--trainer.enable_progress_bar",
            "false",
        ],
        env,
        proj,
    )
    rec = records.load(proj / "runs" / "my_model")
    assert (rec["status"], rec["stage"]) == ("completed", "fit")
    assert list((proj / "runs" / "my_model").rglob("last.ckpt"))


def test_deepspeed_example_under_torchrun(tmp_path: Path, python_env: dict[str, str]) -> None:
    require_module("deepspeed", 'pip install "itwinai-lightning[deepspeed]"')
    run_dir = tmp_path / "run"
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "itwinai_lightning",
            "fit",
            "--config",
            QUICK,
            "--config",
            str(GALLERY / "deepspeed.yaml"),
            *SMALL,
            "--trainer.default_root_dir",
            str(run_dir),
        ],
        python_env,
        tmp_path,
        timeout=900,
    )
    rec = records.load(run_dir)
    assert (rec["status"], rec["world_size"], rec["launcher"]) == ("completed", 2, "torchrun")


def test_horovod_example_under_horovodrun(tmp_path: Path, python_env: dict[str, str]) -> None:
    require_module("horovod", "itwinai-lightning build-horovod")
    run_dir = tmp_path / "run"
    _run(
        [
            "horovodrun",
            "--gloo",
            "-np",
            "2",
            "-H",
            "localhost:2",
            sys.executable,
            "-m",
            "itwinai_lightning",
            "fit",
            "--config",
            QUICK,
            "--config",
            str(GALLERY / "horovod.yaml"),
            *SMALL,
            "--trainer.default_root_dir",
            str(run_dir),
        ],
        python_env,
        tmp_path,
        timeout=900,
    )
    rec = records.load(run_dir)
    assert (rec["status"], rec["world_size"], rec["launcher"]) == ("completed", 2, "horovodrun")


def test_fsdp_then_predict_examples(tmp_path: Path, python_env: dict[str, str]) -> None:
    """fsdp.yaml under torchrun as its header says, then predict.yaml from that run's full weights."""
    run_dir = tmp_path / "fsdp"
    fsdp = [*ITL[:1], "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "itwinai_lightning"]
    _run(
        [*fsdp, "fit", "--config", QUICK, "--config", str(GALLERY / "fsdp.yaml"), *SMALL,
         "--trainer.default_root_dir", str(run_dir), "--trainer.strategy.init_args.state_dict_type", "full"],
        python_env, tmp_path, timeout=900,
    )  # fmt: skip
    rec = records.load(run_dir)
    assert (rec["status"], rec["world_size"], rec["launcher"]) == ("completed", 2, "torchrun")
    assert rec["strategy"] == "HPCFSDPStrategy"
    last = next(run_dir.rglob("last.ckpt"))
    assert last.is_file()  # full: one file, loadable anywhere
    _run(
        [*ITL, "predict", "--config", QUICK, "--config", str(GALLERY / "predict.yaml"), *SMALL,
         "--trainer.devices", "2", "--ckpt_path", str(last)],
        python_env, tmp_path, timeout=600,
    )  # fmt: skip
    from itwinai_lightning import inference

    predictions = inference.read(str(tmp_path / "runs" / "predict" / "latest" / "predictions"))
    assert predictions.shape[0] == 32  # --data.val_samples 32: one prediction per input


@pytest.mark.ray
@pytest.mark.parametrize("name", ["tune_asha", "tune_ddp", "tune_pbt"])
def test_tune_examples_sweep(tmp_path: Path, python_env: dict[str, str], ray_tmp: Path, name: str) -> None:
    env = {**python_env, "RAY_AUTH_MODE": "disabled", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    env.pop("RAY_ADDRESS", None)
    small = [
        "--trainer.max_epochs",
        "2",
        "--data.num_samples",
        "128",
        "--data.val_samples",
        "32",
        "--trainer.enable_progress_bar",
        "false",
        "--tune.num_samples",
        "2",
        "--tune.output_dir",
        "out",
        "--tune.ray.num_cpus",
        "2",
        "--tune.ray.temp_dir",
        str(ray_tmp),
    ]
    if name != "tune_asha":  # the ASHA example searches the batch size; the others keep the quickstart's
        small += ["--data.batch_size", "16"]
    proc = _run(
        [*ITL, "tune", "--config", QUICK, "--config", str(GALLERY / f"{name}.yaml"), *small], env, tmp_path
    )
    said = proc.stdout + proc.stderr
    assert "\x1b[" not in said  # no ANSI colour codes in what is captured to a file
    for noise in ("snapshotting has been triggered", "`weights_only` was not set", "tensorboard --logdir"):
        assert noise not in said, noise
    section = yaml.safe_load((GALLERY / f"{name}.yaml").read_text())["tune"]
    sweep = tmp_path / "out" / section["name"]
    rows = (sweep / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 2  # header + both trials
    best = yaml.safe_load((sweep / "best.yaml").read_text())
    assert best["model"]["init_args"]["lr"] > 0


def test_benchmark_example_grid(tmp_path: Path, python_env: dict[str, str]) -> None:
    """benchmark.yaml composed with monitoring.yaml: the config's own TimingMonitor and GPUMonitor are kept
    (not duplicated: Lightning refuses two stateful callbacks of one type) and every point completes."""
    for module, extra in (("mlflow", "mlflow"), ("wandb", "wandb"), ("yprov4ml", "prov")):
        require_module(module, f'pip install "itwinai-lightning[{extra}]"')
    out = tmp_path / "bench"
    _run(
        [
            *ITL,
            "benchmark",
            "--config",
            QUICK,
            "--config",
            str(GALLERY / "benchmark.yaml"),
            "--config",
            str(GALLERY / "monitoring.yaml"),
            *SMALL,
            "--trainer.max_epochs",
            "2",
            "--benchmark.strategies",
            "[hpc_ddp]",
            "--benchmark.repetitions",
            "1",
            "--benchmark.output_dir",
            str(out),
        ],
        python_env,
        tmp_path,
        timeout=900,
    )
    assert (out / "report.html").exists()
    assert {p.parent.name for p in out.rglob("run_record.json")} == {"hpc_ddp-w1-r0", "hpc_ddp-w2-r0"}
    for rec in (records.load(p.parent) for p in out.rglob("run_record.json")):
        assert rec["status"] == "completed", rec.get("error")
        callbacks = [str(c["class_path"]).rsplit(".", 1)[-1] for c in rec["config"]["trainer"]["callbacks"]]
        assert callbacks.count("TimingMonitor") == 1 and callbacks.count("GPUMonitor") == 1, callbacks
        gpu = next(c for c in rec["config"]["trainer"]["callbacks"] if c["class_path"].endswith("GPUMonitor"))
        assert gpu["init_args"]["interval_s"] == 0.5  # monitoring.yaml's own options
        assert rec["summary"]["samples_per_s"] > 0 and rec["summary"]["monitor"] == "val_loss"


@pytest.mark.parametrize("preset", ["juwels_booster", "lumi_g", "vega"])
def test_gpu_slurm_examples_render_for_their_site(
    tmp_path: Path, python_env: dict[str, str], preset: str
) -> None:
    run_dir = tmp_path / "run"
    _run(
        [
            *ITL,
            "slurm",
            "--config",
            QUICK,
            "--config",
            str(GALLERY / f"slurm_{preset}.yaml"),
            "--slurm.account",
            "proj123",
            "--trainer.default_root_dir",
            str(run_dir),
        ],
        python_env,
        tmp_path,
    )
    script = (run_dir / "slurm" / "job.sbatch").read_text()
    site = yaml.safe_load((REPO / "itwinai_lightning" / "slurm" / "presets" / f"{preset}.yaml").read_text())
    assert f"#SBATCH --partition={site['partition']}" in script and "#SBATCH --account=proj123" in script
    assert "#SBATCH --nodes=2" in script and f"--gpus-per-node={site['gpus_per_node']}" in script


def test_generic_slurm_example_passes_sbatch_test_only(
    tmp_path: Path, python_env: dict[str, str], slurm_cluster: object
) -> None:
    env = {**python_env, "SLURM_CONF": slurm_cluster.env["SLURM_CONF"]}  # type: ignore[attr-defined]
    run_dir = tmp_path / "run"
    proc = _run(
        [
            *ITL,
            "slurm",
            "--config",
            QUICK,
            "--config",
            str(GALLERY / "slurm_generic.yaml"),
            "--slurm.nodes",
            "1",
            "--slurm.venv",
            sys.prefix,
            "--slurm.test_only",
            "true",
            "--trainer.default_root_dir",
            str(run_dir),
        ],
        env,
        tmp_path,
    )
    assert "to start at" in proc.stdout + proc.stderr
    assert f"source {sys.prefix}/bin/activate" in (run_dir / "slurm" / "job.sbatch").read_text()
