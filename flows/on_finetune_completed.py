"""on-finetune-completed: what happens when a fine-tuning job reports a new checkpoint.

Triggered by the Prefect event `finetune.completed` on resource `finetune.job.<id>`
(see deployments/prefect.yaml), or fired by hand with `endpoints
emit-finetune-completed`. It registers the checkpoint (once per job, however often
the event arrives) and, when the payload's policy asks, creates an endpoint for it or
moves an existing endpoint to it with a rolling replacement: the new serve run
becomes healthy next to the old one, traffic switches at the gateway, then the old
run stops — callers of the stable URL see no errors.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import Field

from flows.create_endpoint import create_endpoint
from inference_endpoints.errors import RequestInvalid
from inference_endpoints.health import Probe, answers, probe
from inference_endpoints.models import Checkpoint, Endpoint
from inference_endpoints.operations import register_checkpoint
from inference_endpoints.registry import Registry
from inference_endpoints.serving_config import render
from inference_endpoints.status import EndpointStatus, Precision
from inference_endpoints.store import LocalCheckpointStore
from inference_endpoints.validation import CreateRequest, validate_create
from tasks.context import load_context, load_engine_host
from tasks.kubernetes import prepare_serve_job
from tasks.runs import cancel_run, is_final, run_state, submit_serve_run

DRAIN_S = 3.0  # let the gateway see the switch and in-flight requests finish


def _blank(value: str | None) -> str | None:
    """Event templates render missing payload keys as empty strings or 'None'."""
    return None if value in (None, "", "None", "null") else value


def job_name(job_id: str) -> str:
    return job_id.removeprefix("finetune.job.")


def register_once(registry: Registry, store: LocalCheckpointStore, org_id: str, name: str,
                  path: Path, base: str | None) -> Checkpoint:
    """Idempotent per job: a replayed event finds the checkpoint it registered before."""
    existing = registry.find_checkpoint(org_id, name)
    if existing is not None:
        return existing
    return register_checkpoint(registry, store, org_id, path, name, base)


def rolling_replace(registry: Registry, endpoint: Endpoint, checkpoint: Checkpoint, org: str) -> str:
    """Bring the new checkpoint up next to the live run, switch traffic, stop the old run."""
    logger = get_run_logger()
    if endpoint.checkpoint_id == checkpoint.id:
        return "already serving this checkpoint"
    if endpoint.status != EndpointStatus.HEALTHY or endpoint.serve_run_id is None:
        raise RequestInvalid.single("endpoint_not_healthy", "endpoint",
                                    f"Endpoint {endpoint.name} is {endpoint.status}; only a healthy "
                                    "endpoint can be moved to a new checkpoint.",
                                    "Wait until it is healthy, or create a new endpoint.")
    instance = registry.instances()[endpoint.instance]
    host = load_engine_host(instance.work_pool)
    generation = endpoint.generation + 1
    view = registry.checkpoint_view(endpoint.org_id, checkpoint.id)
    validated = validate_create(
        CreateRequest(endpoint.name, checkpoint.id, endpoint.instance, endpoint.max_context,
                      endpoint.precision, endpoint.quantization),
        checkpoint=view, name_taken=False, instances=registry.instances())
    root = host.model_root(instance.runtime, endpoint.id, generation)
    spec = render(validated, model_root=root, api_key=endpoint.backend_api_key or "")
    old_run = endpoint.serve_run_id
    job = prepare_serve_job(registry, endpoint, spec.to_json(), generation)
    new_run = submit_serve_run(endpoint.id, org, endpoint.name, instance.work_pool, generation,
                               "replace", job)
    leased = [validated.checkpoint] + ([validated.checkpoint.base] if validated.checkpoint.base else [])
    registry.lease_for_candidate(endpoint.id, endpoint.name, leased, new_run)
    registry.update_endpoint(endpoint.id, candidate_run_id=new_run, candidate_checkpoint_id=checkpoint.id,
                             candidate_config_json=spec.to_json(), candidate_backend_url=None)
    registry.record_activity(endpoint.id, "replacing",
                             f"bringing up checkpoint {checkpoint.name} as serve run {new_run}")
    deadline = time.monotonic() + instance.startup_timeout_s
    while True:
        current = registry.get_endpoint(endpoint.id)
        assert current is not None
        url = current.candidate_backend_url
        if url and probe(url, 1.0) == Probe.HEALTHY:
            break
        if is_final(run_state(new_run)) or time.monotonic() > deadline:
            _abandon(registry, endpoint.id, new_run, url)
            raise RuntimeError(f"the replacement for {endpoint.name} did not become healthy; "
                               "the endpoint keeps serving its current checkpoint")
        time.sleep(0.25)
    if not registry.promote_candidate(endpoint.id, old_run):
        _abandon(registry, endpoint.id, new_run, url)
        raise RuntimeError(f"{endpoint.name} changed while it was being replaced; replacement abandoned")
    logger.info("traffic of %s switched to %s; draining the old run", endpoint.name, checkpoint.name)
    time.sleep(DRAIN_S)
    old_url = endpoint.backend_url
    cancel_run(old_run, "replaced by a new checkpoint")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if is_final(run_state(old_run)) and not answers(old_url, 0.5):
            registry.release_run_leases(old_run)
            break
        time.sleep(0.25)
    return f"replaced: now serving {checkpoint.name}"


def _abandon(registry: Registry, endpoint_id: str, run_id: str, url: str | None) -> None:
    cancel_run(run_id, "replacement abandoned")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (is_final(run_state(run_id)) and not answers(url, 0.5)):
        time.sleep(0.25)
    registry.release_run_leases(run_id)
    registry.update_endpoint(endpoint_id, candidate_run_id=None, candidate_backend_url=None,
                             candidate_checkpoint_id=None, candidate_config_json=None)


@flow(name="on-finetune-completed")
def on_finetune_completed(
    job_id: str = Field(description="Fine-tuning job id (the event's resource id is accepted too)"),
    checkpoint_path: str = Field(description="Directory the job wrote the checkpoint to"),
    org: str = Field(default="default", description="Organization that owns the checkpoint"),
    base_model: str | None = Field(default=None, description="Base checkpoint of a LoRA adapter"),
    checkpoint_name: str | None = Field(default=None, description="Name to register it under"),
    policy: str | None = Field(default=None, description="none, create or replace"),
    endpoint: str | None = Field(default=None, description="Endpoint to create or move"),
    instance: str = Field(default="cpu-dev", description="Instance type for a new endpoint"),
    max_context: int = Field(default=1024, description="Max context for a new endpoint"),
    precision: Precision = Field(default=Precision.AUTO, description="Precision for a new endpoint"),
) -> str:
    """Register the job's checkpoint and apply the serving policy."""
    logger = get_run_logger()
    ctx = load_context()
    registry = ctx.registry
    org = _blank(org) or "default"
    org_row = registry.get_org_by_name(org)
    if org_row is None:
        raise RequestInvalid.single("org_not_found", "org", f"No organization {org!r}.")
    job = job_name(job_id)
    name = _blank(checkpoint_name) or f"ft-{job}"
    checkpoint = register_once(registry, ctx.store, org_row.id, name, Path(checkpoint_path),
                               _blank(base_model))
    logger.info("checkpoint %s (%s) registered for job %s", checkpoint.name, checkpoint.id, job)
    chosen = (_blank(policy) or "none").lower()
    target = _blank(endpoint) or f"ft-{job}"
    if chosen == "create":
        existing = registry.find_endpoint(org_row.id, target)
        if existing is not None:
            return f"endpoint {target} already exists ({existing.status})"
        create_endpoint(name=target, checkpoint=checkpoint.id, instance=instance,
                        max_context=max_context, precision=precision, org=org,
                        idempotency_key=f"finetune-{job}")
        return f"created endpoint {target}"
    if chosen == "replace":
        live = registry.find_endpoint(org_row.id, target)
        if live is None:
            raise RequestInvalid.single("endpoint_not_found", "endpoint", f"No endpoint {target!r}.",
                                        "Use policy create, or name an existing endpoint.")
        return rolling_replace(registry, live, checkpoint, org)
    return f"registered {checkpoint.name}"
