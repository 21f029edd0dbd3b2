#!/usr/bin/env bash
# Set up everything and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
# CI allows 90 min: the tests stop (and still print their report) by this deadline, see
# tests/ci_budget.py; IE_SUITE_BUDGET_S=0 turns it off.
budget=${IE_SUITE_BUDGET_S:-5100}
if ((budget > 0)); then export IE_SUITE_DEADLINE=$((start + budget)); fi
echo "disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free where the tests run"
bash scripts/setup.sh
source scripts/lib.sh

# The Docker tests' engine image: its rootfs (debootstrap + pip, ~4 min on a fresh machine)
# needs no daemon, so it is built beside the lint and the first tests; the Docker fixture's
# own build waits on the same lock and then only imports it.
image_pid=""
image_log="$(mktemp -t ie-engine-rootfs.XXXXXX)"
if ((EUID == 0)); then
  echo "engine image rootfs: building in the background (log: $image_log)"
  nice -n 10 bash scripts/build-engine-image.sh --rootfs-only > "$image_log" 2>&1 &
  image_pid=$!
fi
finish_image() {  # never leave it running: wait for it (it ends by itself within minutes)
  if [[ -n "$image_pid" ]]; then
    if wait "$image_pid"; then echo "engine image rootfs: $(tail -1 "$image_log")"
    else echo "engine image rootfs build failed:"; tail -5 "$image_log"; fi
    image_pid=""
  fi
}
trap finish_image EXIT

stage "lint (ruff), types (mypy), layers (lint-imports)"
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/lint-imports
done_stage

# -rs…: print every skip with its reason (plus failures, errors, xfails: -r is replaced, not
# added to, so this keeps what addopts' -ra shows); tests/skip_guard.py fails the run on any
# skip whose reason is not on tests/skip_allowlist.txt.
set +e
if (($#)); then
  stage "tests (pytest $*)"
  .venv/bin/python -m pytest -rsfExX --durations=40 "$@"
  status=$?
else
  # The end-to-end tests spend most of their time waiting on one vLLM start at a time, so the
  # unit tests run beside them at a lower priority (each session has its own data directory,
  # ports and scratch databases); their report is printed after the end-to-end one.
  stage "tests (pytest: end-to-end, with the unit tests beside them)"
  unit_log="$(mktemp -t ie-unit-tests.XXXXXX)"
  nice -n 10 .venv/bin/python -m pytest -rsfExX --durations=20 -m "not e2e" > "$unit_log" 2>&1 &
  unit_pid=$!
  .venv/bin/python -m pytest -rsfExX --durations=40 -m e2e
  e2e_status=$?
  wait "$unit_pid"
  unit_status=$?
  echo "==== the unit tests (pytest -m 'not e2e'), run beside: exit $unit_status ===="
  cat "$unit_log"
  status=$((e2e_status != 0 ? e2e_status : unit_status))
fi
finish_image
set -e
done_stage
echo "total: $(( $(date +%s) - start )) s"
exit $status
