"""The gateway keeps routing with its last good table while the registry cannot be read."""

from __future__ import annotations

import asyncio
from pathlib import Path

from inference_endpoints.adapters.gateway.resolver import Resolver
from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.persistence.db import get_engine
from inference_endpoints.persistence.registry import Registry
from tests.lifecycle_support import put_status
from tests.test_gateway_units import add_endpoint


def _move(db: Path, to: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{db}{suffix}")
        if src.exists():
            src.rename(Path(f"{to}{suffix}"))


def test_last_good_routes_survive_an_unreadable_registry(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    url = f"sqlite:///{db}"
    registry = Registry(url)
    registry.init(default_org="default")
    org = registry.get_org_by_name("default")
    assert org is not None
    ep = add_endpoint(registry, org.id, "chat", "loading", "http://127.0.0.1:9001")
    put_status(registry, ep, EndpointStatus.HEALTHY)
    resolver = Resolver(registry)
    assert asyncio.run(resolver.refresh_async())
    assert resolver.table.routes[("default", "chat")].routable

    get_engine(url).dispose()
    _move(db, tmp_path / "away.db")  # the registry is gone: a fresh empty file has no tables
    assert asyncio.run(resolver.refresh_async()) is False
    assert resolver.refresh_errors == 1
    route = resolver.table.routes[("default", "chat")]
    assert route.routable and route.backend_url == "http://127.0.0.1:9001"

    get_engine(url).dispose()
    db.unlink()
    _move(tmp_path / "away.db", db)  # back again: the next refresh reads it as before
    put_status(registry, ep, EndpointStatus.STOPPED)
    assert asyncio.run(resolver.refresh_async())
    assert not resolver.table.routes[("default", "chat")].routable
