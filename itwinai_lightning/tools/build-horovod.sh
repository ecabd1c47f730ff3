#!/usr/bin/env bash
# Build and install Horovod 0.28.1 against the installed torch (2.x), reproducibly, on CPU (gloo) or CUDA.
#
# Horovod 0.28.1 (its last release) does not build from PyPI as published against torch 2.x: its CMake
# files ask for C++14 (torch needs C++17) and CMake >= 4 rejects its old cmake_minimum_required policy.
# This script patches the sdist, builds a wheel once, caches it, and installs it. It ships inside the
# package: run it as `itwinai-lightning build-horovod [--gpu] [--force]` (or scripts/install-horovod.sh in a
# checkout). Needs a C++17 compiler (build-essential / a GCC module); the pip packages it needs it installs.
#
#   HOROVOD_WHEEL_CACHE   where built wheels are kept (default: ~/.cache/itwinai-lightning/wheels)
#   HOROVOD_GPU=1         build with NCCL GPU operations (needs nvcc and CUDA); default is a CPU build
#   MAKEFLAGS             parallel build jobs (default -j$(nproc))
set -euo pipefail

VERSION=0.28.1
PY=${PYTHON:-python3}
CACHE=${HOROVOD_WHEEL_CACHE:-$HOME/.cache/itwinai-lightning/wheels}
TORCH_VER=$($PY -c 'import torch; print(torch.__version__.replace("+", "_"))')
PY_TAG=$($PY -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')
FLAVOUR=cpu; [ "${HOROVOD_GPU:-0}" = 1 ] && FLAVOUR=gpu
SLOT="$CACHE/horovod-$VERSION-torch$TORCH_VER-$PY_TAG-$FLAVOUR"

if $PY -c 'import horovod.torch' 2>/dev/null && [ "${FORCE:-0}" != 1 ]; then
  echo "horovod already importable: $($PY -c 'import horovod; print(horovod.__version__)')"; exit 0
fi

if ! ls "$SLOT"/horovod-*.whl >/dev/null 2>&1; then
  echo "building horovod $VERSION for torch $TORCH_VER ($FLAVOUR); takes ~5 min on 2 cores"
  $PY -m pip install -q "cmake>=3.20,<5" ninja packaging wheel
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  (cd "$WORK" && $PY -m pip download -q --no-deps --no-binary :all: "horovod==$VERSION" && tar xzf "horovod-$VERSION.tar.gz")
  SRC="$WORK/horovod-$VERSION"
  sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$SRC/CMakeLists.txt" "$SRC/horovod/torch/CMakeLists.txt"
  export CMAKE_POLICY_VERSION_MINIMUM=3.5 HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 \
         HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS=${MAKEFLAGS:--j$(nproc)}
  if [ "$FLAVOUR" = gpu ]; then
    export HOROVOD_GPU_OPERATIONS=NCCL
  else
    # a CPU build: CMake would find a stray nvcc / CUDA toolkit (e.g. /usr/local/cuda without a driver)
    # and fail in enable_language(CUDA); switch that probe off in the sources
    export HOROVOD_CPU_OPERATIONS=GLOO HOROVOD_WITHOUT_MPI=1 CUDA_HOME=/nonexistent
    sed -i -e 's/^check_language(CUDA)$/# cpu build: check_language(CUDA)/' \
           -e 's/^    find_package(CUDAToolkit)$/    # cpu build: find_package(CUDAToolkit)/' "$SRC/CMakeLists.txt"
  fi
  mkdir -p "$SLOT"
  $PY -m pip wheel --no-build-isolation --no-deps --no-cache-dir -w "$SLOT" "$SRC"
fi

$PY -m pip install --no-deps --force-reinstall "$SLOT"/horovod-*.whl
$PY -m pip install -q cloudpickle psutil pyyaml packaging
$PY -c 'import horovod.torch as hvd; print("horovod", hvd.__version__ if hasattr(hvd, "__version__") else "", "ok")'
