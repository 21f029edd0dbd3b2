"""Recording a rolling replacement: a candidate serve run with new settings, validated like a create.

One path for `endpoints update`, the console's Update form and `on-finetune-completed`: the
request is validated (nothing is written on a bad value), rendered for the next generation on
the instance it asks for, and recorded as a guarded candidate. The reconciler brings it up,
switches the stable URL once it generates, then drains and stops the old run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from inference_endpoints.core.catalog import InstanceSpec
from inference_endpoints.core.errors import RequestInvalid
from inference_endpoints.core.lifecycle import Purpose, Role
from inference_endpoints.core.serving_config import render
from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.core.validation import CreateRequest, validate_create
from inference_endpoints.persistence.models import Endpoint, ServeRun
from inference_endpoints.persistence.registry import Registry


class ModelRoot(Protocol):
    def __call__(self, runtime: str, endpoint_id: str, generation: int = 0) -> str:
        """Where the endpoint's checkpoints appear to the engines of one pool."""
        ...


ModelRootFor = Callable[[InstanceSpec], ModelRoot]


@dataclass(frozen=True)
class UpdatePlan:
    request: CreateRequest
    changes: str  # "max context 4096, instance t4-16gb": for messages and the activity log


def plan_update(ep: Endpoint, *, max_context: object = None, precision: object = None,
                instance: object = None) -> UpdatePlan:
    """The endpoint's own request with the given fields changed; RequestInvalid when nothing
    changes or the endpoint cannot be replaced in place. Values are validated by `record`."""
    given = {k: v for k, v in (("max context", max_context), ("precision", precision),
                               ("instance", instance)) if v not in (None, "")}
    if not given:
        raise RequestInvalid.single("nothing_to_update", "max_context",
                                    "Nothing to change: give a new max context, precision or instance.",
                                    f"e.g. endpoints update {ep.name} --max-context 4096")
    if ep.status != EndpointStatus.HEALTHY:
        raise RequestInvalid.single("endpoint_not_healthy", "endpoint",
                                    f"Endpoint {ep.name} is {ep.status}; only a healthy endpoint can "
                                    "be updated in place.",
                                    f"Wait until it is healthy, or `endpoints start {ep.name}` it first.")
    request = CreateRequest(ep.name, ep.checkpoint_id, given.get("instance", ep.instance),
                            given.get("max context", ep.max_context),
                            given.get("precision", ep.precision), ep.quantization)
    return UpdatePlan(request, ", ".join(f"{k} {v}" for k, v in given.items()))


def record_replacement(registry: Registry, endpoint: Endpoint, request: CreateRequest,
                       requested_by: str | None, what: str, model_root_for: ModelRootFor) -> ServeRun:
    """Validate `request` as a create (the name is the endpoint's own), render it for the next
    generation on its instance and record the candidate; raises `RequestInvalid` naming each
    problem, with nothing written."""
    if endpoint.status != EndpointStatus.HEALTHY or endpoint.live_run is None:
        raise RequestInvalid.single("endpoint_not_healthy", "endpoint",
                                    f"Endpoint {endpoint.name} is {endpoint.status}; only a healthy "
                                    "endpoint can be replaced in place.",
                                    "Wait until it is healthy (`endpoints show`), or create a new endpoint.")
    view = registry.checkpoint_view(endpoint.org_id, request.checkpoint)
    validated = validate_create(request, checkpoint=view, name_taken=False, instances=registry.instances())
    instance = validated.instance
    generation = max((r.generation for r in registry.runs.of(endpoint.id)), default=0) + 1
    root = model_root_for(instance)(instance.runtime, endpoint.id, generation)
    spec = render(validated, model_root=root, api_key=endpoint.backend_api_key or "")
    candidate = registry.runs.add_run(endpoint.id, Role.CANDIDATE, Purpose.REPLACE,
                                      expected_live=endpoint.live_run, checkpoint_id=validated.checkpoint.id,
                                      config_json=spec.to_json(), requested_by=requested_by,
                                      max_context=validated.max_context, precision=validated.precision,
                                      instance=instance.name)
    if candidate is None:
        raise RequestInvalid.single("endpoint_changed", "endpoint",
                                    f"{endpoint.name} changed meanwhile, or is already being replaced.",
                                    "Wait for the replacement under way (`endpoints show`), then try again.")
    registry.record_activity(endpoint.id, "replacing", f"bringing up {what} as serve run {candidate.id}")
    return candidate
