"""Cost so far, org totals and the idle decision (pure), and how traffic times are inferred."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from inference_endpoints.adapters.console.traffic import TrafficSource
from inference_endpoints.core.cost import (
    billing_end,
    billing_start,
    cost_so_far,
    decide_idle,
    hourly_burn,
    idle_stop_due,
    org_total,
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


def test_billing_window_uses_the_first_serving_moment_and_the_end() -> None:
    later = T0 + timedelta(minutes=10)
    # A restart overwrote loading_at; the first recorded `loading` event still wins.
    assert billing_start(T0, later, later + timedelta(seconds=30)) == T0
    assert billing_start(None, None, later) == later
    assert billing_start(None, None, None) is None
    assert billing_end("healthy", None, T0) is None
    assert billing_end("stopped", later, T0) == later
    assert billing_end("failed", None, later) == later


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
        return [{"org": "o", "endpoint": "e", "requests": requests, "errors": 0, "in_flight": 0, **extra}]

    assert source._track(row(3), t1)[("o", "e")].last_request_at is None, "first sight: unknown"
    assert source._track(row(3), t2)[("o", "e")].last_request_at is None
    assert source._track(row(4), t3)[("o", "e")].last_request_at == t3
    assert source._track(row(0), t3 + timedelta(seconds=5))[("o", "e")].last_request_at == t3, \
        "a drop is a gateway restart, not traffic"
    reported = source._track(row(0, last_request_at=T0.timestamp()), t3)[("o", "e")]
    assert reported.last_request_at == T0, "the gateway's own timestamp wins when it reports one"


def test_traffic_source_says_none_when_the_gateway_is_down() -> None:
    assert TrafficSource(Settings(gateway_port=9), timeout_s=0.2).snapshot() is None
