#!/usr/bin/env bash
# Set up and run the whole test suite (slow tests included) on 2 workers.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
.venv/bin/ruff check . || exit 1
.venv/bin/python -m pytest -n 2 --timeout 900 -p no:cacheprovider tests "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
