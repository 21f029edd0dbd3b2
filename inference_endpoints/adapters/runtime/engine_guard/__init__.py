"""Where the engine guard lives, and how runtimes ship it to engines that cannot see this host."""

from pathlib import Path

GUARD_DIR = Path(__file__).resolve().parent
GUARD_MIDDLEWARE = ["--middleware", "ie_engine_guard.EngineGuard"]

# Containers (Docker, Kubernetes) get the guard in the environment, and `sh -c GUARD_BOOT
# ie-engine <engine command...>` writes it to their own writable /tmp before exec'ing vLLM:
# no host path to mount, the same in every image. PYTHONPATH=GUARD_TARGET lets vLLM import it.
GUARD_TARGET = "/tmp/ie-engine-guard"
GUARD_SOURCE_ENV = "IE_ENGINE_GUARD_SOURCE"
GUARD_SOURCE = (GUARD_DIR / "ie_engine_guard.py").read_text()
GUARD_BOOT = (f'mkdir -p {GUARD_TARGET} && printf "%s" "${GUARD_SOURCE_ENV}" '
              f'> {GUARD_TARGET}/ie_engine_guard.py && exec "$@"')
