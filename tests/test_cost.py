"""Cost so far, org totals and the idle decision (pure), and how traffic times are inferred."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from inference_endpoints.adapters.console.traffic import TrafficSource
from inference_endpoints.core.cost import (
    EngineSpan,
    cost_so_far,
    decide_idle,
    endpoint_cost,
    hourly_burn,
    idle_stop_due,
    org_total,
    spend,
)
from inference_endpoints.settings import Settings

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def test_cost_runs_from_the_serve_start_to_the_end_at_the_hourly_price() -> None:
    running = cost_so_far(T0, None, 2.49, T0 + timedelta(minutes=90))
    assert running.hours == pytest.approx(1.5) and running.amount == pytest.approx(3.735)
    assert running.running
    ended = cost_so_far(T0, T0 + timedelta(minutes=30), 2.0, T0 + timedelta(days=3))
    assert ended.amount == pytest.approx(1.0) and not ended.running
    never = cost_so_far(None, T0, 2.0, T0 + timedelta(hours=1))
    assert never.amount == 0 and never.hours == 0


def test_naive_sqlite_times_are_utc() -> None:
    naive = T0.replace(tzinfo=None)
    assert cost_so_far(naive, None, 1.0, T0 + timedelta(hours=2)).hours == pytest.approx(2)


def test_an_endpoint_costs_its_engines_spans_not_the_gaps_between() -> None:
    hour = timedelta(hours=1)
    # served an hour, stopped for two, started again half an hour ago (now)
    spans = [EngineSpan(T0, T0 + hour, 2.0), EngineSpan(T0 + 3 * hour, None, 2.0)]
    cost = endpoint_cost(spans, 2.0, T0 + 3.5 * hour)
    assert cost.hours == pytest.approx(1.5) and cost.amount == pytest.approx(3.0)
    assert cost.running and cost.started_at == T0 and cost.ended_at is None
    # two replicas at once count twice; once both ended, the cost stops growing
    both = [EngineSpan(T0, T0 + hour, 2.0), EngineSpan(T0, T0 + hour / 2, 2.0)]
    done = endpoint_cost(both, 2.0, T0 + 10 * hour)
    assert done.hours == pytest.approx(1.5) and not done.running and done.ended_at == T0 + hour
    never = endpoint_cost([EngineSpan(None, None, 2.0)], 2.0, T0)
    assert never.amount == 0 and never.started_at is None and not never.running


def test_spend_prices_each_engine_at_its_own_instance() -> None:
    hour = timedelta(hours=1)
    spans = [EngineSpan(T0, T0 + hour, 1.0), EngineSpan(T0, T0 + 2 * hour, 4.0),
             EngineSpan(T0.replace(tzinfo=None), None, 0.5), EngineSpan(None, None, 9.0)]
    assert spend(spans, T0 + 2 * hour) == pytest.approx(1.0 + 8.0 + 1.0)


def test_org_total_and_burn_rate() -> None:
    now = T0 + timedelta(hours=1)
    costs = [cost_so_far(T0, None, 1.0, now), cost_so_far(T0, T0 + timedelta(minutes=30), 4.0, now),
             cost_so_far(None, None, 9.0, now)]
    assert org_total(costs) == pytest.approx(3.0)
    assert hourly_burn(costs) == pytest.approx(1.0)


def idle(**kw: Any) -> Any:
    args: dict[str, Any] = {"status": "healthy", "healthy_at": T0, "last_request_at": None, "in_flight": 0,
                            "now": T0 + timedelta(minutes=45), "threshold": timedelta(minutes=30)}
    args.update(kw)
    return decide_idle(**args)


def test_idle_after_the_threshold_without_requests() -> None:
    verdict = idle()
    assert verdict.idle and verdict.idle_for == timedelta(minutes=45) and "since healthy" in verdict.reason
    recent = idle(last_request_at=T0 + timedelta(minutes=40))
    assert not recent.idle and recent.idle_for == timedelta(minutes=5)
    old = idle(last_request_at=T0 + timedelta(minutes=5))
    assert old.idle and "since last request" in old.reason


def test_not_idle_while_busy_starting_or_ended() -> None:
    assert not idle(in_flight=2).idle
    for status in ("pending", "deploying", "loading", "stopping", "stopped", "failed"):
        assert not idle(status=status).idle, status
    assert not idle(healthy_at=None).idle
    assert idle(status="unhealthy").idle, "an unhealthy endpoint still holds its GPU"


def test_idle_stop_only_when_asked_and_due() -> None:
    now = T0 + timedelta(minutes=61)
    kw: dict[str, Any] = {"status": "healthy", "healthy_at": T0, "last_request_at": None, "in_flight": 0,
                          "now": now}
    assert idle_stop_due(idle_stop_minutes=None, **kw) is None
    assert idle_stop_due(idle_stop_minutes=0, **kw) is None
    assert idle_stop_due(idle_stop_minutes=90, **kw) is None
    due = idle_stop_due(idle_stop_minutes=60, **kw)
    assert due is not None and due.idle and "no requests for 61 min" in due.reason


def test_traffic_source_infers_the_last_request_from_rising_counts() -> None:
    source = TrafficSource(Settings(gateway_port=9))
    t1, t2, t3 = T0, T0 + timedelta(seconds=5), T0 + timedelta(seconds=10)

    def row(requests: int, **extra: Any) -> list[dict[str, object]]:
        return [{"org": "o", "endpoint": "e", "requests": requests, "errors": 0, "in_flight": 0,
                 "by_class": {"2xx": requests}, **extra}]

    assert source._track(row(3), t1)[("o", "e")].last_request_at is None, "first sight: unknown"
    assert source._track(row(3), t2)[("o", "e")].last_request_at is None
    assert source._track(row(4), t3)[("o", "e")].last_request_at == t3
    assert source._track(row(0), t3 + timedelta(seconds=5))[("o", "e")].last_request_at == t3, \
        "a drop is a gateway restart, not traffic"
    reported = source._track(row(0, last_request_at=T0.timestamp()), t3)[("o", "e")]
    assert reported.last_request_at == T0, "the gateway's own timestamp wins when it reports one"


def test_traffic_source_says_none_when_the_gateway_is_down() -> None:
    assert TrafficSource(Settings(gateway_port=9), timeout_s=0.2).snapshot() is None
