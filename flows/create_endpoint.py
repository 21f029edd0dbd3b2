"""create-endpoint: validate → render → record + lease → submit the serve run → wait until healthy.

The same flow runs from `endpoints create`, the Prefect UI's run form and
`prefect deployment run 'create-endpoint/default' -p ...`. Any failure after the
endpoint was recorded cancels the serve run, releases the lease and leaves the
endpoint `failed` with a reason; a rejected request writes nothing at all.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import StateType
from prefect.runtime import flow_run
from pydantic import Field

from inference_endpoints.errors import RequestInvalid
from inference_endpoints.health import Probe, probe
from inference_endpoints.models import Endpoint
from inference_endpoints.operations import plan_create
from inference_endpoints.registry import Registry
from inference_endpoints.status import EndpointStatus, Precision, Quantization, ReasonCode
from inference_endpoints.validation import CreateRequest
from tasks.context import load_context, load_engine_host
from tasks.kubernetes import prepare_serve_job
from tasks.runs import is_final, run_state, submit_serve_run
from tasks.teardown import end_serve_run

POLL_S = 0.2
RUN_STATE_EVERY_S = 1.0


class EndpointFailed(RuntimeError):
    """The endpoint could not be brought up; the registry holds the reason."""


@task(cache_policy=NO_CACHE)
def record(registry: Registry, org_name: str, request: CreateRequest,
           idempotency_key: str | None) -> Endpoint:
    """Validate, render and record the endpoint with its lease, or reuse the idempotent one."""
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
    return registry.record_endpoint(
        org.id, plan.request, plan.spec, endpoint_id=plan.endpoint_id,
        idempotency_key=idempotency_key, create_run_id=_own_run_id(),
    )


def _own_run_id() -> str | None:
    run_id = flow_run.id
    return str(run_id) if run_id else None


def wait_until_healthy(registry: Registry, endpoint_id: str, timeout_s: float) -> Endpoint:
    """Follow the phases: deploying (run scheduled/pending) → loading → healthy."""
    deadline = time.monotonic() + timeout_s
    next_state_check = 0.0
    state: StateType | None = None
    while True:
        endpoint = registry.get_endpoint(endpoint_id)
        assert endpoint is not None
        status = EndpointStatus(endpoint.status)
        if status in (EndpointStatus.HEALTHY, EndpointStatus.STOPPING, EndpointStatus.STOPPED,
                      EndpointStatus.FAILED):
            return endpoint
        if endpoint.backend_url and probe(endpoint.backend_url, 1.0) == Probe.HEALTHY:
            registry.transition(endpoint_id, EndpointStatus.HEALTHY, message="backend answers /health",
                                expected_run=endpoint.serve_run_id)
            continue
        now = time.monotonic()
        if endpoint.serve_run_id and now >= next_state_check:
            next_state_check = now + RUN_STATE_EVERY_S
            state = run_state(endpoint.serve_run_id)
            if is_final(state):
                raise EndpointFailed(f"the serve run ended ({state}) before the endpoint was healthy")
        if now >= deadline:
            phase = "loading" if status == EndpointStatus.LOADING else "deploying"
            raise TimeoutError(phase)
        time.sleep(POLL_S)


@flow(name="create-endpoint")
def create_endpoint(
    name: str = Field(description="Endpoint name: a DNS label, unique in the organization"),
    checkpoint: str = Field(description="Checkpoint id or name (your organization's)"),
    instance: str = Field(default="cpu-dev", description="Instance type (see `endpoints instances`)"),
    max_context: int = Field(default=2048, description="Maximum context length in tokens"),
    precision: Precision = Field(default=Precision.AUTO, description="Serving precision"),
    quantization: Quantization = Field(default=Quantization.NONE,
                                       description="Serving-time quantization"),
    org: str = Field(default="default", description="Organization name"),
    idempotency_key: str | None = Field(default=None,
                                        description="Same key, same endpoint: safe to retry"),
    startup_timeout_s: int | None = Field(default=None,
                                          description="Override the instance's startup timeout"),
) -> str:
    """Create an endpoint and wait until it is healthy; returns the endpoint id."""
    logger = get_run_logger()
    ctx = load_context()
    registry = ctx.registry
    request = CreateRequest(name, checkpoint, instance, max_context,
                            Precision(precision).value, Quantization(quantization).value)
    endpoint = record(registry, org, request, idempotency_key)
    if EndpointStatus(endpoint.status).is_terminal:
        return endpoint.id
    spec_instance = registry.instances()[endpoint.instance]
    if endpoint.serve_run_id is None:
        assert endpoint.serving_config_json is not None
        try:
            job = prepare_serve_job(registry, endpoint, endpoint.serving_config_json)
            run_id = submit_serve_run(endpoint.id, org, endpoint.name, spec_instance.work_pool,
                                      job_variables=job)
        except Exception as exc:  # nothing is serving yet: release the lease, say why
            _fail(registry, endpoint.id, ReasonCode.DEPLOY_FAILED,
                  f"could not submit the serve run to pool {spec_instance.work_pool}: {exc}")
        registry.update_endpoint(endpoint.id, serve_run_id=run_id)
        registry.set_lease_run(endpoint.id, run_id)
        registry.transition(endpoint.id, EndpointStatus.DEPLOYING,
                            message=f"serve run {run_id} submitted to pool {spec_instance.work_pool}")
    timeout = startup_timeout_s or spec_instance.startup_timeout_s
    try:
        endpoint = wait_until_healthy(registry, endpoint.id, timeout)
    except TimeoutError as exc:
        phase = str(exc)
        reason = ReasonCode.HEALTH_TIMEOUT if phase == "loading" else ReasonCode.DEPLOY_TIMEOUT
        _fail(registry, endpoint.id, reason, f"not healthy after {timeout} s (still {phase})")
    except EndpointFailed as exc:
        _fail(registry, endpoint.id, ReasonCode.ENGINE_EXITED, str(exc))
    status = EndpointStatus(endpoint.status)
    if status == EndpointStatus.FAILED:
        # The serve run reported the failure (e.g. the engine exited); finish the cleanup.
        end_serve_run(registry, endpoint.id, final=EndpointStatus.FAILED,
                      reason=ReasonCode(endpoint.reason_code or ReasonCode.ENGINE_EXITED),
                      message=endpoint.reason_message or "failed")
        raise EndpointFailed(f"{endpoint.name} failed: {endpoint.reason_message}")
    if status == EndpointStatus.HEALTHY:
        logger.info("endpoint %s is healthy at %s", endpoint.name, endpoint.backend_url)
    return endpoint.id


def _fail(registry: Registry, endpoint_id: str, reason: ReasonCode, message: str) -> None:
    end_serve_run(registry, endpoint_id, final=EndpointStatus.FAILED, reason=reason, message=message)
    raise EndpointFailed(message)
