"""Request accounting: plain integer counters on the request path, Prometheus text on scrape.

prometheus_client's own Counter/Histogram take a lock and a label lookup per call;
here a request costs a dict lookup and a few integer adds, and a custom collector
turns the same numbers into Prometheus families (and `/_gateway/stats` JSON) only
when someone asks.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from inference_endpoints.core.request_counts import (
    STATUS_CLASSES,
    RequestCounts,
    is_error,
    status_class,
)

# Seconds. Low buckets show gateway-only answers (401/404/503); high ones long generations.
BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                              5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
UNMATCHED = ("", "")  # requests for endpoints that do not exist: one series, bounded cardinality


@dataclass(slots=True)
class Series:
    """One (org, endpoint, status class)."""

    requests: int = 0
    errors: int = 0
    duration_sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))


@dataclass(slots=True)
class EndpointCounters:
    in_flight: int = 0
    disconnects: int = 0
    last_request_at: float | None = None  # epoch seconds; drives the idle flag and auto-stop


class GatewayMetrics:
    def __init__(self) -> None:
        self.series: dict[tuple[str, str, str], Series] = {}
        self.endpoints: dict[tuple[str, str], EndpointCounters] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # ---- request path --------------------------------------------------------------------

    def counters(self, org: str, endpoint: str) -> EndpointCounters:
        key = (org, endpoint)
        found = self.endpoints.get(key)
        if found is None:
            found = self.endpoints[key] = EndpointCounters()
        return found

    def seed(self, endpoints: Iterable[tuple[str, str]]) -> None:
        """Start every routable endpoint's series at 0 before its first request.

        A series born at its first request hides that request from `rate()` (Prometheus
        sees no increase until the second scrape), so a new endpoint's first burst vanished.
        """
        for org, endpoint in endpoints:
            for klass in STATUS_CLASSES:
                self.series.setdefault((org, endpoint, klass), Series())
            self.counters(org, endpoint)

    def observe(self, org: str, endpoint: str, status: int, duration_s: float,
                error: bool = False) -> None:
        """`error`: a 5xx, or a response the backend broke off mid-stream."""
        key = (org, endpoint, status_class(status))
        series = self.series.get(key)
        if series is None:
            # Start every class at 0 the first time an endpoint is seen, so a later first
            # error is an increase Prometheus can rate rather than a series appearing at 1.
            for klass in STATUS_CLASSES:
                self.series.setdefault((org, endpoint, klass), Series())
            series = self.series.get(key) or self.series.setdefault(key, Series())
        self.counters(org, endpoint).last_request_at = time.time()
        series.requests += 1
        if is_error(status, broken_off=error):
            series.errors += 1
        series.duration_sum += duration_s
        series.buckets[bisect.bisect_left(BUCKETS, duration_s)] += 1

    # ---- readers -------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        labels = ["org", "endpoint", "status_class"]
        requests = CounterMetricFamily("ie_gateway_requests", "Requests answered, by endpoint "
                                       "and status class", labels=labels)
        errors = CounterMetricFamily("ie_gateway_request_errors", "5xx answers (502 backend "
                                     "down, 503 not ready, backend 5xx) and streams the backend "
                                     "broke off", labels=labels)
        duration = HistogramMetricFamily("ie_gateway_request_duration_seconds", "Request start "
                                         "to last byte sent", labels=labels)
        for (org, endpoint, klass), s in list(self.series.items()):
            values = [org, endpoint, klass]
            requests.add_metric(values, s.requests)
            errors.add_metric(values, s.errors)
            cumulative, running = [], 0
            for bound, count in zip((*BUCKETS, float("inf")), s.buckets, strict=True):
                running += count
                cumulative.append((_le(bound), float(running)))
            duration.add_metric(values, cumulative, s.duration_sum)
        in_flight = GaugeMetricFamily("ie_gateway_in_flight_requests", "Requests being proxied "
                                      "now", labels=["org", "endpoint"])
        disconnects = CounterMetricFamily("ie_gateway_client_disconnects", "Callers that hung up "
                                          "before the response ended (upstream aborted)",
                                          labels=["org", "endpoint"])
        for (org, endpoint), c in list(self.endpoints.items()):
            in_flight.add_metric([org, endpoint], c.in_flight)
            disconnects.add_metric([org, endpoint], c.disconnects)
        yield from (requests, errors, duration, in_flight, disconnects)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def stats(self) -> dict[str, list[dict[str, object]]]:
        """Per-endpoint totals for `/_gateway/stats` (names and counts only, no secrets).

        `errors` is 5xx plus broken-off streams (`core.request_counts`); `by_class` has each
        status class apart, `broken_streams` the 2xx answers the backend broke off."""
        by_class: dict[tuple[str, str], dict[str, int]] = {}
        broken: dict[tuple[str, str], int] = {}
        for (org, endpoint, klass), s in list(self.series.items()):
            counts = by_class.setdefault((org, endpoint), dict.fromkeys(STATUS_CLASSES, 0))
            counts[klass] = counts.get(klass, 0) + s.requests
            if klass != "5xx":  # a 5xx is an error by its status; below 500 it broke off
                broken[(org, endpoint)] = broken.get((org, endpoint), 0) + s.errors
        keys = sorted((set(by_class) | set(self.endpoints)) - {UNMATCHED})
        empty = EndpointCounters()
        rows: list[dict[str, object]] = []
        for key in keys:
            counts = by_class.get(key, dict.fromkeys(STATUS_CLASSES, 0))
            c = self.endpoints.get(key, empty)
            rows.append({"org": key[0], "endpoint": key[1], "in_flight": c.in_flight,
                         "requests": sum(counts.values()),
                         "errors": RequestCounts(counts, broken.get(key, 0)).errors,
                         "by_class": counts, "broken_streams": broken.get(key, 0),
                         "client_disconnects": c.disconnects, "last_request_at": c.last_request_at})
        return {"endpoints": rows}


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
