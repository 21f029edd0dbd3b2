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

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from pydantic import Field

from flows.create_endpoint import create_endpoint
from inference_endpoints.core.catalog import by_name
from inference_endpoints.core.errors import RequestInvalid
from inference_endpoints.core.status import Precision
from inference_endpoints.core.validation import DEFAULT_INSTANCE, DEFAULT_MAX_CONTEXT, CreateRequest
from inference_endpoints.persistence.models import Checkpoint, Endpoint
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.store import LocalCheckpointStore
from inference_endpoints.services.import_roots import SourcePolicy
from inference_endpoints.services.operations import register_checkpoint
from tasks.context import load_context
from tasks.replacements import follow_replacement, record_replacement

INSTANCE_NAMES: list[Any] = sorted(by_name())  # the run form offers the catalog's instances, nothing else


def _blank(value: str | None) -> str | None:
    """Event templates render missing payload keys as empty strings or 'None'."""
    return None if value in (None, "", "None", "null") else value


def job_name(job_id: str) -> str:
    return job_id.removeprefix("finetune.job.")


def register_once(registry: Registry, store: LocalCheckpointStore, org_id: str, name: str,
                  path: Path, base: str | None, sources: SourcePolicy) -> Checkpoint:
    """Idempotent per job: a replayed event finds the checkpoint it registered before.

    The path must be inside the organization's import roots, as for any registration.
    """
    existing = registry.find_checkpoint(org_id, name)
    if existing is not None:
        return existing
    return register_checkpoint(registry, store, org_id, path, name, base, sources=sources)


def _own_flow_run() -> str | None:
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None


def rolling_replace(registry: Registry, endpoint: Endpoint, checkpoint: Checkpoint, org: str) -> str:
    """Record a replacement (a candidate serve run on the new checkpoint) and follow it.

    The reconciler submits it, promotes it once it is ready (the stable URL switches),
    then drains and stops the old run. If this flow dies, the scheduled reconcile goes on;
    if the endpoint is stopped meanwhile, the candidate is stopped with it.
    """
    logger = get_run_logger()
    if endpoint.checkpoint_id == checkpoint.id:
        return "already serving this checkpoint"
    request = CreateRequest(endpoint.name, checkpoint.id, endpoint.instance, endpoint.max_context,
                            endpoint.precision, endpoint.quantization)
    candidate = record_replacement(registry, endpoint, request, _own_flow_run(),
                                   f"checkpoint {checkpoint.name}")
    timeout = registry.instances()[endpoint.instance].startup_timeout_s + 60
    if follow_replacement(registry, endpoint, candidate, timeout, log=logger.info):
        return f"replaced: now serving {checkpoint.name}"
    return f"replacement of {endpoint.name} is still in progress; the reconciler finishes it"


@flow(name="on-finetune-completed")
def on_finetune_completed(
    job_id: str = Field(description="Fine-tuning job id (the event's resource id is accepted too)"),
    checkpoint_path: str = Field(description="Directory the job wrote the checkpoint to"),
    org: str = Field(default="default", description="Organization that owns the checkpoint"),
    base_model: str | None = Field(default=None, description="Base checkpoint of a LoRA adapter"),
    checkpoint_name: str | None = Field(default=None, description="Name to register it under"),
    policy: str | None = Field(default=None, description="none, create or replace"),
    endpoint: str | None = Field(default=None, description="Endpoint to create or move"),
    instance: str = Field(default=DEFAULT_INSTANCE, description="Instance type for a new endpoint",
                          json_schema_extra={"enum": INSTANCE_NAMES}),
    max_context: int = Field(default=DEFAULT_MAX_CONTEXT, description="Max context for a new endpoint"),
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
                               _blank(base_model), ctx.sources)
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
