"""The console's HTML pages: server-rendered, with htmx fragments for live parts.

Pages call the same service as the REST API (the console runs on the control
plane). Fragments (`/_…` paths) re-render one region: the endpoints table, an
endpoint's status, the create form's inline validation, the metrics tab.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from inference_endpoints.adapters.console.examples import examples
from inference_endpoints.adapters.console.metrics_tab import WINDOWS, load_series
from inference_endpoints.adapters.console.queries import session_key_hash
from inference_endpoints.adapters.console.service import (
    ConsoleService,
    NotFound,
    Unavailable,
)
from inference_endpoints.adapters.console.views import CHANGING, EndpointView
from inference_endpoints.adapters.console.web import (
    check_csrf,
    context,
    flash,
    is_htmx,
    page_org,
    page_service,
    sign_in,
    sign_out,
)
from inference_endpoints.core.cost import HOURS_PER_MONTH, RunningCost, hourly_burn
from inference_endpoints.core.errors import Problem, RequestInvalid
from inference_endpoints.core.status import Precision
from inference_endpoints.persistence.models import Organization
from inference_endpoints.services.replicas import replica_rows

Svc = Annotated[ConsoleService, Depends(page_service)]
Org = Annotated[Organization, Depends(page_org)]
Csrf = Depends(check_csrf)
Field = Annotated[str, Form()]
STATUS_FILTERS = {"all": [], "ended": ["stopped", "failed"],
                  "active": ["pending", "deploying", "loading", "healthy", "unhealthy", "stopping"]}
PAGE_SIZE = 50

router = APIRouter(include_in_schema=False)


def render(request: Request, template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    response: HTMLResponse = request.app.state.templates.TemplateResponse(
        request, template, context(request, **values), status_code=status_code)
    return response


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# ---- sign-in -----------------------------------------------------------------------------------

@router.get("/signin")
def signin_page(request: Request, next: str = "/endpoints") -> HTMLResponse:
    return render(request, "signin.html", next=_safe_next(next), error=None)


@router.post("/signin", dependencies=[Csrf])
def signin(request: Request, svc: Svc, api_key: Annotated[str, Form()] = "",
           next: Annotated[str, Form()] = "/endpoints") -> Response:
    org = svc.registry.org_for_key(api_key.strip()) if api_key.strip() else None
    if org is None:
        return render(request, "signin.html", 401, next=_safe_next(next),
                      error="That key is not a valid organization API key (unknown or revoked).")
    sign_in(request, session_key_hash(api_key.strip()))
    return redirect(_safe_next(next))


@router.post("/signout", dependencies=[Csrf])
def signout(request: Request) -> Response:
    sign_out(request)
    return redirect("/signin")


def _safe_next(target: str) -> str:
    """Only local paths: a sign-in link must not bounce the user to another site."""
    return target if target.startswith("/") and not target.startswith("//") else "/endpoints"


# ---- endpoints list ----------------------------------------------------------------------------

@router.get("/")
def home() -> Response:
    return redirect("/endpoints")


def _list_context(svc: ConsoleService, org: Organization, show: str, page: int) -> dict[str, Any]:
    show = show if show in STATUS_FILTERS else "all"
    views, total = svc.list_endpoints(org, STATUS_FILTERS[show], limit=PAGE_SIZE,
                                      offset=max(0, page - 1) * PAGE_SIZE)
    everything = svc.all_views(org) if total else []
    return {"endpoints": views, "total": total, "show": show, "page": page,
            "pages": max(1, -(-total // PAGE_SIZE)),
            "changing": any(v.changing for v in views),
            "cost_total": svc.org_spend(org),
            "burn": hourly_burn(v.cost for v in everything),
            "gateway_down": bool(views) and all(v.traffic is None for v in views),
            "idle_minutes": svc.deps.console.idle_threshold_minutes}


@router.get("/endpoints")
def endpoints_page(request: Request, org: Org, svc: Svc, show: str = "all", page: int = 1) -> HTMLResponse:
    return render(request, "endpoints.html", **_list_context(svc, org, show, max(1, page)))


@router.get("/endpoints/_table")
def endpoints_table(request: Request, org: Org, svc: Svc, show: str = "all", page: int = 1) -> HTMLResponse:
    return render(request, "_endpoints_table.html", fragment=True,
                  **_list_context(svc, org, show, max(1, page)))


@router.post("/endpoints/{name}/stop", dependencies=[Csrf])
def stop(request: Request, name: str, org: Org, svc: Svc, show: str = "all") -> Response:
    return _stop_or_remove(request, svc, org, name, remove=False, show=show)


@router.post("/endpoints/{name}/start", dependencies=[Csrf])
def start(request: Request, name: str, org: Org, svc: Svc) -> Response:
    try:
        svc.start(org, name)
        flash(request, "ok", f"Starting {name} again at the same URL.")
    except (NotFound, RequestInvalid) as exc:
        flash(request, "error", error_text(exc))
    return redirect(f"/endpoints/{name}")


@router.post("/endpoints/{name}/remove", dependencies=[Csrf])
def remove(request: Request, name: str, org: Org, svc: Svc, show: str = "all") -> Response:
    return _stop_or_remove(request, svc, org, name, remove=True, show=show)


def _stop_or_remove(request: Request, svc: ConsoleService, org: Organization, name: str, *,
                    remove: bool, show: str) -> Response:
    try:
        result = svc.remove(org, name) if remove else svc.stop(org, name)
        text = {"removed": f"Removed {name}; its name and URL are free.",
                "removing": f"Stopping {name}; it is removed once the engine is gone.",
                "stopping": f"Stopping {name}; its checkpoint is released once the engine is gone."
                }.get(result.outcome, f"{name} is {result.outcome}.")
        flash(request, "ok", text)
    except (Unavailable, NotFound, RequestInvalid) as exc:
        flash(request, "error", error_text(exc))
    if is_htmx(request):
        return render(request, "_endpoints_table.html", fragment=True, **_list_context(svc, org, show, 1))
    back = request.headers.get("referer", "")
    return redirect(f"/endpoints/{name}" if f"/endpoints/{name}" in back and not remove else "/endpoints")


# ---- detail ------------------------------------------------------------------------------------

def _detail_context(svc: ConsoleService, org: Organization, name: str) -> dict[str, Any]:
    ep = svc.endpoint(org, name)
    view: EndpointView = svc.views(org, [ep])[0]
    return {"ep": view, "row": ep, "activity": svc.activity(org, ep.id, 30),
            "phases": _phases(ep.status, ep), "changing": view.changing}


def _phases(status: str, ep: Any) -> list[dict[str, Any]]:
    order = ["pending", "deploying", "loading", "healthy"]
    reached = {"pending": ep.created_at, "deploying": ep.scheduled_at, "loading": ep.loading_at,
               "healthy": ep.healthy_at}
    current = order.index(status) if status in order else None
    steps = []
    for i, step in enumerate(order):
        state = "todo"
        if reached[step] is not None or (current is not None and i < current):
            state = "done"
        if current is not None and i == current and step != "healthy":
            state = "current"
        steps.append({"name": step, "state": state, "at": reached[step]})
    return steps


@router.get("/endpoints/{name}")
def endpoint_page(request: Request, name: str, org: Org, svc: Svc, tab: str = "overview",
                  window: str = "1h", lines: int = 100, replica: int | None = None) -> HTMLResponse:
    try:
        ctx = _detail_context(svc, org, name)
    except NotFound as exc:
        return render(request, "error.html", 404, title="Not found", message=exc.problem.message)
    row = ctx["row"]
    view: EndpointView = ctx["ep"]
    return render(request, "endpoint.html", tab=tab if tab in ("metrics", "logs") else "overview",
                  log_lines=lines, log_replica=replica,
                  window=window if window in WINDOWS else "1h", windows=WINDOWS,
                  config=svc.serving_config(row),
                  effective=svc.effective_values(row) if view.status in ("healthy", "unhealthy") else None,
                  examples=examples(view.path_url, view.model),
                  host_examples=examples(view.url, view.model),
                  base_domain=svc.deps.settings.base_domain,
                  replica_runs=replica_rows(svc.registry, row), hours_per_month=HOURS_PER_MONTH,
                  running=RunningCost(view.cost.price_per_hour, int(view.replicas["wanted"])),
                  instance_names=sorted(svc.registry.instances()),
                  precisions=[p.value for p in Precision], **ctx)


@router.post("/endpoints/{name}/scale", dependencies=[Csrf])
def scale(request: Request, name: str, org: Org, svc: Svc,
          min_replicas: Annotated[str, Form()] = "", max_replicas: Annotated[str, Form()] = "",
          scale_target: Annotated[str, Form()] = "") -> Response:
    try:
        low, high = form_whole(min_replicas), form_whole(max_replicas) if max_replicas.strip() else None
        target = form_number(scale_target) if scale_target.strip() else None
        view = svc.scale(org, name, low, high, target)
        flash(request, "ok", f"{name}: {view.replicas['wanted']} replica(s) wanted "
                             f"({view.replicas['min']} to {view.replicas['max']}).")
    except (NotFound, RequestInvalid) as exc:
        flash(request, "error", error_text(exc))
    return redirect(f"/endpoints/{name}")


def form_whole(text: str) -> int | str:
    """A form's whole number, or the text itself for the validator to name."""
    try:
        return int(text.strip())
    except ValueError:
        return text


