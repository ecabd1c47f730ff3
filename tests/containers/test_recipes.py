"""The Apptainer definition (parsed with spython: no Apptainer runtime installs here) and the job lines an
Apptainer/Singularity preset renders (text-checked), against the Containerfile they build on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_lightning.slurm.cli import build

REPO = Path(__file__).resolve().parents[2]
DEFINITION = REPO / "containers" / "itwinai-lightning.def"
GPU = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--trainer.accelerator", "gpu"]


def _containerfile_env() -> dict[str, str]:
    text = (REPO / "Containerfile").read_text()
    return dict(re.findall(r"(\w+)=(\S+)", " ".join(re.findall(r"^ENV (.+)$", text, re.M))))


def test_the_apptainer_definition_parses_and_builds_on_the_containerfiles_image() -> None:
    from spython.main.parse.parsers import SingularityParser  # [dev]: the installed-Python sessions lack it

    recipe = SingularityParser(str(DEFINITION)).recipe["spython-base"]
    default_tag = re.search(r"TAG=\$\{1:-([^}]+)\}", (REPO / "scripts" / "build-image.sh").read_text())
    assert default_tag and recipe.fromHeader == default_tag.group(1)  # what build-image.sh tags by default
    assert "Bootstrap: docker-daemon" in DEFINITION.read_text().splitlines()  # the image the build made
    environ = dict(line.split("=", 1) for line in recipe.environ)
    image_env = _containerfile_env()
    assert environ["VIRTUAL_ENV"] == image_env["VIRTUAL_ENV"]  # the image's venv
    assert environ["PATH"].startswith(f"{image_env['VIRTUAL_ENV']}/bin:")
    assert recipe.cmd == 'exec itwinai-lightning "$@"'
    assert recipe.test == "/bin/bash /tests.sh"  # %test: the CLI and the imports
    assert any("import torch, lightning, itwinai_lightning" in line for line in recipe.install)


def _render(tmp_path: Path, *extra: str) -> str:
    script, _, _ = build([*GPU, *extra, "--trainer.default_root_dir", str(tmp_path / "run")])
    return script.read_text()


def test_an_apptainer_preset_renders_exec_with_the_gpu_flag_and_its_binds(tmp_path: Path) -> None:
    text = _render(
        tmp_path, "--trainer.devices", "4", "--slurm.preset", "juwels_booster", "--slurm.account", "p1",
        "--slurm.container", "{image: /p/project/p1/itwinai-lightning.sif}",
    )  # fmt: skip
    binds = f'--bind "$PWD" --bind {tmp_path / "run"} --bind /p/project --bind /p/scratch'
    assert f"CONTAINER=(apptainer exec --nv {binds} /p/project/p1/itwinai-lightning.sif)\n" in text
    srun = 'srun --nodes=1 --ntasks-per-node=4 --cpus-per-task=12 --cpu-bind=none "${PY[@]}"'
    assert f"{srun} -m itwinai_lightning fit" in text
    # the requeue stays in the batch shell: scontrol is not in the image
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text and '"${CONTAINER[@]}" scontrol' not in text
    lumi = _render(
        tmp_path, "--trainer.devices", "8", "--slurm.preset", "lumi_g", "--slurm.account", "project_1",
        "--slurm.container", "{image: /project/project_1/itl.sif, binds: [/appl/local]}",
    )  # fmt: skip
    assert "CONTAINER=(singularity exec --rocm --bind" in lumi and "--bind /appl/local /project" in lumi


def test_a_podman_container_gets_the_users_id_and_slurm_env_keys(tmp_path: Path) -> None:
    text = _render(
        tmp_path, "--trainer.devices", "1", "--trainer.accelerator", "cpu",
        "--slurm.container", "{image: localhost/itl:cpu, runtime: podman, binds: [/data:/in:ro]}",
        "--slurm.env", "{HF_HOME: /scratch/hf}", "--slurm.python", "python",
    )  # fmt: skip
    line = next(x for x in text.splitlines() if x.startswith("CONTAINER=("))
    assert "--env HF_HOME" in line and "-v /data:/in:ro" in line and line.endswith(" localhost/itl:cpu)")
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_an_unknown_runtime_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "slurm", *GPU, "--trainer.accelerator", "cpu",
         "--slurm.container", "{image: x.sif, runtime: docker}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "slurm.container.runtime must be one of apptainer, singularity, podman" in proc.stderr
    assert not list(tmp_path.rglob("job.sbatch"))  # nothing written


def test_container_keys_are_checked_before_anything_is_rendered() -> None:
    from itwinai_lightning.errors import UserError
    from itwinai_lightning.launch import container

    for bad, said in (
        (
            {"image": "x.sif", "bind": ["/data"]},
            "slurm.container.bind: unknown key; the keys are image, runtime",
        ),
        ({"image": "x.sif", "binds": "/data"}, "slurm.container.binds must be a list, got '/data'"),
        ({"image": "x", "runtime": "docker"}, "(docker: use podman, which takes the same images)"),
    ):
        with pytest.raises(UserError) as err:
            container.check(bad)
        assert said in str(err.value)
    container.check({"runtime": "apptainer", "gpu_flag": "--nv", "binds": []})  # a preset without an image
    assert container.prefix_lines({"runtime": "podman"}, True, [], []) == ["CONTAINER=()"]
