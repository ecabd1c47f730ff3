#!/usr/bin/env bash
# Install itwinai-lightning with every extra and the engines its tests use, into the current Python.
#
#   bash scripts/setup.sh            # python packages (+ Horovod build, cached) ; system packages if root
#   SKIP_APT=1 bash scripts/setup.sh # no apt-get (e.g. not root, or on a cluster with modules)
#   SKIP_HOROVOD=1 ...               # skip the Horovod build (~5 min on 2 cores, once; the wheel is cached)
#   TORCH_SPEC='torch==2.13.0' ...   # which torch to install when none is installed yet
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "${SKIP_APT:-0}" != 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # MPI (mpirun, mpi4py), a local SLURM (tests start slurmctld/slurmd on localhost), build tools,
  # iproute2 + util-linux (nsenter, unshare) for the 2-node test cluster in network namespaces,
  # chromium (headless) to render the benchmark report in a real browser, podman + mmdebstrap to build and
  # run the image (Containerfile) with a base image made here (no registry needed)
  apt-get install -y -qq --no-install-recommends \
    openmpi-bin libopenmpi-dev slurmd slurmctld slurm-client munge build-essential iproute2 util-linux \
    chromium podman mmdebstrap runc uidmap fuse-overlayfs >/dev/null
fi

# torch first: a CPU-only machine should not pull a multi-GB CUDA build through another package
$PY -c 'import torch' 2>/dev/null || $PY -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
# Every extra but prov the way a user installs it. prov: yProv4ML declares torchvision, which it never
# imports; next to this CPU torch pip would take PyPI's CUDA torchvision (or replace torch), and a torchvision
# built for another torch breaks `import lightning`. This machine cannot reach the CPU torchvision index, so
# yProv4ML goes in with its other requirements (the wheel tests install [all] exactly as users do).
$PY -m pip install -q -e ".[mlflow,wandb,ray,deepspeed,horovod,mpi,report,dev]"
$PY -m pip install -q --no-deps $($PY -c 'from itwinai_lightning import extras; print(*map(extras.plain, extras.declared()["prov"]))')
$PY -m pip install -q $($PY -c '
from importlib import metadata
from packaging.requirements import Requirement
reqs = [Requirement(r) for r in metadata.requires("yprov4ml") or []]
print(*(f"{r.name}{r.specifier}" for r in reqs if r.marker is None and r.name != "torchvision"))')
if [ "${SKIP_HOROVOD:-0}" != 1 ]; then
  bash itwinai_lightning/tools/build-horovod.sh
fi
echo "itwinai-lightning installed: $($PY -c 'import itwinai_lightning; print(itwinai_lightning.__version__)')"
