"""The one small interface the serve flow uses to run an engine, whatever runs it.

Implementations: `process` (a local process tree, `runtime/process.py`) and `docker`
(a container, `runtime/docker.py`). Both start a server from a rendered spec, report
whether it still runs, show its recent log lines, stop it gracefully then forcibly,
and find leftovers by the labels they were started with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from inference_endpoints.core.serving_config import ServingSpec


@dataclass(frozen=True)
class EngineLabels:
    """Who an engine belongs to; attached to whatever runs it so leftovers can be found."""

    org: str
    endpoint_id: str
    endpoint_name: str
    serve_run_id: str

    def as_dict(self) -> dict[str, str]:
        return {
            "inference-endpoints.org": self.org,
            "inference-endpoints.endpoint-id": self.endpoint_id,
            "inference-endpoints.endpoint": self.endpoint_name,
            "inference-endpoints.serve-run": self.serve_run_id,
        }


class EngineHandle(Protocol):
    @property
    def url(self) -> str: ...

    def exit_code(self) -> int | None:
        """None while running; the exit status once it has ended."""
        ...

    def tail(self, lines: int = 20) -> list[str]: ...

    def stop(self, grace_s: float = 10.0) -> None:
        """Graceful stop, then forced after `grace_s`; idempotent."""
        ...


class EngineRuntime(Protocol):
    kind: str

    def model_root(self, endpoint_id: str) -> str:
        """Where checkpoints appear to the engine (the renderer composes paths under it)."""
        ...

    def start(
        self,
        spec: ServingSpec,
        *,
        sources: dict[str, Path],
        host: str,
        port: int,
        labels: EngineLabels,
        log_path: Path,
    ) -> EngineHandle: ...

    def leftovers(self, endpoint_id: str) -> Sequence[EngineHandle]:
        """Engines of this endpoint still running (e.g. after their serve run was killed)."""
        ...
