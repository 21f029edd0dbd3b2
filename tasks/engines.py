"""The engine runtime an endpoint uses on this host, and stopping engines left behind."""

from __future__ import annotations

from pathlib import Path

from inference_endpoints.adapters.runtime import make_runtime
from inference_endpoints.adapters.runtime.base import EngineRuntime
from inference_endpoints.persistence.models import Endpoint
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


def stop_orphans(registry: Registry, endpoint: Endpoint) -> int:
    """Stop engines that still answer for an ended run (found by their labels on this host)."""
    leftovers = runtime_for(registry, endpoint.instance).leftovers(endpoint.id)
    for engine in leftovers:
        engine.stop()
    return len(leftovers)
