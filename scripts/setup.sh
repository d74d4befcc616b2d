#!/usr/bin/env bash
# Create .venv (if absent) and install vaelens into it, CPU-only.
# torch: the pinned CPU build 2.13.0 is installed first when the venv has no torch, so that
# resolving diffusers never pulls a multi-GB CUDA build. An existing torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  "$VPY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
"$VPY" -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
