"""The package's image (the repository's Containerfile) built for the tests with podman, once per machine
and code change: a base image made here with mmdebstrap (no registry is reachable) and this machine's pip
configuration passed in (scripts/build-image.sh, LOCAL_BASE=1 MIRROR=1). Later builds reuse podman's layer
cache; concurrent test workers wait for one build (a file lock)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock

from tests.helpers.engines import require, require_executable

REPO = Path(__file__).resolve().parents[2]
TAG = "localhost/itwinai-lightning:ci"
#: the extras the test image holds: the report plots and mpi4py (with Open MPI's runtime) for the MPI tests
EXTRAS = ("report", "mpi")
#: podman's settings for machines like CI's (runc, cgroupfs, no ulimits): docs/containers.md
CONTAINERS_CONF = REPO / "tests" / "containers" / "containers.conf"
LOCK = Path("/tmp/itwinai-lightning-image.lock")


@dataclass(frozen=True)
class Image:
    tag: str
    build_s: float  # this build's seconds (cached: the layers were there)


def podman_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return env


def build(tag: str = TAG) -> Image:
    """Build (or refresh from the cache) the test image; fails the test with the build's last lines."""
    require_executable("podman", "apt-get install podman mmdebstrap runc uidmap fuse-overlayfs")
    require_executable("mmdebstrap", "apt-get install mmdebstrap")
    env = podman_env()
    env.update(
        LOCAL_BASE="1", MIRROR="1", TORCH_INDEX="", TORCH_SPEC=f"torch=={torch.__version__}",
        EXTRAS=",".join(EXTRAS),
    )  # fmt: skip
    with FileLock(str(LOCK)):
        started = time.monotonic()
        proc = subprocess.run(
            ["bash", "scripts/build-image.sh", tag], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=1200,
        )  # fmt: skip
        seconds = time.monotonic() - started
    require(proc.returncode == 0, "the test image", f"build failed: {(proc.stdout + proc.stderr)[-3000:]}")
    return Image(tag, seconds)


def run(
    image: str,
    argv: list[str],
    *,
    binds: Sequence[Path] = (),
    user: str | None = None,
    workdir: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``podman run --rm --network host [--user] [-v d:d ...] [-w] IMAGE argv``."""
    words = ["podman", "run", "--rm", "--network", "host", "--env", "HOME=/tmp"]
    if user:
        words += ["--user", user]
    for path in binds:
        words += ["-v", f"{path}:{path}"]
    if workdir is not None:
        words += ["-w", str(workdir)]
    return subprocess.run(
        [*words, image, *argv], env=podman_env(env), capture_output=True, text=True, timeout=timeout
    )


if __name__ == "__main__":  # .ci/run starts the build beside the suite: python -m tests.helpers.image
    built = build()
    print(f"{built.tag}: built in {built.build_s:.0f} s")
