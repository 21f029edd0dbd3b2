"""Thin steps for endpoints whose engine is a Kubernetes sidecar (the `gpu-kubernetes` pool).

Before a serve run is submitted the endpoint's NetworkPolicy must fence its engine pods (only
the control plane and the endpoint's own pods reach them) and the engine's backend key must
exist as a Secret (the sidecar starts before the serve flow and reads it at once), and the run
needs its own job variables: GPU count, engine arguments, read-only checkpoint mounts, GPU node
selection. Both objects are deleted once the endpoint has ended. Endpoints on other runtimes
get `None` and nothing is called.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from inference_endpoints.adapters import k8s_manifest
from inference_endpoints.adapters.runtime.base import EngineLabels
from inference_endpoints.core.serving_config import ServingSpec
from inference_endpoints.persistence.models import Endpoint
from inference_endpoints.persistence.registry import Registry
from tasks.context import load_engine_host

SIDECAR = "sidecar"


def _labels(registry: Registry, endpoint: Endpoint, generation: int) -> EngineLabels:
    org = registry.get_org(endpoint.org_id)
    # Prefect labels the Job with the flow run's id; the generation tells runs apart here.
    return EngineLabels(org.name if org else endpoint.org_id, endpoint.id, endpoint.name, f"g{generation}")


@task(retries=3, retry_delay_seconds=2, cache_policy=NO_CACHE)
def prepare_serve_job(registry: Registry, endpoint: Endpoint, config_json: str,
                      generation: int = 0, instance_name: str | None = None) -> dict[str, Any] | None:
    """The run's job variables for a sidecar instance (its key Secret created first), else None.
    `instance_name`: the run's own (an update may move it), else the endpoint's."""
    instance = registry.instances()[instance_name or endpoint.instance]
    host = load_engine_host(instance.work_pool)
    if host.runtime_for(instance.runtime) != SIDECAR:
        return None
    labels = _labels(registry, endpoint, generation)
    policy = k8s_manifest.render_engine_network_policy(labels, namespace=host.namespace,
                                                       **host.control_plane_peers())
    cluster = host.cluster()
    cluster.ensure_network_policy(policy)  # first: no key exists for an engine left unfenced
    cluster.ensure_secret(k8s_manifest.render_backend_key_secret(
        labels, endpoint.backend_api_key or "", namespace=host.namespace))
    variables = k8s_manifest.job_variables(
        instance, ServingSpec.from_json(config_json), labels,
        checkpoint_pvc=host.checkpoint_pvc, engine_image=host.image or None)
    variables["namespace"] = host.namespace
    return variables


@task(retries=3, retry_delay_seconds=2, cache_policy=NO_CACHE)
def forget_serve_job(registry: Registry, endpoint: Endpoint) -> bool:
    """Delete a sidecar endpoint's key Secret and NetworkPolicy once it has ended; False if neither."""
    instance = registry.instances().get(endpoint.instance)
    if instance is None:
        return False
    host = load_engine_host(instance.work_pool)
    if host.runtime_for(instance.runtime) != SIDECAR:
        return False
    labels = _labels(registry, endpoint, endpoint.generation)
    cluster = host.cluster()
    secret = cluster.delete_secret(k8s_manifest.backend_key_secret_name(labels))
    policy = cluster.delete_network_policy(k8s_manifest.network_policy_name(labels))
    return secret or policy
