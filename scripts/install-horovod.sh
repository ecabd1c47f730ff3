#!/usr/bin/env bash
# In a checkout: the same build as `itwinai-lightning build-horovod` (the script ships inside the package).
exec bash "$(dirname "$0")/../itwinai_lightning/tools/build-horovod.sh" "$@"
