#!/usr/bin/env bash
# Set up everything and run the main job: build the demo checkpoint, register it,
# and validate a create request for it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/endpoints demo "$@"
