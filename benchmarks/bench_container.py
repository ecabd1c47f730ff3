"""The package's image (Containerfile) with podman: size, build time cold and cached, and a run inside it
against the same run outside, side by side in one run (interleaved: outside, inside, outside, ...).

* image size: ``podman image inspect`` (bytes, uncompressed layers);
* build: ``cold`` with ``--no-cache`` (the base image kept: it is built once per machine), ``cached`` with
  nothing changed, ``code change`` after one package file changed (only the package's layers rebuild);
* start-up: seconds from launching ``itwinai-lightning fit`` to its first training step (the process's
  wall time minus the fit's own time after its first step: ``fit_wall_time_s - time_to_first_step_s`` of
  the RunRecord), ``podman run`` included inside;
* throughput: the RunRecord's ``samples_per_s`` of a quickstart fit (``--samples`` samples, 2 epochs),
  inside over outside (target >= 0.98).

    python benchmarks/bench_container.py [--reps 3] [--samples 4096] [--skip-cold]

Builds with scripts/build-image.sh (LOCAL_BASE=1 MIRROR=1, as the tests do; see docs/containers.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import image as images  # noqa: E402


def _build(extra: list[str] | None = None) -> float:
    env = images.podman_env()
    import torch

    env.update(LOCAL_BASE="1", MIRROR="1", TORCH_INDEX="", TORCH_SPEC=f"torch=={torch.__version__}",
               EXTRAS=",".join(images.EXTRAS))  # fmt: skip
    started = time.monotonic()
    command = ["bash", "scripts/build-image.sh", images.TAG]
    env["BUILD_FLAGS"] = " ".join(extra or [])
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    return time.monotonic() - started


def _fit(inside: bool, work: Path, samples: int, steps: int | None) -> dict[str, float]:
    where = "in" if inside else "out"
    args = ["itwinai-lightning", "fit", "--config", str(work / "gallery" / "quickstart.yaml"),
            "--trainer.enable_progress_bar", "false", "--data.num_samples", str(samples),
            "--data.val_samples", "64", "--trainer.default_root_dir", str(work / where)]  # fmt: skip
    args += ["--trainer.max_steps", str(steps)] if steps else ["--trainer.max_epochs", "2"]
    started = time.monotonic()
    if inside:
        proc = images.run(images.TAG, args, binds=[work], user="0:0", workdir=work, timeout=900)
    else:
        proc = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - started
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    root = work / where / "latest"
    summary = json.loads((root / "run_record.json").read_text())["summary"]
    return {
        "startup_s": wall - (summary["fit_wall_time_s"] - summary["time_to_first_step_s"]),
        "samples_per_s": summary["samples_per_s"],
    }


def _stats(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"median {statistics.median(values):.3f} (min {low:.3f}, max {high:.3f}, n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--skip-cold", action="store_true", help="no --no-cache build (takes minutes)")
    opts = parser.parse_args()

    images.build()  # the image exists (and the base)
    builds: dict[str, float] = {}
    if not opts.skip_cold:
        builds["cold"] = _build(["--no-cache"])
    builds["cached"] = _build()
    marker = REPO / "itwinai_lightning" / "_bench_container_marker.py"
    try:
        marker.write_text(f"# {time.time()}\n")
        builds["code change"] = _build()
    finally:
        marker.unlink()
        _build()  # back to the image of the checkout
    size = int(
        subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", images.TAG],
                       env=images.podman_env(), capture_output=True, text=True, check=True).stdout.strip()
    )  # fmt: skip

    results: dict[str, dict[str, list[float]]] = {"outside": {}, "inside": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(["itwinai-lightning", "examples", "--to", "gallery"], cwd=work, check=True,
                       capture_output=True)  # fmt: skip
        os.chmod(work, 0o755)
        for _ in range(opts.reps):
            for where in ("outside", "inside"):
                start = _fit(where == "inside", work, 256, steps=1)
                run = _fit(where == "inside", work, opts.samples, steps=None)
                results[where].setdefault("startup_s", []).append(start["startup_s"])
                results[where].setdefault("samples_per_s", []).append(run["samples_per_s"])

    print(f"image {images.TAG}: {size / 1e9:.2f} GB (extras {', '.join(images.EXTRAS)})")
    for name, seconds in builds.items():
        print(f"build {name:12s} {seconds:7.1f} s")
    for key in ("startup_s", "samples_per_s"):
        for where in ("outside", "inside"):
            print(f"{key:14s} {where:8s} {_stats(results[where][key])}")
    ratio = statistics.median(results["inside"]["samples_per_s"]) / statistics.median(
        results["outside"]["samples_per_s"]
    )
    inside, outside = results["inside"]["samples_per_s"], results["outside"]["samples_per_s"]
    pairs = ", ".join(f"{i / o:.3f}" for i, o in zip(inside, outside, strict=True))
    print(f"throughput inside / outside: {ratio:.3f} (pairs: {pairs}; target >= 0.98)")


if __name__ == "__main__":
    main()
