#!/usr/bin/env bash
# The main job: the offline demo on the embedded default model. Usage: bash scripts/demo.sh [--out DIR] [flags]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
export HF_HUB_OFFLINE=1
exec zeroedit demo "$@"
