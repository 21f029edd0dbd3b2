"""What an endpoint has cost, and whether it sits idle. Pure: callers pass the facts and `now`.

Each engine holds an instance from the moment its serve run started it until that run
ended, whether or not it answers requests; an endpoint costs the sum of its engines'
spans at the instance's hourly price. So replicas count each, a rolling replacement's
overlap counts both engines, and a stopped endpoint costs nothing until it is started
again. An organization's spend sums every serve run it ever had, including those of
removed endpoints (serve runs outlive their endpoint): it never goes down.

Idleness is about traffic, not health: a serving endpoint (healthy or unhealthy)
is idle when no request reached it through the gateway for longer than a threshold.
The reconcile flow and the console both decide it with `decide_idle`, so the
flag on the list and the optional auto-stop agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

SERVING_STATUSES = frozenset({"healthy", "unhealthy"})
ENDED_STATUSES = frozenset({"stopped", "failed"})


def aware(ts: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if ts is None:
        return None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


@dataclass(frozen=True)
class CostSoFar:
    started_at: datetime | None  # None: the engine never started, nothing accrued
    ended_at: datetime | None  # None: still running
    hours: float
    price_per_hour: float

    @property
    def amount(self) -> float:
        return round(self.hours * self.price_per_hour, 6)

    @property
    def running(self) -> bool:
        return self.started_at is not None and self.ended_at is None


def cost_so_far(started_at: datetime | None, ended_at: datetime | None, price_per_hour: float,
                now: datetime) -> CostSoFar:
    """GPU time from `started_at` to `ended_at` (or `now`) at `price_per_hour`."""
    start, end = aware(started_at), aware(ended_at)
    if start is None:
        return CostSoFar(None, end, 0.0, price_per_hour)
    stop = end or now
    hours = max(0.0, (stop - start).total_seconds() / 3600)
    return CostSoFar(start, end, hours, price_per_hour)


@dataclass(frozen=True)
class EngineSpan:
    """One engine's life: it holds an instance from its start until it ended (or now)."""

    started_at: datetime | None  # None: the engine never started, nothing accrued
    ended_at: datetime | None  # None: still running
    price_per_hour: float

    def hours(self, now: datetime) -> float:
        start, end = aware(self.started_at), aware(self.ended_at)
        if start is None:
            return 0.0
        return max(0.0, ((end or now) - start).total_seconds() / 3600)


def endpoint_cost(spans: Iterable[EngineSpan], price_per_hour: float, now: datetime) -> CostSoFar:
    """An endpoint's engines' time added up: from its first engine's start, running while any runs."""
    started = [s for s in spans if s.started_at is not None]
    if not started:
        return CostSoFar(None, None, 0.0, price_per_hour)
    first = min(_utc(s.started_at) for s in started if s.started_at is not None)
    running = any(s.ended_at is None for s in started)
    last = None if running else max(_utc(s.ended_at) for s in started if s.ended_at is not None)
    return CostSoFar(first, last, sum(s.hours(now) for s in started), price_per_hour)


def spend(spans: Iterable[EngineSpan], now: datetime) -> float:
    """Every engine's time at its own instance's price (an organization's spend so far)."""
    return round(sum(s.hours(now) * s.price_per_hour for s in spans), 6)


HOURS_PER_MONTH = 730  # 365 * 24 / 12: how cloud price sheets state a month


@dataclass(frozen=True)
class RunningCost:
    """What an endpoint costs while it serves: its instance's price times its engines."""

    price_per_hour: float
    replicas: int

    @property
    def per_hour(self) -> float:
        return self.price_per_hour * self.replicas

    @property
    def per_month(self) -> float:
        return self.per_hour * HOURS_PER_MONTH


def org_total(costs: Iterable[CostSoFar]) -> float:
    return round(sum(c.amount for c in costs), 6)


def hourly_burn(costs: Iterable[CostSoFar]) -> float:
    """What the organization is spending per hour right now (running endpoints only)."""
    return round(sum(c.price_per_hour for c in costs if c.running), 6)


@dataclass(frozen=True)
class IdleVerdict:
    idle: bool
    idle_for: timedelta | None  # since the last request (or since healthy); None if not serving
    reason: str


def decide_idle(*, status: str, healthy_at: datetime | None, last_request_at: datetime | None,
                in_flight: int, now: datetime, threshold: timedelta) -> IdleVerdict:
    """Is this endpoint idle? It is when it serves, has nothing in flight, and the last
    request (or, if none was seen, the moment it became healthy) is older than `threshold`.

    `last_request_at` is None when no request was seen (e.g. the gateway restarted and
    its counters with it): the endpoint is then measured from `healthy_at`, so a restart
    of the gateway can delay an idle flag but never raise a false one early.
    """
    if status not in SERVING_STATUSES:
        return IdleVerdict(False, None, f"not serving ({status})")
    if in_flight > 0:
        return IdleVerdict(False, timedelta(0), f"{in_flight} request(s) in flight")
    since = max((t for t in (aware(last_request_at), aware(healthy_at)) if t), default=None)
    if since is None:
        return IdleVerdict(False, None, "never healthy yet")
    idle_for = max(timedelta(0), now - since)
    what = "last request" if last_request_at is not None and since == aware(last_request_at) else "healthy"
    if idle_for > threshold:
        return IdleVerdict(True, idle_for, f"no requests for {_minutes(idle_for)} (since {what})")
    return IdleVerdict(False, idle_for, f"active within {_minutes(threshold)}")


def idle_stop_due(*, idle_stop_minutes: int | None, status: str, healthy_at: datetime | None,
                  last_request_at: datetime | None, in_flight: int, now: datetime) -> IdleVerdict | None:
    """The per-endpoint auto-stop decision: a verdict when the endpoint should be stopped now."""
    if not idle_stop_minutes or idle_stop_minutes <= 0:
        return None
    verdict = decide_idle(status=status, healthy_at=healthy_at, last_request_at=last_request_at,
                          in_flight=in_flight, now=now, threshold=timedelta(minutes=idle_stop_minutes))
    return verdict if verdict.idle else None


def _minutes(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 1:
        return f"{int(delta.total_seconds())} s"
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes / 60:.1f} h"
