"""Per-endpoint request counts from the gateway, and when each endpoint last saw a request.

The gateway's `/_gateway/stats` gives counters since it started. If it reports
`last_request_at` (epoch seconds) that is used; otherwise this process infers it:
the last time it saw an endpoint's count go up. Counters restart with the gateway,
so a drop in a count is a gateway restart, not traffic.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from inference_endpoints.adapters.gateway.stats import admin_headers, gateway_url, parse_row
from inference_endpoints.core.request_counts import Counted, RequestCounts
from inference_endpoints.persistence.models import utcnow
from inference_endpoints.settings import Settings


@dataclass(frozen=True)
class Traffic(Counted):
    counts: RequestCounts
    in_flight: int
    last_request_at: datetime | None


NO_TRAFFIC = Traffic(RequestCounts(), 0, None)


class TrafficSource:
    """Reads the gateway's stats (briefly cached) and remembers when counts last moved."""

    def __init__(self, settings: Settings, cache_s: float = 1.0, timeout_s: float = 0.5):
        self.url = f"{gateway_url(settings)}/_gateway/stats"
        self.settings = settings
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._fetched_at: datetime | None = None
        self._rows: dict[tuple[str, str], Traffic] | None = None
        self._seen: dict[tuple[str, str], tuple[int, datetime | None]] = {}

    def snapshot(self) -> dict[tuple[str, str], Traffic] | None:
        """(org name, endpoint name) -> traffic, or None when the gateway is not answering."""
        now = utcnow()
        with self._lock:
            if self._fetched_at is not None and (now - self._fetched_at).total_seconds() < self.cache_s:
                return self._rows
        raw = self._fetch()
        with self._lock:
            self._fetched_at = now
            self._rows = None if raw is None else self._track(raw, now)
            return self._rows

    def _fetch(self) -> list[dict[str, object]] | None:
        try:
            response = httpx.get(self.url, headers=admin_headers(self.settings),
                                 timeout=self.timeout_s)
            response.raise_for_status()
            rows = response.json()["endpoints"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None
        return rows if isinstance(rows, list) else None

    def _track(self, rows: list[dict[str, object]], now: datetime) -> dict[tuple[str, str], Traffic]:
        result: dict[tuple[str, str], Traffic] = {}
        for row in rows:
            try:
                key = (str(row["org"]), str(row["endpoint"]))
                parsed = parse_row(row)
            except (KeyError, TypeError, ValueError):
                continue
            requests = parsed.requests
            previous, last = self._seen.get(key, (requests, None))
            if parsed.last_request_at is not None:
                last = datetime.fromtimestamp(parsed.last_request_at, UTC)
            elif requests > previous or parsed.in_flight > 0:
                last = now
            self._seen[key] = (requests, last)
            result[key] = Traffic(parsed.counts, parsed.in_flight, last)
        return result
