#!/usr/bin/env bash
# Every GPU check and benchmark in one prepared run (~8 min on one GPU); figures in <out>/gpu_check.json.
#   bash scripts/gpu-check.sh [--out runs/gpu-check] [--dry-run]
# Run it whenever the task has a device machine (see DEVELOPERS.md); CPU CI runs --dry-run.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" scripts/gpu_check.py "$@"
