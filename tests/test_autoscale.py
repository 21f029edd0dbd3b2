"""Autoscaling: the pure decision as tables, then the reconciler recording it on a real registry.

The decision scales up only after the load has asked for more for a short window, down one
replica at a time after a cooldown, never outside [min, max], nothing on unknown load; each
change carries its figures and becomes an activity event (SQLite and PostgreSQL).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from inference_endpoints.core.autoscale import UP_WINDOW, ScaleInput, ScaleState, by_load, decide_scale
from inference_endpoints.core.replica_counts import scaling_problems
from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.run_facts import wanted_replicas
from inference_endpoints.services.reconciler import autoscale_endpoint
from tests.lifecycle_support import put_status
from tests.test_gateway_units import add_endpoint

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
COOL = timedelta(seconds=60)


def inp(in_flight: int | None, low: int = 1, high: int = 3, target: float = 2, ready: int = 1) -> ScaleInput:
    return ScaleInput(low, high, target, COOL, in_flight, ready)


@pytest.mark.parametrize(("in_flight", "low", "high", "target", "wanted"), [
    (0, 1, 3, 2, 1),    # idle: the minimum
    (2, 1, 3, 2, 1),    # exactly the target on one replica
    (3, 1, 3, 2, 2),    # one over: a second replica
    (6, 1, 3, 2, 3),
    (100, 1, 3, 2, 3),  # never above max
    (0, 2, 4, 2, 2),    # never below min
    (5, 1, 8, 0.5, 8),  # fractional targets
])
def test_by_load_is_ceil_of_load_over_target_within_bounds(in_flight: int, low: int, high: int,
                                                          target: float, wanted: int) -> None:
    assert by_load(inp(in_flight, low, high, target)) == wanted


def test_a_busy_moment_is_not_a_trend_a_sustained_one_scales_up() -> None:
    first = decide_scale(ScaleState(1), inp(6), T0)
    assert not first.changed and first.state == ScaleState(1, over_since=T0)
    early = decide_scale(first.state, inp(6), T0 + UP_WINDOW - timedelta(seconds=1))
    assert not early.changed and early.state.over_since == T0
    up = decide_scale(early.state, inp(6), T0 + UP_WINDOW)
    assert up.changed and up.state == ScaleState(3, None, None, T0 + UP_WINDOW)
    assert up.message is not None and "scaled up 1 → 3" in up.message
    assert "6 request(s) in flight on 1 ready replica(s), target 2 per replica" in up.message
    assert f"for {int(UP_WINDOW.total_seconds())} s" in up.message


def test_a_dip_resets_the_window() -> None:
    busy = decide_scale(ScaleState(1), inp(6), T0)
    calm = decide_scale(busy.state, inp(1), T0 + timedelta(seconds=10))
    assert calm.state.over_since is None and not calm.changed
    again = decide_scale(calm.state, inp(6), T0 + timedelta(seconds=20))
    assert again.state.over_since == T0 + timedelta(seconds=20) and not again.changed


def test_down_one_at_a_time_after_the_cooldown_since_the_last_change() -> None:
    changed = T0
    state = ScaleState(3, changed_at=changed)
    quiet = decide_scale(state, inp(0, ready=3), T0 + timedelta(seconds=5))
    assert not quiet.changed and quiet.state.under_since == T0 + timedelta(seconds=5)
    before = decide_scale(quiet.state, inp(0, ready=3), T0 + COOL)  # 55 s under the cooldown
    assert not before.changed
    down = decide_scale(before.state, inp(0, ready=3), T0 + COOL + timedelta(seconds=5))
    assert down.changed and down.state.wanted == 2 and down.state.changed_at == T0 + COOL + timedelta(seconds=5)
    assert down.message is not None and "scaled down 3 → 2" in down.message and "cooldown 60 s" in down.message
    # the next step waits a whole cooldown again
    later = decide_scale(down.state, inp(0, ready=2), T0 + COOL + timedelta(seconds=10))
    assert not later.changed and later.state.wanted == 2


def test_unknown_load_decides_nothing_and_fixed_bounds_never_scale() -> None:
    pending = ScaleState(1, over_since=T0)
    unknown = decide_scale(pending, inp(None), T0 + UP_WINDOW * 2)
    assert not unknown.changed and unknown.state == ScaleState(1, None, None, None)
    fixed = decide_scale(ScaleState(2), inp(50, low=2, high=2), T0 + timedelta(hours=1))
    assert not fixed.changed and fixed.state.wanted == 2


def test_new_bounds_are_followed_at_once() -> None:
    moved = decide_scale(ScaleState(3), inp(0, low=1, high=2), T0)
    assert moved.changed and moved.state.wanted == 2 and moved.message is not None
    assert "bounds are now 1 to 2" in moved.message


@pytest.mark.parametrize(("target", "down", "fields"), [
    (4, 300, []), (None, None, []), (0.5, 0, []),
    (0, None, ["scale_target"]), (-1, None, ["scale_target"]), (2000, None, ["scale_target"]),
    (True, None, ["scale_target"]), ("4", None, ["scale_target"]),
    (None, -5, ["scale_down_after_s"]), (None, 1.5, ["scale_down_after_s"]),
    (None, 100_000, ["scale_down_after_s"]), (0, -1, ["scale_target", "scale_down_after_s"]),
])
def test_scaling_settings_are_checked_field_by_field(target: object, down: object, fields: list[str]) -> None:
    problems = scaling_problems(target, down)
    assert [p.field for p in problems] == fields
    assert all(p.hint for p in problems)


def _healthy_autoscaled(registry: Registry, name: str) -> str:
    org = registry.get_org_by_name("default")
    assert org is not None
    ep = add_endpoint(registry, org.id, name, status="pending")
    put_status(registry, ep, EndpointStatus.HEALTHY, backend_url="http://127.0.0.1:9100")
    assert registry.runs.scale(ep, 1, 3, 2, 60)
    return ep


def test_the_reconciler_records_each_change_with_its_figures(registry: Registry) -> None:
    ep = _healthy_autoscaled(registry, "auto")
    load = {("default", "auto"): 7}
    assert autoscale_endpoint(registry, ep, load, T0) == []  # the window starts
    row = registry.get_endpoint(ep)
    assert row is not None and wanted_replicas(row) == 1 and row.scale_over_since is not None
    rows = autoscale_endpoint(registry, ep, load, T0 + UP_WINDOW)
    assert [r.step for r in rows] == ["autoscale"] and "scaled up 1 → 3" in rows[0].why
    row = registry.get_endpoint(ep)
    assert row is not None and wanted_replicas(row) == 3 and row.replicas_wanted == 3
    # the slots the autoscaler opened can be filled (min_replicas is still 1), none beyond them
    assert registry.runs.add_replica(ep, 1) is not None and registry.runs.add_replica(ep, 2) is not None
    assert registry.runs.add_replica(ep, 3) is None
    events = [a for a in registry.activity(ep) if a.kind == "autoscaled"]
    assert len(events) == 1 and "7 request(s) in flight" in events[0].message
    # no gateway answer: nothing changes, nothing is recorded
    assert autoscale_endpoint(registry, ep, None, T0 + timedelta(hours=1)) == []
    row = registry.get_endpoint(ep)
    assert row is not None and row.replicas_wanted == 3
    # the load ends: down one at a time, a cooldown apart
    idle = {("default", "auto"): 0}
    t = T0 + UP_WINDOW + timedelta(seconds=1)
    assert autoscale_endpoint(registry, ep, idle, t) == []
    down = autoscale_endpoint(registry, ep, idle, t + timedelta(seconds=61))
    assert [r.why.split(":")[0] for r in down] == ["scaled down 3 → 2"]
    assert autoscale_endpoint(registry, ep, idle, t + timedelta(seconds=62)) == []
    row = registry.get_endpoint(ep)
    assert row is not None and wanted_replicas(row) == 2
    assert [a.kind for a in registry.activity(ep)].count("autoscaled") == 2


def test_scale_resets_the_autoscaler_and_a_stopped_endpoint_is_never_scaled(registry: Registry) -> None:
    ep = _healthy_autoscaled(registry, "reset")
    autoscale_endpoint(registry, ep, {("default", "reset"): 9}, T0)
    autoscale_endpoint(registry, ep, {("default", "reset"): 9}, T0 + UP_WINDOW)
    row = registry.get_endpoint(ep)
    assert row is not None and row.replicas_wanted == 3
    assert registry.runs.scale(ep, 2, 2)
    row = registry.get_endpoint(ep)
    assert row is not None and wanted_replicas(row) == 2 and row.scale_target == 2  # target kept
    assert registry.runs.request_stop(ep)
    assert autoscale_endpoint(registry, ep, {("default", "reset"): 99}, T0 + timedelta(hours=1)) == []
    row = registry.get_endpoint(ep)
    assert row is not None and row.replicas_wanted == 2
