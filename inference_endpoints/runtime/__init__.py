"""Engine runtimes: how one vLLM server is started, watched and stopped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

CONTAINER_MODEL_ROOT = "/models"


def model_root_resolver(run_dir: Path) -> Callable[[str, str], str]:
    """Where an endpoint's checkpoints appear to its engine, per runtime kind."""

    def resolve(runtime: str, endpoint_id: str) -> str:
        if runtime == "docker":
            return CONTAINER_MODEL_ROOT
        return str(run_dir / endpoint_id / "models")

    return resolve
