#!/usr/bin/env bash
# Build the itwinai-lightning image from the Containerfile (docs/containers.md).
#
#   bash scripts/build-image.sh [TAG]                     # default tag: itwinai-lightning:cpu
#   EXTRAS=mlflow,wandb,report,mpi HOROVOD=1 bash scripts/build-image.sh itwinai-lightning:full
#   TORCH_INDEX=https://download.pytorch.org/whl/cu126 bash scripts/build-image.sh itwinai-lightning:cu126
#
#   ENGINE        podman (default) or docker
#   BASE          the base image (default: Debian bookworm-slim from the registry)
#   LOCAL_BASE=1  no registry reachable: build the Debian base here with mmdebstrap (cached as
#                 localhost/itwinai-base:bookworm) from DEBIAN_MIRROR (default: this machine's apt mirror)
#   MIRROR=1      no PyPI reachable: pass this machine's pip find-links, extra index, constraints and CA into
#                 the build and mount the local folders they name (read-only)
#   TORCH_SPEC, TORCH_INDEX (empty: no separate index), EXTRAS, HOROVOD: the Containerfile's build args
#   BUILD_FLAGS   more flags for the engine's build (e.g. --no-cache)
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-itwinai-lightning:cpu}
ENGINE=${ENGINE:-podman}
ARGS=(--build-arg "EXTRAS=${EXTRAS:-mlflow,report}" --build-arg "HOROVOD=${HOROVOD:-0}")
[ -z "${TORCH_SPEC:-}" ] || ARGS+=(--build-arg "TORCH_SPEC=$TORCH_SPEC")
[ -z "${TORCH_INDEX+set}" ] || ARGS+=(--build-arg "TORCH_INDEX=$TORCH_INDEX")

if [ "${LOCAL_BASE:-0}" = 1 ] && [ -z "${BASE:-}" ]; then
  BASE=localhost/itwinai-base:bookworm
  if ! "$ENGINE" image exists "$BASE" 2>/dev/null; then
    MIRROR_URL=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null)}
    MIRROR_URL=${MIRROR_URL:-http://deb.debian.org/debian}
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    echo "building the base image $BASE from $MIRROR_URL (mmdebstrap)"
    mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates,procps \
      bookworm "$WORK/rootfs.tar" "$MIRROR_URL"
    "$ENGINE" import "$WORK/rootfs.tar" "$BASE" >/dev/null
  fi
fi
[ -z "${BASE:-}" ] || ARGS+=(--build-arg "BASE=$BASE")

if [ "${MIRROR:-0}" = 1 ]; then
  pipconf() { python3 -m pip config get "global.$1" 2>/dev/null || true; }
  LINKS=${PIP_FIND_LINKS:-$(pipconf find-links)}
  INDEX=${PIP_EXTRA_INDEX_URL:-$(pipconf extra-index-url)}
  CONSTRAINT=${PIP_CONSTRAINT:-$(pipconf constraint)}
  CERT=${PIP_CERT:-$(pipconf cert)}  # a site's TLS proxy: its CA bundle
  ARGS+=(--build-arg "PIP_FIND_LINKS=$LINKS" --build-arg "PIP_EXTRA_INDEX_URL=$INDEX"
         --build-arg "PIP_CONSTRAINT=$CONSTRAINT" --build-arg "PIP_CERT=$CERT")
  for ref in $LINKS $INDEX $CONSTRAINT $CERT; do
    path=${ref#file://}
    case "$ref" in file://*) path=${path%/simple};; esac
    [ -e "$path" ] && ARGS+=(-v "$path:$path:ro")
  done
fi

started=$(date +%s)
# shellcheck disable=SC2086  # BUILD_FLAGS: more engine flags, word-split (e.g. "--no-cache")
"$ENGINE" build --network host ${BUILD_FLAGS:-} -f Containerfile -t "$TAG" "${ARGS[@]}" .
echo "built $TAG in $(( $(date +%s) - started )) s"
