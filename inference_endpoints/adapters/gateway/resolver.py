"""The route table: (org, endpoint) -> current backend, and key hash -> org, kept in memory.

No request touches the database. A background task runs one cheap change-detection
query every `refresh_interval_s` (row counts and the newest `updated_at`) and reloads
the whole table only when that signature moved. Status changes bump `updated_at`
(`Registry.transition`, `update_endpoint`), revocations raise the revoked-key count,
and removals lower the endpoint count, so each is seen within about one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col

from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.persistence.models import ApiKey, Endpoint, Organization
from inference_endpoints.persistence.registry import Registry

log = logging.getLogger(__name__)

# Seconds a caller should wait before retrying, by status (not-ready statuses only).
RETRY_AFTER_S: dict[str, int] = {
    EndpointStatus.PENDING: 10,
    EndpointStatus.DEPLOYING: 10,
    EndpointStatus.LOADING: 5,
    EndpointStatus.UNHEALTHY: 5,
    EndpointStatus.STOPPING: 10,
}


@dataclass(frozen=True, slots=True)
class Route:
    """What the gateway needs to forward to one endpoint; built once per table load."""

    endpoint_id: str
    org_id: str
    org: str
    name: str
    status: str
    backend_url: str | None
    backend_auth: bytes  # the full upstream Authorization header value
    model: str
    backends: tuple[str, ...] = ()  # every ready replica's address (the live run's first)

    @property
    def routable(self) -> bool:
        return self.status == EndpointStatus.HEALTHY and bool(self.addresses)

    @property
    def addresses(self) -> tuple[str, ...]:
        """Where requests may go: the ready replicas, else the live run's address."""
        return self.backends or ((self.backend_url,) if self.backend_url else ())

    @property
    def retry_after_s(self) -> int | None:
        """None for terminal statuses: waiting will not help."""
        if self.status == EndpointStatus.HEALTHY:
            return 1  # healthy but no backend address yet
        return RETRY_AFTER_S.get(self.status)


@dataclass(frozen=True)
class RouteTable:
    """An immutable snapshot; the refresher swaps in a new one."""

    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    key_orgs: dict[str, str] = field(default_factory=dict)  # sha256(key) -> org id
    signature: Hashable = None
    loaded_at: float = 0.0  # time.monotonic()


def signature(registry: Registry) -> tuple[object, ...]:
    """One round trip: enough to notice any insert, delete, status change or revocation."""
    stmt = select(
        select(func.count()).select_from(Endpoint).scalar_subquery(),
        select(func.max(col(Endpoint.updated_at))).scalar_subquery(),
        select(func.count()).select_from(ApiKey).scalar_subquery(),
        select(func.count(col(ApiKey.revoked_at))).scalar_subquery(),
        select(func.count()).select_from(Organization).scalar_subquery(),
    )
    with registry.session() as s:
        row = s.execute(stmt).one()
    return tuple(row)


def load_table(registry: Registry, sig: Hashable = None) -> RouteTable:
    """Read every endpoint and live key (plain columns, no ORM objects)."""
    ep_cols = [col(c) for c in (Endpoint.id, Endpoint.org_id, Organization.name, Endpoint.name,
                                Endpoint.status, Endpoint.backend_url, Endpoint.backend_api_key,
                                Endpoint.served_model_name, Endpoint.backend_urls)]
    with registry.session() as s:
        ep_rows = s.execute(
            select(*ep_cols).join(Organization, col(Organization.id) == col(Endpoint.org_id))
        ).all()
        key_rows = s.execute(
            select(col(ApiKey.key_hash), col(ApiKey.org_id)).where(col(ApiKey.revoked_at).is_(None))
        ).all()
    routes: dict[tuple[str, str], Route] = {}
    for ep_id, org_id, org, name, status, url, key, model, urls in ep_rows:
        auth = f"Bearer {key}".encode("latin-1") if key else b""
        backends = tuple(u.rstrip("/") for u in json.loads(urls)) if urls else ()
        routes[(org.lower(), name.lower())] = Route(
            ep_id, org_id, org, name, status, url.rstrip("/") if url else None, auth, model, backends)
    return RouteTable(routes, {h: o for h, o in key_rows}, sig, time.monotonic())


def _report_crash(task: asyncio.Task[None]) -> None:
    """A dead refresher freezes the table; /_gateway/health turns 503 and this says why."""
    if not task.cancelled() and task.exception() is not None:
        log.error("route table refresher died; routes are frozen", exc_info=task.exception())


class Resolver:
    """Holds the current table and refreshes it in the background."""

    def __init__(self, registry: Registry, interval_s: float = 0.5,
                 on_load: Callable[[RouteTable], None] | None = None):
        self.registry = registry
        self.interval_s = interval_s
        self.on_load = on_load  # told of every table loaded (the metrics seed new endpoints)
        self.table = RouteTable()
        self.refresh_errors = 0
        self.last_check: float = 0.0  # monotonic time of the last successful signature read
        self._task: asyncio.Task[None] | None = None

    def refresh(self) -> bool:
        """Blocking: check the signature, reload if it moved. True when a reload happened."""
        sig = signature(self.registry)
        self.last_check = time.monotonic()
        if sig == self.table.signature:
            return False
        self.table = load_table(self.registry, sig)
        if self.on_load is not None:
            self.on_load(self.table)
        return True

    async def refresh_async(self) -> bool:
        try:
            return await asyncio.to_thread(self.refresh)
        except SQLAlchemyError as exc:  # keep serving the last good table
            self.refresh_errors += 1
            log.warning("route table refresh failed (%s); serving the last table", exc)
            return False

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.refresh_async()

    async def start(self) -> None:
        await self.refresh_async()
        self._task = asyncio.create_task(self._loop(), name="gateway-route-refresh")
        self._task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
