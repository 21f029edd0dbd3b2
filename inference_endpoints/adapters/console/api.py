"""The REST API under `/api/v1/`: organization API key in, that organization's data out.

Every route resolves the caller's organization from `Authorization: Bearer <key>`
first and passes it to the service, which only ever looks inside it: another
organization's names answer 404 and its rows never appear in a list.
Errors share one shape: `{"problems": [{code, field, message, hint}]}`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from inference_endpoints.adapters.console import schemas
from inference_endpoints.adapters.console.metrics_tab import load_series
from inference_endpoints.adapters.console.queries import endpoint_names
from inference_endpoints.adapters.console.service import ConsoleService, CreateInput
from inference_endpoints.core.errors import Problem, StorageFull, is_disk_full
from inference_endpoints.core.validation import CreateRequest
from inference_endpoints.persistence.checkpoint_lifecycle import LeaseHolder
from inference_endpoints.persistence.models import ActivityEvent, ApiKey, Checkpoint, Organization
from inference_endpoints.services.replicas import replica_rows
from inference_endpoints.services.uploads import ARCHIVE_NAME

bearer = HTTPBearer(auto_error=False, description="An organization API key (`ie_…`)")
UPLOAD_PATH = "/api/v1/checkpoints/upload"  # the guard gives it its own body limit
WRITE_BYTES = 4 * 1024 * 1024
_BINARY = {"schema": {"type": "string", "format": "binary"}}
UPLOAD_BODY = {"required": True, "content": {"application/x-tar": _BINARY, "application/gzip": _BINARY,
                                             "application/octet-stream": _BINARY}}


class Unauthorized(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.problem = Problem("unauthorized", "authorization", message,
                               "Send `Authorization: Bearer <your organization's API key>`.")


def service(request: Request) -> ConsoleService:
    svc: ConsoleService = request.app.state.service
    return svc


def caller_org(request: Request,
               credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Organization:
    if credentials is None or not credentials.credentials:
        raise Unauthorized("Missing API key.")
    org = service(request).registry.org_for_key(credentials.credentials)
    if org is None:
        raise Unauthorized("Unknown or revoked API key.")
    return org


Org = Annotated[Organization, Depends(caller_org)]
Svc = Annotated[ConsoleService, Depends(service)]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": schemas.ProblemsOut, "description": "Missing, unknown or revoked key"},
    404: {"model": schemas.ProblemsOut, "description": "Not in your organization"},
}

router = APIRouter(prefix="/api/v1", responses=ERRORS)


@router.get("/org", response_model=schemas.OrgOut, tags=["organization"])
def who_am_i(org: Org) -> dict[str, str]:
    """The organization the key belongs to."""
    return {"id": org.id, "name": org.name}


# ---- endpoints ---------------------------------------------------------------------------------

@router.get("/endpoints", response_model=schemas.EndpointPageOut, tags=["endpoints"])
def list_endpoints(
    org: Org, svc: Svc,
    status: Annotated[list[str] | None, Query(description="Only these statuses (repeatable)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Your endpoints, newest first, with status, URL, request count, cost so far and idle flag."""
    views, total = svc.list_endpoints(org, status, limit=limit, offset=offset)
    cost_total = svc.org_spend(org)
    return {"items": [v.to_dict() for v in views], "total": total, "limit": limit, "offset": offset,
            "cost_total": round(cost_total, 6)}


@router.post("/endpoints", status_code=202, response_model=schemas.EndpointOut, tags=["endpoints"],
             responses={422: {"model": schemas.ProblemsOut}, 503: {"model": schemas.ProblemsOut}})
def create_endpoint(
    body: schemas.CreateEndpointIn, org: Org, svc: Svc,
    idempotency_key: Annotated[str | None, Header(description="Same key, same endpoint")] = None,
) -> dict[str, Any]:
    """Check the request now (422 lists every problem), record it, and start the create flow.

    Answers 202 at once; follow `status` (pending → deploying → loading → healthy).
    """
    return svc.create(org, _create_input(body), idempotency_key).to_dict()


