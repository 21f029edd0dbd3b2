"""The engine runtime an instance uses on this host (its pool's engine-host block)."""

from __future__ import annotations

from pathlib import Path

from inference_endpoints.adapters.runtime import make_runtime
from inference_endpoints.adapters.runtime.base import EngineRuntime
from inference_endpoints.persistence.registry import Registry
from tasks.context import load_engine_host


def runtime_for(registry: Registry, instance_name: str) -> EngineRuntime:
    """The instance's runtime, as this pool's `engine-host` block configures it."""
    instance = registry.instances()[instance_name]
    host = load_engine_host(instance.work_pool)
    return make_runtime(
        host.runtime_for(instance.runtime),
        engine_python=host.engine_python,
        run_dir=Path(host.run_dir),
        readonly_mode=host.readonly_mode,
        image=host.image or instance.image,
        docker_host=host.docker_host,
        gpu_count=0 if instance.is_cpu else instance.gpu_count,
        cluster=host.cluster(),
    )
