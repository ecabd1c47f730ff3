"""``itwinai-lightning env`` reports each extra from the installed metadata: ok, missing or broken, with the
exact pip line that fixes it. Installed distributions are shadowed by real ``.dist-info`` directories put
first on the child's PYTHONPATH, which is what importlib.metadata reads."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from itwinai_lightning import extras

pytestmark = pytest.mark.core  # runs on every supported Python (nox -s installed-3.N)


def _dist(root: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    info = root / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


def _env(python_env: dict[str, str], cwd: Path, shadow: Path | None, *args: str) -> str:
    """stdout of ``itwinai-lightning env ARGS`` with ``shadow`` (fake .dist-info dirs) first on the path."""
    env = dict(python_env)
    if shadow is not None:
        env["PYTHONPATH"] = f"{shadow}:{env['PYTHONPATH']}"
    proc = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "env", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _env_json(python_env: dict[str, str], cwd: Path, shadow: Path | None = None) -> dict:  # type: ignore[type-arg]
    return json.loads(_env(python_env, cwd, shadow, "--json"))  # type: ignore[no-any-return]


def test_every_extra_is_reported_from_the_installed_metadata(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    report = _env_json(python_env, tmp_path)
    assert set(report["extras"]) == set(extras.PURPOSE)  # every extra but the bundles (all, dev)
    # scripts/setup.sh and the wheel's [all] make every extra usable; Horovod only where it was built, amdsmi
    # only where ROCm is (an AMD GPU node)
    horovod = report["extras"].pop("horovod")
    amd = report["extras"].pop("amd")
    if extras.installed_version("amdsmi") is None:
        assert amd["state"] == "missing" and "amdsmi" in amd["fix"], amd
    else:
        assert amd["state"] == "ok", amd
    assert {name: s["state"] for name, s in report["extras"].items()} == dict.fromkeys(report["extras"], "ok")
    assert all(s["fix"] == "" and s["problems"] == [] for s in report["extras"].values())
    if report["versions"]["horovod"] is None:
        assert (horovod["state"], horovod["fix"]) == ("missing", "itwinai-lightning build-horovod")
    else:
        assert (horovod["state"], horovod["fix"]) == ("ok", "")


def test_a_yprov4ml_this_python_cannot_use_is_broken_with_the_pip_line(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    old_python = sys.version_info < (3, 12)
    # on 3.11 the extra needs 3.2.3 (later releases do not parse there); on 3.12+ it needs >=3.2.8
    wrong, wanted = ("3.2.8", "yprov4ml==3.2.3") if old_python else ("3.2.3", "yprov4ml<3.3,>=3.2.8")
    _dist(tmp_path / "shadow", "yprov4ml", wrong)
    prov = _env_json(python_env, tmp_path, tmp_path / "shadow")["extras"]["prov"]
    assert prov["state"] == "broken"
    assert prov["problems"] == [
        f"yprov4ml {wrong} is installed, this extra needs {Requirement(wanted).specifier} "
        f"on Python {sys.version_info.major}.{sys.version_info.minor}"
    ]
    assert prov["fix"] == f"{shlex.quote(sys.executable)} -m pip install {shlex.quote(wanted)}"


def test_a_missing_requirement_names_its_pip_line() -> None:
    status = extras.check("demo", [Requirement("no-such-distribution-xyz>=1.2"), Requirement("psutil>=1")])
    assert status.state == "broken"  # psutil is there, the other is not
    assert status.problems == ["no-such-distribution-xyz is not installed"]
    assert status.fix.endswith("-m pip install 'no-such-distribution-xyz>=1.2'")
    nothing = extras.check("demo", [Requirement("no-such-distribution-xyz")])
    assert (nothing.state, nothing.fix.split(" -m ")[1]) == (
        "missing",
        "pip install no-such-distribution-xyz",
    )


def test_a_torchvision_from_another_build_of_torch_is_named(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    torch_version = metadata.version(
        "torch"
    )  # what pip installed: PyPI's CUDA torch carries no +cu label here
    release, _, variant = torch_version.partition("+")
    # the release matches, the build variant does not (a PyPI torchvision beside a +cpu torch, or the reverse)
    other = "" if variant else "+cpu"
    _dist(tmp_path / "shadow", "torchvision", f"0.99.0{other}", (f"torch=={release}",))
    report = _env_json(python_env, tmp_path, tmp_path / "shadow")
    [pairing] = report["torch_companions"]
    assert pairing["problem"] == (
        f"torchvision 0.99.0{other} does not match torch {torch_version} (different build variant)"
    )
    minor = int(release.split(".")[1])
    assert f"-m pip install 'torchvision==0.{minor + 15}.*'" in pairing["fix"]  # torch 2.13 <-> 0.28
    if variant:
        assert f"--index-url https://download.pytorch.org/whl/{variant}" in pairing["fix"]


def test_the_human_report_shows_the_fix_under_the_extra(tmp_path: Path, python_env: dict[str, str]) -> None:
    _dist(tmp_path / "shadow", "wandb", "0.1.0")  # the extra needs wandb>=0.17
    out = _env(python_env, tmp_path, tmp_path / "shadow").splitlines()
    at = next(
        i for i, line in enumerate(out) if line.endswith("extra wandb     broken   Weights & Biases tracking")
    )
    assert out[at + 1].endswith(
        "wandb 0.1.0 is installed, this extra needs >=0.17 on Python "
        f"{sys.version_info.major}.{sys.version_info.minor}"
    )
    assert out[at + 2].endswith(f"fix: {shlex.quote(sys.executable)} -m pip install 'wandb>=0.17'")


@pytest.mark.horovod
def test_build_horovod_runs_the_shipped_script_with_this_python(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    from itwinai_lightning.build_horovod import cli as horovod_build

    script = Path(horovod_build.script_path())
    assert script.is_file() and script.parent.parent == Path(extras.__file__).parent  # inside the package
    itl = [sys.executable, "-m", "itwinai_lightning", "build-horovod"]
    printed = subprocess.run(
        [*itl, "--print-script"], env=python_env, cwd=tmp_path, capture_output=True, text=True
    )
    assert printed.returncode == 0 and printed.stdout.strip() == str(script)
    # this environment has Horovod (scripts/setup.sh builds it with the same script): nothing to rebuild
    again = subprocess.run(itl, env=python_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.startswith("horovod already importable: 0.28.1")
    wrong = subprocess.run([*itl, "--gpus"], env=python_env, cwd=tmp_path, capture_output=True, text=True)
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines() == [
        "itwinai-lightning: error: build-horovod: unknown argument(s) --gpus; "
        "see 'itwinai-lightning build-horovod --help'"
    ]


def test_build_horovod_names_the_toolkit_it_needs_before_building() -> None:
    from itwinai_lightning.build_horovod.cli import toolkit_problem

    assert toolkit_problem(None, None, gpu=False) is None  # CPU torch, gloo build: what setup.sh does
    assert toolkit_problem("13.0", "/usr/local/cuda/bin/nvcc", gpu=True) is None
    cuda_torch = toolkit_problem("13.0", None, gpu=False)
    assert cuda_torch is not None and "CUDA 13.0 build" in cuda_torch and "--gpu" in cuda_torch
    no_nvcc = toolkit_problem("13.0", None, gpu=True)
    assert no_nvcc is not None and "nvcc is not on PATH" in no_nvcc
    cpu_torch = toolkit_problem(None, "/usr/bin/nvcc", gpu=True)
    assert cpu_torch is not None and "CPU-only" in cpu_torch


def test_build_horovod_stops_in_one_line_where_it_cannot_build(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    """On this interpreter's torch: a CUDA torch (the wheel venvs take PyPI's) cannot get a gloo-only build;
    a CPU torch (scripts/setup.sh) cannot get --gpu. Either way one line, exit 2, nothing built."""
    import torch

    flag = [] if torch.version.cuda else ["--gpu"]
    proc = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "build-horovod", *flag, "--force"],
        env=python_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    expected = "Horovod's torch extension then compiles" if torch.version.cuda else "this torch is CPU-only"
    assert expected in proc.stderr and proc.stdout == ""
