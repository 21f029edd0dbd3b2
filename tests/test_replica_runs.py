"""Replica runs in the registry: guarded adds, the ready addresses the gateway balances over,
and a stopped endpoint refusing new replicas (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.persistence.registry import Registry
from tests.lifecycle_support import put_status
from tests.test_gateway_units import add_endpoint


def _ready(registry: Registry, run_id: str, url: str) -> None:
    registry.runs.record_submitted(run_id, f"fr-{run_id}")
    now = datetime.now(UTC)
    assert registry.runs.report(run_id, engine_started_at=now, backend_url=url, ready_at=now, last_seen_at=now)


def _org(registry: Registry) -> str:
    org = registry.get_org_by_name("default")
    assert org is not None
    return org.id


def test_replica_slots_are_guarded_and_ready_ones_are_routed(registry: Registry) -> None:
    ep = add_endpoint(registry, _org(registry), "trio", status="pending")
    put_status(registry, ep, EndpointStatus.HEALTHY, backend_url="http://127.0.0.1:9100")
    assert registry.runs.add_replica(ep, 1) is None  # one replica wanted: no slot 1
    assert registry.runs.scale(ep, 3, 3)
    first, second = registry.runs.add_replica(ep, 1), registry.runs.add_replica(ep, 2)
    assert first is not None and second is not None
    assert (first.replica, second.replica, first.role) == (1, 2, "replica")
    assert registry.runs.add_replica(ep, 1) is None  # filled
    assert registry.runs.add_replica(ep, 3) is None  # beyond the wanted count
    live = registry.get_endpoint(ep)
    assert live is not None and live.live_run is not None
    live_run = registry.runs.get(live.live_run)
    assert live_run is not None
    assert (first.checkpoint_id, first.serving_config_json) == (live_run.checkpoint_id,
                                                                live_run.serving_config_json)
    _ready(registry, first.id, "http://127.0.0.1:9101")
    row = registry.get_endpoint(ep)
    assert row is not None and json.loads(row.backend_urls or "[]") == ["http://127.0.0.1:9100",
                                                                         "http://127.0.0.1:9101"]
    assert registry.runs.request_run_stop(first.id)  # retired: out of the routes at once
    row = registry.get_endpoint(ep)
    assert row is not None and json.loads(row.backend_urls or "[]") == ["http://127.0.0.1:9100"]
    assert [a.kind for a in registry.activity(ep)].count("scaled") == 1


def test_a_stopping_endpoint_takes_no_new_replica_and_cannot_be_scaled(registry: Registry) -> None:
    ep = add_endpoint(registry, _org(registry), "winding-down", status="pending")
    put_status(registry, ep, EndpointStatus.HEALTHY)
    assert registry.runs.scale(ep, 2, 2)
    assert registry.runs.request_stop(ep)
    assert registry.runs.add_replica(ep, 1) is None
    assert not registry.runs.scale(ep, 3, 3)
    row = registry.get_endpoint(ep)
    assert row is not None and (row.min_replicas, row.max_replicas) == (2, 2)


def test_a_run_leaving_the_queue_keeps_the_time_it_was_last_queued(registry: Registry) -> None:
    """The startup timeout counts from then, so a run that just got its slot is not timed out."""
    ep = add_endpoint(registry, _org(registry), "waiting", status="pending")
    put_status(registry, ep, EndpointStatus.DEPLOYING)
    row = registry.get_endpoint(ep)
    assert row is not None and row.live_run is not None
    assert registry.runs.queued(row.live_run, "queued for capacity: work pool cpu-dev runs 4 of its 4 slots")
    queued = registry.runs.get(row.live_run)
    assert queued is not None and queued.queued_at is not None
    shown = registry.get_endpoint(ep)
    assert shown is not None and (shown.status, shown.reason_code) == ("deploying", "queued_for_capacity")
    assert registry.runs.queued(row.live_run, None)
    left = registry.runs.get(row.live_run)
    assert left is not None and left.queued_message is None and left.queued_at == queued.queued_at
    shown = registry.get_endpoint(ep)
    assert shown is not None and (shown.status, shown.reason_code) == ("deploying", None)

