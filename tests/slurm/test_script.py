"""Rendered sbatch scripts: content for every preset and launcher, ``sbatch --test-only``, clear errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from itwinai_lightning.errors import UserError
from itwinai_lightning.slurm.cli import build, main
from itwinai_lightning.slurm.options import available_presets
from tests.slurm.conftest import QUICKSTART, REPO, TINY

SPACE = {"model.init_args.lr": {"loguniform": [1.0e-4, 1.0e-1]}}
GPU = ["--config", str(QUICKSTART), "--trainer.accelerator", "gpu", "--trainer.strategy", "hpc_ddp"]

#: preset -> (devices per node, cpus per task, expected lines)
PRESETS = {
    "juwels": (4, 12, ["#SBATCH --partition=booster", "module purge", "module load Stages/2025 GCC OpenMPI",
                       'export NCCL_SOCKET_IFNAME="ib0"', "#SBATCH --exclusive", "--cpu-bind=none"]),
    "lumi_g": (8, 7, ["#SBATCH --partition=standard-g", "module load LUMI partition/G", "#SBATCH --mem=0",
                      'export MIOPEN_USER_DB_PATH="/tmp/${USER}-miopen-cache-${SLURM_JOB_ID}"']),
    "vega": (4, 32, ["#SBATCH --partition=gpu", "module load Python CUDA",
                     'export GLOO_SOCKET_IFNAME="ib0"']),
}  # fmt: skip


def _render(tmp_path: Path, *extra: str) -> tuple[str, dict, Path]:
    script, config_path, _ = build([*extra, "--trainer.default_root_dir", str(tmp_path / "run")])
    return script.read_text(), yaml.safe_load(config_path.read_text()), script


def test_presets_are_package_data() -> None:
    assert set(available_presets()) >= {"generic", "juwels_booster", "lumi_g", "vega"}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_gpu_preset_renders_two_node_job(tmp_path: Path, preset: str) -> None:
    devices, cpus, expected = PRESETS[preset]
    text, config, script = _render(
        tmp_path, *GPU, "--trainer.devices", str(devices),
        "--slurm.preset", preset, "--slurm.nodes", "2", "--slurm.account", "proj42",
        "--slurm.time", "02:30:00",
    )  # fmt: skip
    job_dir = tmp_path / "run" / "slurm"
    for line in [
        "#SBATCH --nodes=2",
        f"#SBATCH --ntasks-per-node={devices}",
        f"#SBATCH --gpus-per-node={devices}",
        f"#SBATCH --cpus-per-task={cpus}",
        "#SBATCH --time=02:30:00",
        "#SBATCH --account=proj42",
        f"#SBATCH --output={job_dir}/%x-%j.out",
        f"#SBATCH --error={job_dir}/%x-%j.err",
        "#SBATCH --signal=USR1@300",
        "#SBATCH --requeue",
        *expected,
    ]:
        assert line in text, f"{line!r} missing from the {preset} script:\n{text}"
    srun = next(ln for ln in text.splitlines() if ln.startswith("srun "))
    assert f"--nodes=2 --ntasks-per-node={devices} --cpus-per-task={cpus}" in srun
    assert srun.endswith('-m itwinai_lightning fit --config "$CONFIG" "${RESUME[@]}" &')  # watched
    assert f"CONFIG={job_dir / 'config.yaml'}" in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text
    # the saved config is the full LightningCLI dump, adapted to the job
    trainer = config["trainer"]
    assert (trainer["num_nodes"], trainer["devices"], trainer["accelerator"]) == (2, devices, "gpu")
    assert trainer["default_root_dir"] == str(tmp_path / "run")
    assert config["seed_everything"] == 42 and config["model"]["init_args"]["width"] == 32
    classes = [c["class_path"] for c in trainer["callbacks"]]
    assert classes[-1] == "itwinai_lightning.slurm.requeue.SlurmRequeue"
    timed = trainer["callbacks"][-2]  # a checkpoint every 30 min of training, by default in a fit job
    assert timed["class_path"].endswith("TimedCheckpoint") and timed["init_args"]["every_min"] == 30.0
    assert "lightning.pytorch.callbacks.ModelCheckpoint" in classes
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_generic_variants_torchrun_horovod_container_venv(tmp_path: Path) -> None:
    text, config, _ = _render(
        tmp_path, *TINY, "--slurm.launcher", "torchrun", "--slurm.nodes", "3", "--slurm.venv", "/opt/venv",
        "--slurm.container", "{image: /img/torch.sif, gpu_flag: --nv, binds: [/data]}",
        "--slurm.env", "{HF_HOME: /scratch/hf}", "--slurm.setup", "[ulimit -n 4096]",
    )  # fmt: skip
    assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --nodes=3" in text
    assert "--gpus-per-node" not in text  # CPU run on the generic preset
    assert "source /opt/venv/bin/activate" in text and "ulimit -n 4096" in text
    assert 'export HF_HOME="/scratch/hf"' in text
    # no --nv without GPUs; the submit directory and the run directory (its job directory in it) bound
    bound = f'--bind "$PWD" --bind {tmp_path / "run"} --bind /data'
    assert f"CONTAINER=(apptainer exec {bound} /img/torch.sif)" in text
    assert f'mkdir -p "$PWD" {tmp_path / "run"}\n' in text  # a bind's source must exist
    assert '-m torch.distributed.run --nnodes="$SLURM_JOB_NUM_NODES" --nproc-per-node=2' in text
    assert "--rdzv-backend=c10d" in text and "--signal" not in text  # requeue needs srun
    assert config["trainer"]["num_nodes"] == 3
    assert all("SlurmRequeue" not in c["class_path"] for c in config["trainer"]["callbacks"])

    text, _, _ = _render(tmp_path, *GPU, "--trainer.devices", "4", "--trainer.strategy", "horovod",
                         "--slurm.preset", "vega", "--slurm.nodes", "2", "--slurm.conda", "hvd")  # fmt: skip
    assert "--mpi=pmix" in next(ln for ln in text.splitlines() if ln.startswith("srun "))
    assert 'eval "$(conda shell.bash hook)"' in text and "conda activate hvd" in text


def test_tune_runs_a_ray_cluster_in_the_allocation(tmp_path: Path) -> None:
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(yaml.safe_dump({"tune": {"num_samples": 8, "metric": "val_loss", "search_space": SPACE}}))
    text, config, script = _render(
        tmp_path, *GPU, "--trainer.devices", "4", "--config", str(cfg),
        "--slurm.preset", "juwels", "--slurm.nodes", "2", "--slurm.command", "tune",
    )  # fmt: skip
    assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --cpus-per-task=48" in text
    assert "#SBATCH --gpus-per-node=4" in text
    assert "ray start --head" in text and 'ray start --address "$RAY_ADDRESS"' in text
    assert '"${PY[@]}" -m itwinai_lightning tune --config "$CONFIG"' in text
    assert config["tune"] == {"num_samples": 8, "metric": "val_loss", "search_space": SPACE}
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    # preemption-safe: the signal goes to the batch shell, which hands it to the driver (Ray Tune saves the
    # sweep), requeues, and the requeued job resumes the sweep; a trial's layout is tune's, not the job's
    assert "#SBATCH --signal=B:USR1@300" in text and "#SBATCH --requeue" in text
    assert 'trap \'touch "$ITWINAI_REQUEUE_FLAG"; kill -USR1 "$DRIVER" 2>/dev/null\' USR1' in text
    assert "RESUME=(--tune.resume true)" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    callbacks = config["trainer"].get("callbacks") or []
    assert config["trainer"]["num_nodes"] == 1
    assert not any("SlurmRequeue" in c["class_path"] for c in callbacks)
    text, _, _ = _render(tmp_path, *GPU, "--trainer.devices", "4", "--config", str(cfg), "--slurm.preset",
                         "juwels", "--slurm.command", "tune", "--slurm.requeue", "false")  # fmt: skip
    assert "--signal" not in text and "scontrol requeue" not in text


def test_a_tune_job_into_a_used_sweep_directory_is_refused_before_it_queues(tmp_path: Path) -> None:
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(yaml.safe_dump({"tune": {"search_space": SPACE}}))
    sweep = tmp_path / "run" / "tune" / "sweep"  # the default: <trainer.default_root_dir>/tune/<name>
    sweep.mkdir(parents=True)
    (sweep / "results.csv").write_text("trial_id,val_loss\n")
    with pytest.raises(UserError, match=re.escape(f"tune: {sweep} already holds a sweep (results.csv)")):
        _render(tmp_path, *GPU, "--config", str(cfg), "--slurm.preset", "juwels", "--slurm.command", "tune",
                "--trainer.devices", "4")  # fmt: skip
    assert not (tmp_path / "run" / "slurm").exists()  # nothing written
    # a new name is free
    _text, config, _ = _render(
        tmp_path, *GPU, "--config", str(cfg), "--slurm.preset", "juwels", "--slurm.command", "tune",
        "--trainer.devices", "4", "--tune.name", "second",
    )  # fmt: skip
    assert config["tune"] == {"search_space": SPACE, "name": "second"}


def test_environment_steps_stop_the_job_in_one_line_and_home_is_the_nodes(tmp_path: Path) -> None:
    text, _, _script = _render(
        tmp_path, *TINY, "--slurm.venv", "~/envs/itl", "--slurm.modules", "[Python]",
        "--slurm.env", "{DATA: ~/data}",
    )  # fmt: skip
    assert 'source "$HOME"/envs/itl/bin/activate || {' in text  # the compute node's home, not this one's
    assert 'export DATA="$HOME/data"' in text and str(Path.home()) not in text.split("# --- resume")[0]
    assert "module load Python || {" in text
    # run the environment part with a module command that fails: one line on stderr, exit 1, no launch
    part = text.split("# --- resume")[0]
    fake = tmp_path / "env.sh"
    fake.write_text("module() { return 1; }\n" + part.split("\n", 1)[1] + "\necho LAUNCHED\n")
    done = subprocess.run(["bash", str(fake)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "LAUNCHED" not in done.stdout
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("itwinai-lightning: 'module load Python' failed on ") and "slurm.modules" in line


def test_user_preset_from_a_path(tmp_path: Path) -> None:
    preset = tmp_path / "mysite.yaml"
    preset.write_text(yaml.safe_dump({"partition": "gpu-a100", "gpus_per_node": 2, "cpus_per_node": 16,
                                      "modules": ["cuda/12"], "sbatch": {"qos": "normal"}}))  # fmt: skip
    text, _, _ = _render(tmp_path, *GPU, "--trainer.devices", "2", "--slurm.preset", str(preset))
    for line in ["#SBATCH --partition=gpu-a100", "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --qos=normal", "module load cuda/12", "(preset: mysite)"]:  # fmt: skip
        assert line in text


def test_every_preset_passes_sbatch_test_only(tmp_path: Path, slurm_env: dict[str, str]) -> None:
    """Each two-node script's directives are accepted by the real sbatch (sized down to the local node)."""
    local = ["--partition=debug", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1"]
    local.append("--gpus-per-node=0")
    for preset in ["generic", *sorted(PRESETS)]:
        devices = "2" if preset == "generic" else str(PRESETS[preset][0])
        args = TINY if preset == "generic" else [*GPU, "--trainer.devices", devices]
        _, _, script = _render(tmp_path / preset, *args, "--slurm.preset", preset, "--slurm.nodes", "2")
        proc = subprocess.run(["sbatch", "--test-only", *local, str(script)], env=slurm_env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 0, f"{preset}: {proc.stderr}"
        assert "to start at" in proc.stderr and "localhost" in proc.stderr
    # and sbatch does check the directives: a broken one is rejected
    bad = script.read_text().replace("--signal=USR1@300", "--signal=NOPE@x")
    script.write_text(bad)
    proc = subprocess.run(["sbatch", "--test-only", *local, str(script)], env=slurm_env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode != 0 and "signal" in proc.stderr.lower()


def test_generic_cpu_job_test_only_through_the_cli(tmp_path: Path, slurm_env: dict[str, str]) -> None:
    """The unmodified generic script for the local cluster passes ``--slurm.test_only`` end to end."""
    proc = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "slurm", *TINY, "--slurm.test_only", "true",
         "--slurm.partition", "debug", "--trainer.default_root_dir", str(tmp_path / "run")],
        env=slurm_env, capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "to start at" in proc.stdout and "using 2 processors" in proc.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--slurm.ntasks_per_node", "4"], "more tasks per node than devices"),
        (["--slurm.ntasks_per_node", "1"], "slurm.ntasks_per_node=1 is fewer than trainer.devices=2"),
        (
            ["--slurm.launcher", "torchrun", "--slurm.requeue", "false", "--slurm.ntasks_per_node", "2"],
            "with slurm.launcher torchrun: it starts one task per node",
        ),
        (["--slurm.preset", "summit"], "available: generic, juwels_booster, lumi_g, vega"),
        (["--slurm.preset", "/no/such/preset.yaml"], "preset file '/no/such/preset.yaml' does not exist"),
        (["--slurm.nodez", "2"], "unknown option 'slurm.nodez'"),
        (["--slurm.launcher", "torchrun", "--slurm.requeue", "true"], "requeue needs slurm.launcher srun"),
        # a CPU config on a GPU partition would book (and bill) GPUs it never uses
        (
            ["--slurm.preset", "juwels", "--slurm.account", "p"],
            "books GPU nodes (4 GPUs each) but trainer.accelerator is 'cpu'",
        ),
        (["--slurm.preset", "generic", "--slurm.gpus_per_node", "2"], "--slurm.preset generic for CPU nodes"),
        (["--slurm.command", "predict"], "predict: no --ckpt_path, so the model would run with its initial"),
        (["--slurm.command", "predict", "--ckpt_path", "/no/such.ckpt"], "ckpt_path /no/such.ckpt: no such"),
        (["--slurm.command", "predict", "--slurm.requeue", "true"], "set it false for predict"),
    ],
)
def test_clear_errors(tmp_path: Path, extra: list[str], message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        build([*TINY, *extra, "--trainer.default_root_dir", str(tmp_path)])


def test_a_site_that_bills_a_project_needs_an_account_to_submit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*GPU, "--trainer.devices", "4", "--slurm.preset", "vega", "--slurm.venv", "/opt/venv"]
    with pytest.raises(UserError, match=r"slurm\.account is required by preset 'vega'"):
        build([*args, "--slurm.submit", "true", "--trainer.default_root_dir", str(tmp_path / "a")])
    assert not (tmp_path / "a").exists()  # refused before anything was written
    build([*args, "--trainer.default_root_dir", str(tmp_path / "b")])  # rendering alone: a warning
    err = capsys.readouterr().err
    assert "needs --slurm.account <your project> before the job can be submitted" in err
    assert "nothing in the job provides itwinai-lightning" not in err  # the venv does


def test_a_job_without_an_environment_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build([*TINY, "--trainer.default_root_dir", str(tmp_path)])
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert "nothing in the job provides itwinai-lightning" in line and "--slurm.venv" in line
    build([*TINY, "--slurm.python", sys.executable, "--trainer.default_root_dir", str(tmp_path)])
    assert "warning" not in capsys.readouterr().err


def test_gpu_devices_beyond_the_preset_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has 4 GPUs per node"):
        build([*GPU, "--trainer.devices", "8", "--slurm.preset", "juwels", "--trainer.default_root_dir", "x"])


def test_submit_without_sbatch_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="'sbatch' is not on PATH"):
        main([*TINY, "--slurm.submit", "true", "--trainer.default_root_dir", str(tmp_path / "run")])
    assert (tmp_path / "run" / "slurm" / "job.sbatch").is_file()  # the script is still there to copy


def test_cli_error_is_one_line_exit_2(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "slurm", "--config", str(QUICKSTART),
         "--slurm.preset", "nosuchsite"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no preset named 'nosuchsite'" in lines[0] and "juwels_booster" in lines[0]
