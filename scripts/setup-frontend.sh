#!/usr/bin/env bash
# Install the console's front-end libraries (htmx, Chart.js) from the npm registry into
# node_modules/, exactly as package-lock.json pins them. The console serves them from there;
# no library file is ever copied into the repository.
# Idempotent: skipped when node_modules matches the lock file (a stamp records its hash).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v npm >/dev/null 2>&1; then
  echo "npm not found: installing Debian's nodejs and npm" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi

want=$(sha256sum package.json package-lock.json | sha256sum | cut -c1-16)
stamp=node_modules/.ie-stamp
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" \
      && -f node_modules/htmx.org/dist/htmx.min.js && -f node_modules/chart.js/dist/chart.umd.js ]]; then
  exit 0
fi
npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error
echo "$want" > "$stamp"
