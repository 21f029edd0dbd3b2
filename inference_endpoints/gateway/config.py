"""Gateway tuning: the few knobs, with defaults that suit one machine."""

from __future__ import annotations

from dataclasses import dataclass

from inference_endpoints.settings import Settings


@dataclass(frozen=True)
class GatewayConfig:
    db_url: str
    base_domain: str = "endpoints.localhost"
    refresh_interval_s: float = 0.5  # change-detection poll; a status change is seen within ~1 s
    connect_timeout_s: float = 5.0
    pool_timeout_s: float = 30.0
    max_connections: int = 4096  # upstream connections, all backends together
    max_keepalive_connections: int = 1024
    # /metrics and /_gateway/* list every org's endpoint names: only for loopback callers.
    admin_loopback_only: bool = True

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> GatewayConfig:
        values: dict[str, object] = {"db_url": settings.db_url,
                                     "base_domain": settings.base_domain.lower().strip(".")}
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
