"""Gateway tuning: the few knobs, with defaults that suit one machine."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from inference_endpoints.settings import Settings, gateway_admin_token

MIB = 1024 * 1024


@dataclass(frozen=True)
class GatewayConfig:
    db_url: str
    base_domain: str = "endpoints.localhost"
    refresh_interval_s: float = 0.5  # change-detection poll; a status change is seen within ~1 s
    connect_timeout_s: float = 5.0
    pool_timeout_s: float = 30.0  # waiting for a free upstream connection, connecting included
    max_connections: int = 4096  # upstream connections, all backends together
    # Bounds on callers: a connection whose request headers are not complete this long after
    # it opened (or after the request's first byte) is closed; a body that stalls this long
    # between chunks gets 408; a body over the limit gets 413 (at once when declared).
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_body_bytes: int = 16 * MIB
    # /metrics and /_gateway/stats list every org's endpoint names: only with this bearer
    # token. None refuses them to everyone.
    admin_token: str | None = None
    # Same prompt start, same replica (while it is not overloaded): see balancer.py.
    prefix_affinity: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> GatewayConfig:
        base = cls(db_url=settings.db_url, base_domain=settings.base_domain.lower().strip("."),
                   header_timeout_s=settings.gateway_header_timeout_s,
                   body_timeout_s=settings.gateway_body_timeout_s,
                   max_body_bytes=settings.gateway_max_body_bytes,
                   admin_token=gateway_admin_token(settings),
                   prefix_affinity=settings.gateway_prefix_affinity)
        return replace(base, **overrides)
