#!/usr/bin/env bash
# The test suite, offline. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
export HF_HUB_OFFLINE=1
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec python -m pytest "$@"