def form_number(text: str) -> float | str:
    try:
        return float(text.strip())
    except ValueError:
        return text


@router.get("/endpoints/{name}/_status")
def endpoint_status(request: Request, name: str, org: Org, svc: Svc, seen: str = "") -> Response:
    try:
        ctx = _detail_context(svc, org, name)
    except NotFound:
        return Response(status_code=200, headers={"HX-Redirect": "/endpoints"})
    view: EndpointView = ctx["ep"]
    if seen and seen != view.status and seen in CHANGING and view.status not in CHANGING:
        # It settled (healthy, stopped, failed): reload once so every section is current.
        return Response(status_code=200, headers={"HX-Refresh": "true"})
    return render(request, "_endpoint_status.html", **ctx)


@router.get("/endpoints/{name}/_metrics")
def endpoint_metrics(request: Request, name: str, org: Org, svc: Svc, window: str = "1h",
                     replica: int | None = None) -> HTMLResponse:
    """The metrics tab; `replica` narrows the engine and device charts to that replica's."""
    ep = svc.endpoint(org, name)
    window = window if window in WINDOWS else "1h"
    result = load_series(svc.deps.console.prometheus(), org.name, ep.name, window, ep.id, replica)
    slots = sorted({int(r["replica"]) for r in replica_rows(svc.registry, ep)})
    return render(request, "_metrics.html", result=result, window=window, windows=WINDOWS, name=ep.name,
                  replica=replica, replica_slots=slots)


