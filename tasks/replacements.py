"""A rolling replacement: record a candidate serve run with a new checkpoint or serving settings,
then follow the reconciler while it brings it up, switches the stable URL and drains the old run.

Used by `on-finetune-completed` (a new checkpoint) and `endpoints update` (new max context or
precision). Only the recording happens here; if the caller dies, the scheduled reconcile
carries on, and a stop meanwhile stops the candidate with the endpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from inference_endpoints.core.errors import RequestInvalid
from inference_endpoints.core.lifecycle import Purpose, Role
from inference_endpoints.core.serving_config import render
from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.core.validation import CreateRequest, validate_create
from inference_endpoints.persistence.models import Endpoint, ServeRun
from inference_endpoints.persistence.registry import Registry
from tasks.context import load_engine_host
from tasks.orchestration import reconcile_now


def record_replacement(registry: Registry, endpoint: Endpoint, request: CreateRequest,
                       requested_by: str | None, what: str) -> ServeRun:
    """Validate `request` as a create (the name is the endpoint's own), render it for the next
    generation and record the candidate; raises `RequestInvalid` naming each problem, with
    nothing written."""
    if endpoint.status != EndpointStatus.HEALTHY or endpoint.live_run is None:
        raise RequestInvalid.single("endpoint_not_healthy", "endpoint",
                                    f"Endpoint {endpoint.name} is {endpoint.status}; only a healthy "
                                    "endpoint can be replaced in place.",
                                    "Wait until it is healthy (`endpoints show`), or create a new endpoint.")
    view = registry.checkpoint_view(endpoint.org_id, request.checkpoint)
    validated = validate_create(request, checkpoint=view, name_taken=False, instances=registry.instances())
    instance = validated.instance
    host = load_engine_host(instance.work_pool)
    generation = max((r.generation for r in registry.runs.of(endpoint.id)), default=0) + 1
    spec = render(validated, model_root=host.model_root(instance.runtime, endpoint.id, generation),
                  api_key=endpoint.backend_api_key or "")
    candidate = registry.runs.add_run(endpoint.id, Role.CANDIDATE, Purpose.REPLACE,
                                      expected_live=endpoint.live_run, checkpoint_id=validated.checkpoint.id,
                                      config_json=spec.to_json(), requested_by=requested_by,
                                      max_context=validated.max_context, precision=validated.precision)
    if candidate is None:
        raise RequestInvalid.single("endpoint_changed", "endpoint",
                                    f"{endpoint.name} changed meanwhile, or is already being replaced.",
                                    "Wait for the replacement under way (`endpoints show`), then try again.")
    registry.record_activity(endpoint.id, "replacing", f"bringing up {what} as serve run {candidate.id}")
    return candidate


def follow_replacement(registry: Registry, endpoint: Endpoint, candidate: ServeRun, timeout_s: float,
                       log: Callable[[str], None], progress: Callable[[str], None] = lambda _line: None
                       ) -> bool:
    """Kick the reconciler until the candidate serves and the old run has ended and, one pass
    later, released its leases (True), or it was abandoned (raises RuntimeError); False if still
    under way after `timeout_s`. Waiting for the scheduled pass instead could take a minute."""
    old_live = endpoint.live_run
    deadline = time.monotonic() + timeout_s
    old_ended_seen = False
    while time.monotonic() < deadline:
        try:
            reconcile_now(registry, [endpoint.id], log=log)
        except Exception as exc:  # Prefect hiccup: the next kick, or the scheduled pass, retries
            log(f"reconcile for {endpoint.name} deferred: {exc}")
        current = registry.get_endpoint(endpoint.id)
        old = registry.runs.get(old_live) if old_live else None
        if current is None or (current.live_run != candidate.id and current.candidate_run != candidate.id):
            raise RuntimeError(f"the replacement for {endpoint.name} did not become ready; "
                               "the endpoint keeps serving as before")
        run = registry.runs.get(candidate.id)
        phase = ("serving; draining the old engine" if current.live_run == candidate.id
                 else "loading" if run and run.engine_started_at else "waiting for a worker")
        progress(phase)
        if current.live_run == candidate.id and (old is None or old.ended_at is not None):
            if old_ended_seen:  # the pass after its end released its leases: nothing is left of it
                return True
            old_ended_seen = True
            continue
        time.sleep(0.5)
    return False
