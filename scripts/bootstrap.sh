#!/usr/bin/env bash
# Creates ./.venv (once) with zeroedit and its test dependencies; sourced by demo.sh and test.sh.
# torch is installed first, pinned, so that no other requirement pulls a different build:
# ZEROEDIT_TORCH overrides the requirement (e.g. "torch" for the newest release with CUDA).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.zeroedit-installed"
want="$(cat "$root/pyproject.toml" | sha1sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$venv/bin/python" -m pip install -q "${ZEROEDIT_TORCH:-torch==2.13.0}"
  "$venv/bin/python" -m pip install -q -e "$root[test]"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export HF_HUB_DISABLE_TELEMETRY=1