@router.post("/endpoints/validate", tags=["endpoints"])
def validate_endpoint(body: schemas.CreateEndpointIn, org: Org, svc: Svc) -> dict[str, Any]:
    """Everything create checks, and the fit estimate, without creating anything."""
    result = svc.validate(org, _create_input(body))
    return {"ok": result.ok, "problems": [p.to_dict() for p in result.problems],
            "fit": dict(result.fit_rows) or None}


@router.get("/endpoints/{name}", response_model=schemas.EndpointDetailOut, tags=["endpoints"])
def get_endpoint(name: str, org: Org, svc: Svc) -> dict[str, Any]:
    """One endpoint, with its rendered serving configuration and what the engine reports."""
    ep = svc.endpoint(org, name)
    view = svc.views(org, [ep])[0]
    return {**view.to_dict(), "serving_config": svc.serving_config(ep),
            "effective": svc.effective_values(ep), "replica_runs": replica_rows(svc.registry, ep)}


@router.patch("/endpoints/{name}", response_model=schemas.EndpointOut, tags=["endpoints"],
              responses={422: {"model": schemas.ProblemsOut}})
def update_endpoint(name: str, body: schemas.IdleStopIn, org: Org, svc: Svc) -> dict[str, Any]:
    """Set (or clear) the idle auto-stop."""
    return svc.set_idle_stop(org, name, body.idle_stop_minutes).to_dict()


@router.post("/endpoints/{name}/stop", status_code=202, response_model=schemas.StopOut, tags=["endpoints"],
             responses={503: {"model": schemas.ProblemsOut}})
def stop_endpoint(name: str, org: Org, svc: Svc) -> dict[str, Any]:
    """Start stopping the endpoint (the stop flow confirms the engine is gone); returns at once."""
    result = svc.stop(org, name)
    return {"outcome": result.outcome, "run_id": result.run_id,
            "endpoint": result.view.to_dict() if result.view else None}


@router.post("/endpoints/{name}/scale", response_model=schemas.EndpointOut, tags=["endpoints"],
             responses={422: {"model": schemas.ProblemsOut}})
def scale_endpoint(name: str, body: schemas.ScaleIn, org: Org, svc: Svc) -> dict[str, Any]:
    """Set the replica bounds (and the autoscaler's target and cooldown); the reconciler adds or
    drains replicas at once, the stable URL answering throughout."""
    return svc.scale(org, name, body.min_replicas, body.max_replicas, body.scale_target,
                     body.scale_down_after_s).to_dict()


@router.post("/endpoints/{name}/start", status_code=202, response_model=schemas.StopOut, tags=["endpoints"],
             responses={422: {"model": schemas.ProblemsOut}})
def start_endpoint(name: str, org: Org, svc: Svc) -> dict[str, Any]:
    """Serve a stopped or failed endpoint again at the same URL with the same configuration
    (validated against today's checkpoint: 422 naming the problem otherwise); returns at once,
    follow `status` (pending → deploying → loading → healthy)."""
    result = svc.start(org, name)
    return {"outcome": result.outcome, "run_id": result.run_id,
            "endpoint": result.view.to_dict() if result.view else None}


@router.delete("/endpoints/{name}", response_model=schemas.StopOut, tags=["endpoints"],
               responses={202: {"model": schemas.StopOut}, 503: {"model": schemas.ProblemsOut}})
def remove_endpoint(name: str, org: Org, svc: Svc, response: Response) -> dict[str, Any]:
    """Remove the endpoint, freeing its name and URL: at once if it has ended (200), else after
    the stop flow has stopped it (202)."""
    result = svc.remove(org, name)
    if result.outcome != "removed":
        response.status_code = 202
    return {"outcome": result.outcome, "run_id": result.run_id,
            "endpoint": result.view.to_dict() if result.view else None}


