"""Put an endpoint in a status the way production does: by recording serve-run facts and intents.

Tests of the gateway, discovery, console and collector need endpoints that are healthy,
unhealthy or stopped; nothing writes a status directly, so neither do they.
"""

from __future__ import annotations

from inference_endpoints.core.lifecycle import Purpose, Role
from inference_endpoints.core.status import EndpointStatus, ReasonCode
from inference_endpoints.persistence.models import utcnow
from inference_endpoints.persistence.registry import Registry

S = EndpointStatus


def put_status(registry: Registry, endpoint_id: str, status: EndpointStatus,
               backend_url: str | None = None, reason: ReasonCode = ReasonCode.ENGINE_EXITED) -> str:
    """Record the facts that derive `status` for the endpoint's live run; returns the status."""
    runs = registry.runs
    ep = registry.get_endpoint(endpoint_id)
    assert ep is not None
    hand_made_url = ep.backend_url  # a hand-inserted row's address, before its run takes over
    if ep.live_run is None:  # a row a test inserted by hand: give it its first serve run
        added = runs.add_run(endpoint_id, Role.LIVE, Purpose.START, expected_live=None)
        assert added is not None
        ep = registry.get_endpoint(endpoint_id)
        assert ep is not None
    assert ep.live_run is not None
    run = runs.get(ep.live_run)
    assert run is not None
    if status in (S.DEPLOYING, S.LOADING, S.HEALTHY, S.UNHEALTHY) and run.flow_run_id is None:
        runs.record_submitted(run.id, ep.serve_run_id or f"fr-{run.id}")
    url = backend_url or run.backend_url or hand_made_url or "http://127.0.0.1:9"
    now = utcnow()
    if status in (S.LOADING, S.HEALTHY, S.UNHEALTHY):
        runs.report(run.id, engine_started_at=run.engine_started_at or now, backend_url=url,
                    last_seen_at=now)
    if status in (S.HEALTHY, S.UNHEALTHY):
        runs.report(run.id, ready_at=run.ready_at or now,
                    probe_failures=3 if status == S.UNHEALTHY else 0)
    if status in (S.STOPPING, S.STOPPED):
        runs.request_stop(endpoint_id)
    if status == S.STOPPED:
        runs.ended(run.id, ReasonCode.STOPPED_BY_USER, "stopped")
        registry.release_leases(endpoint_id)  # what the reconciler's release step does next
        runs.settle(endpoint_id)
    if status == S.FAILED:
        runs.give_up(endpoint_id, reason, "failed in a test", ep.live_run)
        runs.ended(run.id, reason, "failed in a test")
        registry.release_leases(endpoint_id)  # failed, like stopped, holds nothing
        runs.settle(endpoint_id)
    final = registry.get_endpoint(endpoint_id)
    assert final is not None and final.status == status, (final.status if final else None, status)
    return final.status
