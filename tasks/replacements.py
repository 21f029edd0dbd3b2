"""A rolling replacement: record a candidate serve run with a new checkpoint or serving settings,
then follow the reconciler while it brings it up, switches the stable URL and drains the old run.

Used by `on-finetune-completed` (a new checkpoint) and `endpoints update` (new max context,
precision or instance). Only the recording happens here; if the caller dies, the scheduled reconcile
carries on, and a stop meanwhile stops the candidate with the endpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from inference_endpoints.core.validation import CreateRequest
from inference_endpoints.persistence.models import Endpoint, ServeRun
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.services.replacements import record_replacement as record
from tasks.context import engine_model_root
from tasks.orchestration import reconcile_now


def record_replacement(registry: Registry, endpoint: Endpoint, request: CreateRequest,
                       requested_by: str | None, what: str) -> ServeRun:
    """`services.replacements.record_replacement` with this pool's engine host."""
    return record(registry, endpoint, request, requested_by, what, engine_model_root)


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