@router.get("/endpoints/{name}/activity", response_model=list[schemas.ActivityOut], tags=["activity"])
def endpoint_activity(name: str, org: Org, svc: Svc,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    """Status changes with reasons, stop requests, failures and restarts, newest first."""
    ep = svc.endpoint(org, name)
    return [_event(ev, {ep.id: ep.name}) for ev in svc.activity(org, ep.id, limit)]


@router.get("/endpoints/{name}/metrics", tags=["endpoints"],
            responses={503: {"model": schemas.ProblemsOut}})
def endpoint_metrics(name: str, org: Org, svc: Svc,
                     window: Annotated[str, Query(pattern="^(15m|1h|6h|24h)$")] = "1h",
                     replica: Annotated[int | None, Query(ge=0, description=(
                         "One replica's engine and device series; the gateway's request and "
                         "error rates stay the endpoint's"))] = None) -> Any:
    """The metrics tab's series as JSON (503 when metrics or Prometheus are unavailable)."""
    ep = svc.endpoint(org, name)
    result = load_series(svc.deps.console.prometheus(), org.name, ep.name, window, ep.id, replica)
    if not result.available:
        return JSONResponse(status_code=503, content={"problems": [Problem(
            "metrics_unavailable", "", result.message, "The rest of the API keeps working.").to_dict()]})
    return {"endpoint": ep.name, "window": window, "series": result.data}


@router.get("/activity", response_model=list[schemas.ActivityOut], tags=["activity"])
def org_activity(org: Org, svc: Svc, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                 endpoint: str | None = None) -> list[dict[str, Any]]:
    """The organization's activity events, newest first (optionally for one endpoint)."""
    names = endpoint_names(svc.registry, org.id)
    return [_event(ev, names) for ev in svc.activity(org, endpoint, limit)]


# ---- checkpoints -------------------------------------------------------------------------------

@router.get("/checkpoints", response_model=list[schemas.CheckpointOut], tags=["checkpoints"])
def list_checkpoints(org: Org, svc: Svc,
                     all: Annotated[bool, Query(description="Include deleted and reclaimed")] = False,
                     ) -> list[dict[str, Any]]:
    """Your checkpoints with the endpoints holding each one (`used_by`)."""
    return [_checkpoint(row, holders) for row, holders in svc.checkpoints(org, include_deleted=all)]


@router.post("/checkpoints", status_code=201, response_model=schemas.CheckpointDetailOut,
             tags=["checkpoints"], responses={422: {"model": schemas.ProblemsOut}})
def register_checkpoint(body: schemas.RegisterCheckpointIn, org: Org, svc: Svc) -> dict[str, Any]:
    """Inspect a directory on the control plane and import it into the checkpoint store."""
    row = svc.register(org, body.path, body.name, body.base)
    return {**_checkpoint(row, []), "facts": _facts(row)}


@router.post("/checkpoints/upload", status_code=201, response_model=schemas.CheckpointDetailOut,
             tags=["checkpoints"], openapi_extra={"requestBody": UPLOAD_BODY},
             responses={413: {"model": schemas.ProblemsOut}, 422: {"model": schemas.ProblemsOut}})
async def upload_checkpoint(
    request: Request, org: Org, svc: Svc,
    name: Annotated[str, Query(description="Name for the checkpoint")],
    base: Annotated[str | None, Query(description="Base checkpoint of a LoRA adapter")] = None,
) -> dict[str, Any]:
    """Upload a checkpoint directory as a tar (or tar.gz) body, streamed to disk, unpacked
    safely (regular files and directories only) and registered; on any failure nothing stays.

    Its own size limit (`IE_CONSOLE_MAX_UPLOAD_BYTES`) applies to the body and the unpacked files.
    """
    space = await run_in_threadpool(svc.upload_space, org, name, base)  # name checks: before any byte
    with space as directory:
        await _receive(request, directory / ARCHIVE_NAME)
        row = await run_in_threadpool(svc.register_upload, org, directory, name, base)
    return {**_checkpoint(row, []), "facts": _facts(row)}


@router.get("/checkpoints/{ref}", response_model=schemas.CheckpointDetailOut, tags=["checkpoints"])
def get_checkpoint(ref: str, org: Org, svc: Svc) -> dict[str, Any]:
    row, holders = svc.checkpoint(org, ref)
    return {**_checkpoint(row, holders), "facts": _facts(row)}


@router.delete("/checkpoints/{ref}", response_model=schemas.DeleteCheckpointOut, tags=["checkpoints"])
def delete_checkpoint(ref: str, org: Org, svc: Svc) -> dict[str, Any]:
    """Delete the record now; `bytes` says whether running endpoints still hold them, and which."""
    return svc.delete_checkpoint(org, ref).to_dict()


# ---- instances and keys ------------------------------------------------------------------------

@router.get("/instances", response_model=list[schemas.InstanceOut], tags=["instances"])
def list_instances(org: Org, svc: Svc) -> list[dict[str, Any]]:
    """Instance types with memory and hourly price."""
    return [{"name": s.name, "accelerator": s.accelerator, "gpu_count": s.gpu_count,
             "memory_per_device_mib": s.memory_per_device_mib,
             "total_memory_gib": round(s.total_memory_mib / 1024, 1),
             "precisions": list(s.precisions), "quantizations": list(s.quantizations), "fp8": s.fp8,
             "price_per_hour": s.price_per_hour, "work_pool": s.work_pool, "description": s.description}
            for s in svc.registry.instances().values()]


@router.get("/keys", response_model=list[schemas.KeyOut], tags=["keys"])
def list_keys(org: Org, svc: Svc) -> list[dict[str, Any]]:
    """Your organization's keys: prefix only, never the key."""
    return [_key(k) for k in svc.keys(org)]


@router.post("/keys", status_code=201, response_model=schemas.NewKeyOut, tags=["keys"],
             responses={422: {"model": schemas.ProblemsOut}})
def create_key(body: schemas.CreateKeyIn, org: Org, svc: Svc) -> dict[str, Any]:
    """A new key, shown in this response only."""
    new = svc.create_key(org, body.name)
    return {**_key(new.key), "key": new.secret}


@router.delete("/keys/{ref}", response_model=schemas.KeyOut, tags=["keys"])
def revoke_key(ref: str, org: Org, svc: Svc) -> dict[str, Any]:
    """Revoke a key by prefix or id; the gateway refuses it within about a second."""
    return _key(svc.revoke_key(org, ref))


# ---- shapes ------------------------------------------------------------------------------------

async def _receive(request: Request, path: Path) -> None:
    """Stream the body to `path` in writes of at most WRITE_BYTES: an upload is never held in memory."""
    pending = bytearray()
    try:
        with open(path, "wb") as out:
            async for chunk in request.stream():
                pending += chunk
                if len(pending) >= WRITE_BYTES:
                    await run_in_threadpool(out.write, bytes(pending))
                    pending.clear()
            if pending:
                await run_in_threadpool(out.write, bytes(pending))
    except OSError as exc:  # the caller's upload directory is removed by `upload_space`
        if is_disk_full(exc):
            raise StorageFull("the drop folder", str(exc)) from None
        raise


def _create_input(body: schemas.CreateEndpointIn) -> CreateInput:
    return CreateInput(CreateRequest(body.name, body.checkpoint, body.instance, body.max_context,
                                     body.precision, body.quantization), body.idle_stop_minutes,
                       body.min_replicas, body.max_replicas, body.scale_target, body.scale_down_after_s)


def _event(ev: ActivityEvent, names: dict[str, str]) -> dict[str, Any]:
    return {"id": ev.id, "endpoint_id": ev.endpoint_id, "endpoint": names.get(ev.endpoint_id), "at": ev.at,
            "kind": ev.kind, "from_status": ev.from_status, "to_status": ev.to_status,
            "reason_code": ev.reason_code, "message": ev.message}


def _holder(h: LeaseHolder) -> dict[str, Any]:
    return {"endpoint": h.endpoint_name, "endpoint_id": h.endpoint_id,
            "endpoint_status": h.endpoint_status, "serve_run": h.flow_run_id}


def _checkpoint(row: Checkpoint, holders: list[LeaseHolder]) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "kind": row.kind, "base_model": row.base_model,
            "base_checkpoint_id": row.base_checkpoint_id, "size_bytes": row.size_bytes,
            "digest": row.digest, "architecture": row.architecture, "status": row.status,
            "created_at": row.created_at, "deleted_at": row.deleted_at, "reclaimed_at": row.reclaimed_at,
            "used_by": [_holder(h) for h in holders]}


def _facts(row: Checkpoint) -> dict[str, Any]:
    facts: dict[str, Any] = json.loads(row.facts_json)
    return facts


def _key(k: ApiKey) -> dict[str, Any]:
    return {"id": k.id, "name": k.name, "prefix": k.prefix, "created_at": k.created_at,
            "revoked_at": k.revoked_at}
