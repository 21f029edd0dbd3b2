#!/usr/bin/env bash
# Set up everything and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
source scripts/lib.sh

stage "lint (ruff) and types (mypy)"
.venv/bin/ruff check .
.venv/bin/mypy
done_stage

stage "tests (pytest)"
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
done_stage
echo "total: $(( $(date +%s) - start )) s"
exit $status
