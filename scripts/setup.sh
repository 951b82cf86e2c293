#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the project with its test tools. Idempotent: re-running is fast.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version}"'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)-${EXTRAS:-dev}
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch is pinned to the CPU build in pyproject.toml; never let a bare `torch` pull a CUDA build.
  .venv/bin/python -m pip install --quiet -e ".[${EXTRAS:-dev}]"
  touch "$stamp"
fi
