"""Reading a running gateway's per-endpoint counters (for `endpoints list` and the console).

`GET /_gateway/stats` on the gateway's own address (not an endpoint host) returns
`{"endpoints": [{"org", "endpoint", "in_flight", "requests", "errors",
"client_disconnects"}]}`: names and counts only, never keys or bodies, and only to
callers with the gateway's admin token (`admin_headers`). Counters restart with the
gateway; Prometheus keeps the history.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from inference_endpoints.settings import Settings, gateway_admin_token


@dataclass(frozen=True)
class EndpointTraffic:
    in_flight: int
    requests: int
    errors: int
    client_disconnects: int
    last_request_at: float | None = None  # epoch seconds, None if none since the gateway started


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
    except (httpx.HTTPError, ValueError, KeyError):
        return None
    return {(row["org"], row["endpoint"]): EndpointTraffic(
        int(row["in_flight"]), int(row["requests"]), int(row["errors"]),
        int(row["client_disconnects"]), row.get("last_request_at")) for row in rows}
