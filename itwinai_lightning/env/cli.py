"""``itwinai-lightning env``: what this process sees -- launcher, ranks, devices, versions.

A sanity check to run on a new cluster node, alone or under the launcher you mean to use::

    python -m itwinai_lightning env
    srun -N 2 --ntasks-per-node=4 python -m itwinai_lightning env --json

Every rank prints its own report (prefixed ``[rank R/W]``), or one JSON object per line with ``--json``.
Optional backends are reported from their installed metadata, never imported, so this stays fast: each
extra of the package is ``ok``, ``missing`` or ``broken``, and a problem comes with the exact
``pip install`` line that fixes it (:mod:`itwinai_lightning.extras`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from importlib import metadata
from typing import Any

from itwinai_lightning.errors import CommandParser, UserError, parse_command_args

#: distribution name -> what it enables
BACKENDS: dict[str, str] = {
    "torch": "core",
    "lightning": "core",
    "jsonargparse": "core",
    "mlflow": "tracking (extra: mlflow)",
    "wandb": "tracking (extra: wandb)",
    "yprov4ml": "provenance (extra: prov)",
    "ray": "tune / ray_ddp (extra: ray)",
    "deepspeed": "hpc_deepspeed (extra: deepspeed)",
    "horovod": "horovod (built by: itwinai-lightning build-horovod)",
    "mpi4py": "optional for mpirun",
    "py-spy": "profiling",
    "nvidia-ml-py": "GPU monitoring",
}


def _executables() -> list[str]:
    """The launchers of the table that are programs, plus sbatch (to submit jobs)."""
    from itwinai_lightning.launch.table import TABLE

    return [spec.executable for spec in TABLE if spec.executable] + ["sbatch"]


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _accelerators() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": cuda,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "torch_cuda": torch.version.cuda,
        "torch_hip": getattr(torch.version, "hip", None),
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    info["nccl_available"] = bool(torch.distributed.is_available() and torch.distributed.is_nccl_available())
    info["gloo_available"] = bool(torch.distributed.is_available() and torch.distributed.is_gloo_available())
    return info


def _lightning_environment(info: Any) -> str:
    """The ClusterEnvironment Lightning would use, or why there is none: the report must still come out
    when the launch is wrong or Lightning itself does not import (the case ``env`` exists to diagnose)."""
    try:
        from itwinai_lightning.launch.environment import make_cluster_environment

        return type(make_cluster_environment(info)).__name__
    except UserError as err:  # a launch mistake
        return f"launch error: {err}"
    except Exception as err:  # e.g. a torchvision built for another torch breaks `import lightning`
        return (
            f"lightning does not import: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        )


def collect() -> dict[str, Any]:
    """Everything ``env`` reports, as a JSON-serialisable dict."""
    from itwinai_lightning import extras
    from itwinai_lightning.launch.where import default_backend, detect

    info = detect()
    accel = _accelerators()
    environment = _lightning_environment(info)
    return {
        "cluster": info.as_dict(),
        "lightning_environment": environment,
        "backend": default_backend("cuda" if accel["cuda_available"] else "cpu"),
        "accelerators": accel,
        "versions": {name: _version(name) for name in BACKENDS},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executables": {name: shutil.which(name) for name in _executables()},
        "extras": {name: status.as_dict() for name, status in extras.report().items()},
        "torch_companions": [
            {"problem": problem, "fix": fix} for problem, fix in extras.torch_companion_problems()
        ],
    }


def render(report: dict[str, Any]) -> str:
    """Human-readable report, every line prefixed with ``[rank R/W]``."""
    c = report["cluster"]
    a = report["accelerators"]
    gpus = ", ".join(a["gpus"]) or "none"
    lines = [
        f"launcher      {c['launcher']}" + (f" ({c['mpi_flavour']})" if c["mpi_flavour"] else ""),
        f"rank          {c['rank']} of {c['world_size']} "
        f"(local {c['local_rank']} of {c['local_world_size']}, node {c['node_rank']} of {c['num_nodes']})",
        f"master        {c['master_addr']}:{c['master_port'] or '(chosen at start)'}",
        f"host          {c['hostname']}" + (f"  job {c['job_id']}" if c["job_id"] else ""),
        f"environment   {report['lightning_environment']}",
        f"backend       {report['backend']}",
        f"cpus          {a['cpu_count']} (usable {a['cpu_affinity']}, torch threads {a['torch_threads']})",
        f"gpus          {gpus}  (CUDA_VISIBLE_DEVICES={a['cuda_visible_devices']})",
        f"python        {report['python']}  {report['platform']}",
    ]
    for name, purpose in BACKENDS.items():
        version = report["versions"][name] or "not installed"
        lines.append(f"{name:<13} {version:<16} {purpose}")
    found = [name for name, path in report["executables"].items() if path]
    lines.append(f"on PATH       {', '.join(found) or 'no launchers'}")
    lines += _extras_lines(report)
    prefix = f"[rank {c['rank']}/{c['world_size']}] "
    return "\n".join(prefix + line for line in lines)


def _extras_lines(report: dict[str, Any]) -> list[str]:
    """One line per extra (``ok``, ``missing``, ``broken``), then each problem and its fix."""
    from itwinai_lightning.extras import PURPOSE

    if not report["extras"]:
        return ["extras        unknown: itwinai-lightning is not installed (running from a source tree?)"]
    lines = []
    for name, status in report["extras"].items():
        lines.append(f"extra {name:<10}{status['state']:<9}{PURPOSE.get(name, '')}")
        lines += [f"  {problem}" for problem in status["problems"]]
        if status["fix"]:
            lines.append(f"  fix: {status['fix']}")
    for companion in report["torch_companions"]:
        lines.append(f"torch pairing {companion['problem']}")
        lines.append(f"  fix: {companion['fix']}")
    return lines


def main(argv: list[str]) -> int:
    parser = CommandParser(
        prog="itwinai-lightning env",
        description="Print the detected launcher, ranks, devices and versions (one report per rank).",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per rank, on one line")
    parser.add_argument(
        "--check",
        action="store_true",
        help="distributed health check under the launcher: all-reduce/all-gather over gloo or NCCL, "
        "per-rank hosts, latency and bus bandwidth, the slowest rank; exit 1 if a rank is missing",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for every rank to join (--check)"
    )
    known = parse_command_args(parser, argv, "env")
    if known.timeout <= 0:
        raise UserError(f"env --timeout must be > 0 seconds, got {known.timeout:g}")
    if known.check:
        from itwinai_lightning.env import healthcheck

        return healthcheck.main(known.timeout, known.json)
    report = collect()
    text = json.dumps(report, sort_keys=True) if known.json else render(report)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return 0
