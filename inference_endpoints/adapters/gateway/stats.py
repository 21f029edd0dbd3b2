"""Reading a running gateway's per-endpoint counters (for `endpoints list` and the console).

`GET /_gateway/stats` on the gateway's own address (not an endpoint host) returns
`{"endpoints": [{"org", "endpoint", "in_flight", "requests", "errors", "by_class",
"broken_streams", "client_disconnects", "last_request_at"}]}` (errors as
`core.request_counts` defines them): names and counts only, never keys or bodies, and only to
callers with the gateway's admin token (`admin_headers`). Counters restart with the
gateway; Prometheus keeps the history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from inference_endpoints.core.request_counts import STATUS_CLASSES, Counted, RequestCounts
from inference_endpoints.settings import Settings, gateway_admin_token


@dataclass(frozen=True)
class EndpointTraffic(Counted):
    in_flight: int
    counts: RequestCounts
    client_disconnects: int
    last_request_at: float | None = None  # epoch seconds, None if none since the gateway started


def parse_row(row: Mapping[str, object]) -> EndpointTraffic:
    """One `/_gateway/stats` row; raises KeyError, TypeError or ValueError on a malformed one."""
    by_class = row["by_class"]
    if not isinstance(by_class, Mapping):
        raise TypeError("by_class is not an object")
    counts = RequestCounts({k: int(by_class.get(k, 0)) for k in STATUS_CLASSES},
                           int(row.get("broken_streams", 0)))  # type: ignore[call-overload]
    last = row.get("last_request_at")
    return EndpointTraffic(int(row["in_flight"]), counts,  # type: ignore[call-overload]
                           int(row.get("client_disconnects", 0)),  # type: ignore[call-overload]
                           float(last) if isinstance(last, int | float) and last > 0 else None)


def gateway_url(settings: Settings) -> str:
    """Where this machine reaches the gateway (a wildcard bind address means loopback)."""
    host = settings.gateway_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{settings.gateway_port}"


def admin_headers(settings: Settings) -> dict[str, str]:
    """What the gateway's /metrics and /_gateway/stats want (the same token the gateway reads)."""
    return {"Authorization": f"Bearer {gateway_admin_token(settings)}"}


def fetch_traffic(settings: Settings, timeout_s: float = 0.5
                  ) -> dict[tuple[str, str], EndpointTraffic] | None:
    """(org name, endpoint name) -> counters, or None when the gateway is not answering."""
    try:
        response = httpx.get(f"{gateway_url(settings)}/_gateway/stats",
                             headers=admin_headers(settings), timeout=timeout_s)
        response.raise_for_status()
        rows = response.json()["endpoints"]
        return {(str(row["org"]), str(row["endpoint"])): parse_row(row) for row in rows}
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
