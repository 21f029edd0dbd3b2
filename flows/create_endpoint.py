"""create-endpoint: validate → render → record (endpoint, first serve run, leases) → reconcile → ready.

The same flow runs from `endpoints create`, the console, the Prefect UI's run form and
`prefect deployment run 'create-endpoint/create' -p ...`. It records the *intent* and
kicks the one reconciler for this endpoint, then follows it until the stable URL itself
serves. It decides nothing about the serve run: if this flow (or the CLI following it)
dies, the scheduled reconcile finishes the start or fails it with a reason within the
startup timeout. A rejected request writes nothing at all.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import Field

from inference_endpoints.core.catalog import by_name
from inference_endpoints.core.errors import RequestInvalid
from inference_endpoints.core.replica_counts import replica_problems, scaling_problems
from inference_endpoints.core.status import EndpointStatus, Precision, Quantization
from inference_endpoints.core.validation import DEFAULT_INSTANCE, DEFAULT_MAX_CONTEXT, CreateRequest
from inference_endpoints.persistence.models import Endpoint
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.services.operations import plan_create
from inference_endpoints.settings import Settings
from inference_endpoints.urls import endpoint_urls
from tasks.context import load_context, load_engine_host
from tasks.orchestration import reconcile_now

FOLLOW_S = 0.5
RECONCILE_EVERY_S = 2.0
STABLE_URL_WAIT_S = 15.0

INSTANCE_NAMES: list[Any] = sorted(by_name())  # the run form offers the catalog's instances, nothing else


class EndpointFailed(RuntimeError):
    """The endpoint could not be brought up; the registry holds the reason."""


@task(cache_policy=NO_CACHE)
def record(registry: Registry, org_name: str, request: CreateRequest,
           idempotency_key: str | None, startup_timeout_s: int | None = None,
           replicas: tuple[int, int] = (1, 1), scaling: tuple[float | None, int | None] = (None, None),
           ) -> Endpoint:
    """Validate, render and record the endpoint with its lease, or reuse the idempotent one."""
    problems = replica_problems(*replicas) + scaling_problems(*scaling)
    if problems:
        raise RequestInvalid(problems)
    org = registry.get_org_by_name(org_name)
    if org is None:
        raise RequestInvalid.single("org_not_found", "org", f"No organization {org_name!r}.")
    if idempotency_key:
        existing = registry.find_by_idempotency_key(org.id, idempotency_key)
        if existing is not None:
            return existing
    instance = registry.instances().get(str(request.instance))
    host = load_engine_host(instance.work_pool) if instance else None

    def model_root(runtime: str, endpoint_id: str) -> str:
        assert host is not None  # called only once validation has accepted the instance
        return host.model_root(runtime, endpoint_id)

    plan = plan_create(registry, org.id, request, model_root)
    endpoint = registry.record_endpoint(
        org.id, plan.request, plan.spec, endpoint_id=plan.endpoint_id,
        idempotency_key=idempotency_key, create_run_id=_own_run_id(),
    )
    if startup_timeout_s:
        registry.update_endpoint(endpoint.id, startup_timeout_s=startup_timeout_s)
    if replicas != (1, 1) or scaling != (None, None):
        registry.runs.scale(endpoint.id, *replicas, *scaling)
    return endpoint


def _own_run_id() -> str | None:
    run_id = flow_run.id
    return str(run_id) if run_id else None


def stable_url_serves(endpoint: Endpoint, org: str, timeout_s: float = STABLE_URL_WAIT_S) -> bool:
    """Until the gateway routes to the endpoint (its route table refreshes on its own clock)."""
    health = f"{endpoint_urls(endpoint.name, org, Settings()).path_url}/health"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(health, timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def follow(registry: Registry, endpoint_id: str, org: str) -> Endpoint:
    """Kick the reconciler for this endpoint until it is healthy, stopped or failed."""
    logger = get_run_logger()
    next_reconcile = 0.0
    while True:
        now = time.monotonic()
        if now >= next_reconcile:
            next_reconcile = now + RECONCILE_EVERY_S
            try:
                reconcile_now(registry, [endpoint_id], log=logger.info)
            except Exception as exc:  # Prefect hiccup: the next kick (or the scheduled pass) retries
                logger.warning("reconcile for %s deferred: %s", endpoint_id, exc)
        endpoint = registry.get_endpoint(endpoint_id)
        if endpoint is None:
            raise EndpointFailed("the endpoint was removed while it was being created")
        status = EndpointStatus(endpoint.status)
        if status == EndpointStatus.HEALTHY:
            if not stable_url_serves(endpoint, org):
                logger.warning("%s is healthy but its stable URL did not answer yet", endpoint.name)
            return endpoint
        if status in (EndpointStatus.FAILED, EndpointStatus.STOPPED):
            return endpoint
        time.sleep(FOLLOW_S)


@flow(name="create-endpoint")
def create_endpoint(
    name: str = Field(description="Endpoint name: a DNS label, unique in the organization"),
    checkpoint: str = Field(description="Checkpoint id or name (your organization's)"),
    instance: str = Field(default=DEFAULT_INSTANCE, description="Instance type (see `endpoints instances`)",
                          json_schema_extra={"enum": INSTANCE_NAMES}),
    max_context: int = Field(default=DEFAULT_MAX_CONTEXT, description="Maximum context length in tokens"),
    precision: Precision = Field(default=Precision.AUTO, description="Serving precision"),
    quantization: Quantization = Field(default=Quantization.NONE,
                                       description="Serving-time quantization"),
    org: str = Field(default="default", description="Organization name"),
    idempotency_key: str | None = Field(default=None,
                                        description="Same key, same endpoint: safe to retry"),
    startup_timeout_s: int | None = Field(default=None,
                                          description="Override the instance's startup timeout"),
    min_replicas: int = Field(default=1, description="Engines kept serving (1 to 8)"),
    max_replicas: int = Field(default=1, description="Autoscale up to this many on load (1 to 8, ≥ min)"),
    scale_target: float | None = Field(default=None, description="Requests in flight per replica the "
                                       "autoscaler aims at (default 4)"),
    scale_down_after_s: int | None = Field(default=None, description="Cooldown before scaling down, "
                                           "in seconds (default 300)"),
) -> str:
    """Create an endpoint and wait until its stable URL serves; returns the endpoint id."""
    logger = get_run_logger()
    registry = load_context().registry
    request = CreateRequest(name, checkpoint, instance, max_context,
                            Precision(precision).value, Quantization(quantization).value)
    endpoint = record(registry, org, request, idempotency_key, startup_timeout_s,
                      (min_replicas, max_replicas), (scale_target, scale_down_after_s))
    endpoint = follow(registry, endpoint.id, org)
    if endpoint.status != EndpointStatus.HEALTHY:
        raise EndpointFailed(f"{endpoint.name} {endpoint.status}: {endpoint.reason_code}: "
                             f"{endpoint.reason_message}")
    logger.info("endpoint %s is healthy at %s", endpoint.name, endpoint.backend_url)
    return endpoint.id