@router.post("/endpoints/{name}/idle-stop", dependencies=[Csrf])
def idle_stop(request: Request, name: str, org: Org, svc: Svc,
              idle_stop_minutes: Field = "") -> Response:
    try:
        view = svc.set_idle_stop(org, name, idle_stop_minutes.strip())
        flash(request, "ok", f"Idle auto-stop after {view.idle_stop_minutes} min." if view.idle_stop_minutes
              else "Idle auto-stop is off.")
    except (RequestInvalid, NotFound) as exc:
        flash(request, "error", error_text(exc))
    return redirect(f"/endpoints/{name}")


# ---- checkpoints -------------------------------------------------------------------------------

ECHO_CHARS = 8192


def _checkpoints_context(svc: ConsoleService, org: Organization, show_all: bool,
                         answer: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"rows": svc.checkpoints(org, include_deleted=show_all), "show_all": show_all, "answer": answer,
            "roots": [root for root in svc.import_roots(org) if root.usable]}


@router.get("/checkpoints")
def checkpoints_page(request: Request, org: Org, svc: Svc,
                     all: Annotated[bool, Query()] = False) -> HTMLResponse:
    return render(request, "checkpoints.html", register_values={}, register_errors=[],
                  **_checkpoints_context(svc, org, all))


@router.post("/checkpoints/{ref}/delete", dependencies=[Csrf])
def delete_checkpoint(request: Request, ref: str, org: Org, svc: Svc, all: bool = False) -> Response:
    try:
        answer = svc.delete_checkpoint(org, ref).to_dict()
    except (NotFound, RequestInvalid) as exc:
        answer = {"message": error_text(exc), "held_by": [], "bytes": "error"}
    ctx = _checkpoints_context(svc, org, all, answer)
    if is_htmx(request):
        return render(request, "_checkpoints_table.html", **ctx)
    return render(request, "checkpoints.html", register_values={}, register_errors=[], **ctx)


@router.post("/checkpoints/register", dependencies=[Csrf])
def register_checkpoint(request: Request, org: Org, svc: Svc, path: Field = "", name: Field = "",
                        base: Field = "") -> Response:
    try:
        row = svc.register(org, path.strip(), name.strip(), base.strip() or None)
    except RequestInvalid as exc:
        # An over-long value is not sent back whole.
        values = {"path": path[:ECHO_CHARS], "name": name[:ECHO_CHARS], "base": base[:ECHO_CHARS]}
        return render(request, "checkpoints.html", 422, register_values=values,
                      register_errors=exc.problems, **_checkpoints_context(svc, org, False))
    flash(request, "ok", f"Registered {row.name} ({row.id}, {row.kind}).")
    return redirect("/checkpoints")


# ---- keys --------------------------------------------------------------------------------------

@router.get("/keys")
def keys_page(request: Request, org: Org, svc: Svc) -> HTMLResponse:
    return render(request, "keys.html", keys=svc.keys(org), new_key=None, errors=[])


@router.post("/keys", dependencies=[Csrf])
def create_key(request: Request, org: Org, svc: Svc, name: Field = "") -> HTMLResponse:
    try:
        new = svc.create_key(org, name)
    except RequestInvalid as exc:
        return render(request, "keys.html", 422, keys=svc.keys(org), new_key=None, errors=exc.problems)
    # Rendered directly (not via a redirect and the session) so the key is never stored anywhere.
    return render(request, "keys.html", keys=svc.keys(org), new_key=new, errors=[])


@router.post("/keys/{ref}/revoke", dependencies=[Csrf])
def revoke_key(request: Request, ref: str, org: Org, svc: Svc) -> Response:
    try:
        row = svc.revoke_key(org, ref)
        flash(request, "ok", f"Revoked {row.prefix} ({row.name}).")
    except NotFound as exc:
        flash(request, "error", error_text(exc))
    return redirect("/keys")


def error_text(exc: Exception) -> str:
    """What a flash says for a refused action: every problem's message, or the error's own."""
    if isinstance(exc, RequestInvalid):
        return "; ".join(p.message for p in exc.problems)
    problem = getattr(exc, "problem", None)
    return problem.message if isinstance(problem, Problem) else str(exc)

