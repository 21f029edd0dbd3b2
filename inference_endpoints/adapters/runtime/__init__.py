"""Engine runtimes: how one vLLM server is started, watched and stopped.

`process` runs vLLM as a local process tree; `docker` runs it in a container; `sidecar`
is the engine Kubernetes runs next to the serve flow in its pod. The instance catalog
names each instance type's runtime; an `engine-host` block may override it per work
pool (e.g. CPU hosts serving through Docker).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from inference_endpoints.adapters.runtime.base import EngineRuntime

if TYPE_CHECKING:
    from inference_endpoints.adapters.runtime.kubernetes import KubeCluster

CONTAINER_MODEL_ROOT = "/models"


def model_root_resolver(run_dir: Path, generation: int = 0) -> Callable[[str, str], str]:
    """Where an endpoint's checkpoints appear to its engine, per runtime kind.

    A replacement (a later generation) gets its own mount points next to the live run's.
    """

    def resolve(runtime: str, endpoint_id: str) -> str:
        if runtime != "process":  # containers see the store at one fixed root
            return CONTAINER_MODEL_ROOT
        base = run_dir / endpoint_id
        return str((base / f"g{generation}" if generation else base) / "models")

    return resolve


def make_runtime(
    kind: str,
    *,
    engine_python: str,
    run_dir: Path,
    readonly_mode: str = "auto",
    image: str = "",
    docker_host: str = "",
    gpu_count: int = 0,
    cluster: KubeCluster | None = None,
    engine_port: int = 8000,
) -> EngineRuntime:
    if kind == "process":
        from inference_endpoints.adapters.runtime.process import ProcessRuntime

        return ProcessRuntime(engine_python, run_dir, readonly_mode)
    if kind == "docker":
        from inference_endpoints.adapters.runtime.docker import DockerRuntime

        return DockerRuntime(image=image, docker_host=docker_host or None, gpu_count=gpu_count)
    if kind == "sidecar":
        from inference_endpoints.adapters.runtime.kubernetes import SidecarRuntime

        return SidecarRuntime(engine_port, cluster)
    raise ValueError(f"unknown engine runtime {kind!r} (expected process, docker or sidecar)")
