"""``itwinai-lightning build-horovod``: build Horovod 0.28.1 against the installed torch and install it.

Horovod's last release does not build from PyPI against torch 2.x as published, so no extra can install
it (the ``horovod`` extra brings only the build tools). This command runs the build script shipped in the
package (``itwinai_lightning/tools/build-horovod.sh``) with this interpreter: it patches the sdist, builds
a wheel once (about 5 minutes on 2 cores), caches it per torch/Python/flavour and installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import resources

from itwinai_lightning.errors import CommandParser, UserError, parse_command_args

SCRIPT = "build-horovod.sh"


def script_path() -> str:
    """Where the shipped build script is (inside the installed package)."""
    return str(resources.files("itwinai_lightning") / "tools" / SCRIPT)


def toolkit_problem(torch_cuda: str | None, nvcc: str | None, gpu: bool) -> str | None:
    """Why the build cannot work here, or None. ``torch_cuda``: ``torch.version.cuda`` (None for a CPU torch).

    Horovod's torch extension compiles against CUDA whenever torch is a CUDA build (PyPI's default on
    Linux), so a CUDA torch needs a CUDA toolkit and the GPU build; a CPU build needs a CPU torch.
    """
    if torch_cuda and not gpu:
        return (
            f"torch is a CUDA {torch_cuda} build, and Horovod's torch extension then compiles against CUDA: "
            "run 'itwinai-lightning build-horovod --gpu' where a CUDA toolkit is loaded (nvcc on PATH), "
            "or install a CPU torch for a CPU-only Horovod"
        )
    if gpu and not torch_cuda:
        return "--gpu needs a CUDA build of torch; this torch is CPU-only (drop --gpu for a gloo build)"
    if gpu and nvcc is None:
        return "--gpu needs a CUDA toolkit: nvcc is not on PATH (load your site's CUDA module)"
    return None


def _torch_cuda() -> str | None:
    import torch

    return torch.version.cuda  # type: ignore[no-any-return]


def main(argv: list[str]) -> int:
    parser = CommandParser(
        prog="itwinai-lightning build-horovod",
        allow_abbrev=False,
        description="Build Horovod 0.28.1 against the installed torch (CPU/gloo by default) and install it "
        "into this Python; the built wheel is cached in ~/.cache/itwinai-lightning/wheels.",
    )
    parser.add_argument("--gpu", action="store_true", help="build NCCL GPU operations (needs nvcc and CUDA)")
    parser.add_argument("--force", action="store_true", help="rebuild/reinstall even if Horovod imports")
    parser.add_argument("--print-script", action="store_true", help="print the build script's path and exit")
    known = parse_command_args(parser, argv, "build-horovod")
    if known.print_script:
        print(script_path())
        return 0
    for tool in ("bash", "c++"):
        if shutil.which(tool) is None:
            raise UserError(
                f"build-horovod needs '{tool}' on PATH (a C++17 compiler: apt-get install build-essential, "
                "or load your site's GCC module)"
            )
    problem = toolkit_problem(_torch_cuda(), shutil.which("nvcc"), known.gpu)
    if problem:
        raise UserError(f"build-horovod: {problem}")
    env = dict(os.environ, PYTHON=sys.executable)
    if known.gpu:
        env["HOROVOD_GPU"] = "1"
    if known.force:
        env["FORCE"] = "1"
    return subprocess.call(["bash", script_path()], env=env)
