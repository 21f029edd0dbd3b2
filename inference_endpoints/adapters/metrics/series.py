"""Run the metrics tab's queries against Prometheus (prometheus-api-client) and type the result.

Used by the console's metrics tab and JSON API and by `endpoints metrics`. When
Prometheus cannot be reached, `PrometheusUnavailable` carries a plain message the
callers show as is; nothing else in the console depends on Prometheus.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from inference_endpoints.adapters.metrics import queries as q

Point = tuple[float, float]  # (unix seconds, value)


class PrometheusUnavailable(RuntimeError):
    """Prometheus did not answer; the message says where it was looked for."""


@dataclass(frozen=True)
class Series:
    name: str
    title: str
    unit: str
    chart: str
    query: str
    points: list[Point] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """No data at all in the window (e.g. no requests for a latency quantile)."""
        return not self.points

    @property
    def nonzero(self) -> bool:
        return any(v != 0 for _, v in self.points)

    @property
    def latest(self) -> float | None:
        return self.points[-1][1] if self.points else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "points": [list(p) for p in self.points], "empty": self.empty}


@dataclass(frozen=True)
class MetricsReport:
    org: str
    endpoint: str
    window: str
    start: float
    end: float
    step_s: int
    device: str | None  # "gpu", "cpu", or None when no exporter reported in the window
    requests_in_window: float | None
    series: list[Series]
    replica: int | None = None  # engine and device series of this replica only

    @property
    def no_requests(self) -> bool:
        return not self.requests_in_window

    def get(self, name: str) -> Series:
        for s in self.series:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"org": self.org, "endpoint": self.endpoint, "window": self.window,
                "start": self.start, "end": self.end, "step_s": self.step_s,
                "device": self.device, "requests_in_window": self.requests_in_window,
                "no_requests": self.no_requests, "replica": self.replica,
                "series": [s.to_dict() for s in self.series]}


class Prometheus:
    """A thin wrapper that turns connection problems into `PrometheusUnavailable`."""

    def __init__(self, url: str, timeout_s: float = 5.0):
        self.url = url.rstrip("/")
        # No retries: a dead Prometheus must be reported at once, not after back-off.
        self.client = PrometheusConnect(self.url, retry=Retry(total=0), timeout=timeout_s)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        try:
            return list(fn(*args, **kwargs))
        except requests.RequestException as exc:
            raise PrometheusUnavailable(
                f"Prometheus at {self.url} is not reachable ({type(exc).__name__}). "
                "Start it with `endpoints up`.") from exc
        except PrometheusApiClientException as exc:
            if "Status Code 5" in str(exc):
                raise PrometheusUnavailable(f"Prometheus at {self.url} answered an error: {exc}") from exc
            raise

    def instant(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"time": f"{at:.3f}"} if at is not None else None
        return self._call(self.client.custom_query, promql, params=params)

    def range(self, promql: str, start: float, end: float, step_s: int) -> list[dict[str, Any]]:
        return self._call(self.client.custom_query_range, promql,
                          start_time=datetime.fromtimestamp(start, UTC),
                          end_time=datetime.fromtimestamp(end, UTC), step=f"{step_s}s")

    def close(self) -> None:
        self.client.close()


def _finite(raw: str) -> float | None:
    value = float(raw)
    return value if math.isfinite(value) else None


def _points(result: list[dict[str, Any]]) -> list[Point]:
    """One aggregated series (our queries return at most one); NaN (no data) points dropped."""
    by_ts: dict[float, float] = {}
    for item in result:
        pairs = item["values"] if "values" in item else [item["value"]]
        for ts, raw in pairs:
            value = _finite(raw)
            if value is not None:
                by_ts[float(ts)] = by_ts.get(float(ts), 0.0) + value
    return sorted(by_ts.items())


def _scalar(result: list[dict[str, Any]]) -> float | None:
    values = [_finite(item["value"][1]) for item in result]
    found = [v for v in values if v is not None]
    return sum(found) if found else None


def device_kind(prom: Prometheus, target: q.Target, rng: str, at: float | None = None) -> str | None:
    kinds = {item["metric"].get("device") for item in prom.instant(q.device_kind(target, rng), at)}
    return "gpu" if "gpu" in kinds else "cpu" if "cpu" in kinds else None


def endpoint_series(prometheus_url: str, org: str, endpoint: str, window: str = "1h", *,
                    endpoint_id: str | None = None, end: float | None = None,
                    replica: int | None = None) -> MetricsReport:
    """Every series of the metrics tab for one endpoint over `window` ("15m", "1h", "6h", "24h");
    with `replica`, the engine and device series are that replica's alone."""
    w = q.window(window)
    target = q.Target(org, endpoint, endpoint_id, replica)
    end = time.time() if end is None else end
    start = end - w.seconds
    prom = Prometheus(prometheus_url)
    try:
        wrange = q.duration(w.seconds)
        device = device_kind(prom, target, wrange, end)
        requests_in_window = _scalar(prom.instant(q.requests_in(target, wrange), end))
        series = [Series(query.name, query.title, query.unit, query.chart, query.promql,
                         _points(prom.range(query.promql, start, end, w.step_s)))
                  for query in q.tab_queries(target, w.range, device)]
    finally:
        prom.close()
    return MetricsReport(org, endpoint, w.name, start, end, w.step_s, device, requests_in_window,
                         series, replica)


@dataclass(frozen=True)
class CurrentValue:
    name: str
    title: str
    unit: str
    value: float | None  # None: no data (e.g. no requests in the last minute for a quantile)


def current_values(prometheus_url: str, org: str, endpoint: str, *,
                   endpoint_id: str | None = None, at: float | None = None,
                   replica: int | None = None) -> list[CurrentValue]:
    """Now: rates over the last minute, gauges as last scraped (for the CLI)."""
    target = q.Target(org, endpoint, endpoint_id, replica)
    prom = Prometheus(prometheus_url)
    try:
        device = device_kind(prom, target, "5m", at)
        return [CurrentValue(query.name, query.title, query.unit,
                             _scalar(prom.instant(query.promql, at)))
                for query in q.tab_queries(target, None, device)]
    finally:
        prom.close()
