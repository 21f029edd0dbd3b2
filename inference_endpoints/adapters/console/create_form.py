"""The console's create form: inline validation as the user types, the fit and cost estimate, submit.

Its routes are included before the pages' `/endpoints/{name}`, so `/endpoints/new` is this
form and never an endpoint named "new".
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from inference_endpoints.adapters.console.pages import (
    Csrf,
    Field,
    Org,
    Svc,
    form_whole,
    redirect,
    render,
)
from inference_endpoints.adapters.console.service import (
    ConsoleService,
    CreateInput,
    Unavailable,
    Validation,
)
from inference_endpoints.adapters.console.web import flash
from inference_endpoints.core.catalog import InstanceSpec
from inference_endpoints.core.cost import HOURS_PER_MONTH, RunningCost
from inference_endpoints.core.errors import Problem, RequestInvalid
from inference_endpoints.core.instance_choice import cheapest_fitting_instance
from inference_endpoints.core.replica_counts import MAX_REPLICAS
from inference_endpoints.core.status import Precision, Quantization
from inference_endpoints.core.validation import (
    DEFAULT_INSTANCE,
    DEFAULT_MAX_CONTEXT,
    CreateRequest,
    parse_max_context,
)
from inference_endpoints.persistence.models import Organization

FORM_FIELDS = ("name", "checkpoint", "instance", "max_context", "precision", "quantization",
               "idle_stop_minutes", "min_replicas", "max_replicas")

router = APIRouter(include_in_schema=False)


def _form_context(svc: ConsoleService, org: Organization, values: dict[str, Any],
                  result: Validation | None) -> dict[str, Any]:
    errors: dict[str, list[Problem]] = {}
    other: list[Problem] = []
    for p in result.problems if result else []:
        (errors.setdefault(p.field, []) if p.field in FORM_FIELDS else other).append(p)
    checkpoints = [row for row, _ in svc.checkpoints(org)]
    instances = svc.registry.instances()
    return {"values": values, "errors": errors, "other_errors": other,
            "fit_rows": result.fit_rows if result else [], "fits": bool(result and result.fit and
                                                                        result.fit.fits),
            "checked": result is not None, "ok": bool(result and result.ok),
            "checkpoints": checkpoints, "instances": list(instances.values()),
            "precisions": [p.value for p in Precision], "quantizations": [q.value for q in Quantization],
            "fields": FORM_FIELDS, **cost_estimate(instances.get(values["instance"]), values),
            **cheapest_choice(svc, org, values, instances)}


def cheapest_choice(svc: ConsoleService, org: Organization, values: dict[str, Any],
                    instances: dict[str, InstanceSpec]) -> dict[str, Any]:
    """The fit panel's "use the cheapest instance that fits", once the checkpoint, max context,
    precision and quantization can be checked (whatever the instance chosen)."""
    checkpoint = svc.registry.checkpoint_view(org.id, values.get("checkpoint"))
    max_context, problems = parse_max_context(values.get("max_context"))
    precision, quantization = values.get("precision") or "auto", values.get("quantization") or "none"
    if checkpoint is None or max_context is None or problems or precision not in set(Precision) \
            or quantization not in set(Quantization):
        return {"cheapest": None, "cheapest_checked": False}
    cheapest = cheapest_fitting_instance(checkpoint, instances, max_context, precision, quantization)
    return {"cheapest": cheapest, "cheapest_checked": True}


def cost_estimate(instance: InstanceSpec | None, values: dict[str, Any]) -> dict[str, Any]:
    """The price of what the form would start: min replicas, and max when it autoscales."""
    if instance is None:
        return {"hours_per_month": HOURS_PER_MONTH, "estimate": None, "estimate_max": None}
    low, high = form_whole(values["min_replicas"] or "1"), form_whole(values["max_replicas"] or "0")
    low = low if isinstance(low, int) and 1 <= low <= MAX_REPLICAS else 1
    most = high if isinstance(high, int) and low < high <= MAX_REPLICAS else None
    return {"hours_per_month": HOURS_PER_MONTH, "estimate": RunningCost(instance.price_per_hour, low),
            "estimate_max": RunningCost(instance.price_per_hour, most) if most else None}


def _form_input(values: dict[str, Any]) -> CreateInput:
    high = values["max_replicas"]
    return CreateInput(CreateRequest(values["name"], values["checkpoint"], values["instance"],
                                     values["max_context"], values["precision"], values["quantization"]),
                       values["idle_stop_minutes"], form_whole(values["min_replicas"] or "1"),
                       form_whole(high) if high else None)


def _values(name: str, checkpoint: str, instance: str, max_context: str, precision: str,
            quantization: str, idle_stop_minutes: str, min_replicas: str = "1",
            max_replicas: str = "") -> dict[str, Any]:
    return {"name": name.strip(), "checkpoint": checkpoint, "instance": instance,
            "max_context": max_context.strip(), "precision": precision, "quantization": quantization,
            "idle_stop_minutes": idle_stop_minutes.strip(), "min_replicas": min_replicas.strip(),
            "max_replicas": max_replicas.strip()}


@router.get("/endpoints/new")
def new_endpoint_page(request: Request, org: Org, svc: Svc, checkpoint: str = "") -> HTMLResponse:
    values = _values("", checkpoint, DEFAULT_INSTANCE, str(DEFAULT_MAX_CONTEXT), "auto", "none", "")
    ctx = _form_context(svc, org, values, None)
    if not checkpoint and ctx["checkpoints"]:
        values["checkpoint"] = ctx["checkpoints"][-1].id  # the newest one
    return render(request, "new_endpoint.html", **ctx)


@router.post("/endpoints/new/validate", dependencies=[Csrf])
def validate_fragment(request: Request, org: Org, svc: Svc, name: Field = "", checkpoint: Field = "",
                      instance: Field = "", max_context: Field = "", precision: Field = "auto",
                      quantization: Field = "none", idle_stop_minutes: Field = "",
                      min_replicas: Field = "1", max_replicas: Field = "") -> HTMLResponse:
    values = _values(name, checkpoint, instance, max_context, precision, quantization, idle_stop_minutes,
                     min_replicas, max_replicas)
    result = svc.validate(org, _form_input(values))
    return render(request, "_validation.html", **_form_context(svc, org, values, result))


@router.post("/endpoints/new", dependencies=[Csrf])
def create(request: Request, org: Org, svc: Svc, name: Field = "", checkpoint: Field = "",
           instance: Field = "", max_context: Field = "", precision: Field = "auto",
           quantization: Field = "none", idle_stop_minutes: Field = "",
           min_replicas: Field = "1", max_replicas: Field = "", idempotency_key: Field = "") -> Response:
    values = _values(name, checkpoint, instance, max_context, precision, quantization, idle_stop_minutes,
                     min_replicas, max_replicas)
    try:
        view = svc.create(org, _form_input(values), idempotency_key or None)
    except RequestInvalid as exc:
        result = svc.validate(org, _form_input(values))
        if result.ok:  # e.g. the name was taken between the check and the write
            result = Validation(exc.problems, None, [], None)
        return render(request, "new_endpoint.html", 422, **_form_context(svc, org, values, result))
    except Unavailable as exc:
        ctx = _form_context(svc, org, values, None)
        ctx["other_errors"] = [exc.problem]
        return render(request, "new_endpoint.html", 503, **ctx)
    flash(request, "ok", f"Creating {view.name}: this page follows it until it is healthy.")
    return redirect(f"/endpoints/{view.name}")


