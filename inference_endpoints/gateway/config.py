"""Gateway tuning: the few knobs, with defaults that suit one machine."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from inference_endpoints.settings import Settings


@dataclass(frozen=True)
class GatewayConfig:
    db_url: str
    base_domain: str = "endpoints.localhost"
    refresh_interval_s: float = 0.5  # change-detection poll; a status change is seen within ~1 s
    connect_timeout_s: float = 5.0
    pool_timeout_s: float = 30.0  # waiting for a free upstream connection, connecting included
    max_connections: int = 4096  # upstream connections, all backends together
    # /metrics and /_gateway/* list every org's endpoint names: only for loopback callers.
    admin_loopback_only: bool = True

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> GatewayConfig:
        base = cls(db_url=settings.db_url, base_domain=settings.base_domain.lower().strip("."))
        return replace(base, **overrides)
