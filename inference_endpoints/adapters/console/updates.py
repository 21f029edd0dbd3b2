"""Update on the endpoint page and in the REST API: a new max context, precision or instance.

The same path as `endpoints update` (`services.replacements`): validated like a create, each
bad field named and nothing written, then a candidate serve run recorded and a reconcile pass
submitted. The reconciler brings it up beside the old engine, switches the stable URL once it
generates, then drains and stops the old one, so callers see no errors.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from inference_endpoints.adapters.console import api, schemas
from inference_endpoints.adapters.console.orchestrator import SubmitError
from inference_endpoints.adapters.console.pages import Csrf, Org, Svc, error_text, redirect
from inference_endpoints.adapters.console.service import ConsoleService, NotFound, Unavailable
from inference_endpoints.adapters.console.views import EndpointView
from inference_endpoints.adapters.console.web import flash
from inference_endpoints.core.errors import RequestInvalid
from inference_endpoints.persistence.models import Organization
from inference_endpoints.services.replacements import plan_update, record_replacement

router = APIRouter()


class UpdateIn(BaseModel):
    """Only the fields to change; at least one."""

    max_context: Any = Field(default=None, description="New maximum context length in tokens")
    precision: Any = Field(default=None, description="auto, bfloat16, float16 or float32")
    instance: Any = Field(default=None, description="New instance type (GET /api/v1/instances)")


def update(svc: ConsoleService, org: Organization, ref: str, changes: UpdateIn) -> tuple[EndpointView, str]:
    """Record the replacement and kick the reconciler; (the endpoint, what changes)."""
    ep = svc.endpoint(org, ref)
    plan = plan_update(ep, max_context=changes.max_context, precision=changes.precision,
                       instance=changes.instance)
    try:
        record_replacement(svc.registry, ep, plan.request, None, plan.changes,
                           svc.deps.orchestrator.model_root_for)
    except SubmitError as exc:  # the engine host's settings live in Prefect
        raise Unavailable(str(exc), "Start the stack (`endpoints up`) and try again. Nothing was changed.") \
            from exc
    with contextlib.suppress(SubmitError):  # Prefect away: the scheduled pass brings it up
        svc.deps.orchestrator.submit_reconcile()
    return svc.view(org, ep.id), plan.changes


@router.post("/endpoints/{name}/update", dependencies=[Csrf], include_in_schema=False)
def update_page(request: Request, name: str, org: Org, svc: Svc,
                max_context: Annotated[str, Form()] = "", precision: Annotated[str, Form()] = "",
                instance: Annotated[str, Form()] = "") -> Response:
    """The page's Update form sends every field; only those that differ are changes."""
    try:
        ep = svc.endpoint(org, name)
        given = UpdateIn(
            max_context=max_context.strip() if max_context.strip() not in ("", str(ep.max_context)) else None,
            precision=precision if precision not in ("", ep.precision) else None,
            instance=instance if instance not in ("", ep.instance) else None)
        _view, changes = update(svc, org, name, given)
        flash(request, "ok", f"Updating {name} ({changes}): a new engine starts beside the current one; "
                             "the URL switches once it generates.")
    except (NotFound, RequestInvalid, Unavailable) as exc:
        flash(request, "error", error_text(exc))
    return redirect(f"/endpoints/{name}")


@router.post("/api/v1/endpoints/{name}/update", status_code=202, response_model=schemas.EndpointOut,
             tags=["endpoints"], responses={**api.ERRORS, 422: {"model": schemas.ProblemsOut},
                                            503: {"model": schemas.ProblemsOut}})
def update_api(name: str, body: UpdateIn, org: api.Org, svc: api.Svc) -> dict[str, Any]:
    """Change max context, precision or instance with a rolling replacement (422 names each bad
    field, nothing written). Answers 202 at once; the endpoint keeps serving its current engine
    until the new one generates, then switches (its `serving` and `instance` then show the new
    values; `activity` tells the progress)."""
    view, _changes = update(svc, org, name, body)
    return view.to_dict()
