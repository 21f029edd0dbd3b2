"""Read queries the console needs beyond `Registry`'s, each scoped to one organization.

Short sessions, no network calls inside them (the registry's rules).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import func
from sqlmodel import col, select

from inference_endpoints.core.cost import EngineSpan
from inference_endpoints.persistence.models import (
    ActivityEvent,
    ApiKey,
    Checkpoint,
    Endpoint,
    Organization,
    ServeRun,
)
from inference_endpoints.persistence.registry import Registry, hash_key


def org_for_session(registry: Registry, key_hash: str) -> Organization | None:
    """The org of a signed-in session, re-checked on every request (a revoked key signs out)."""
    with registry.session() as s:
        row = s.exec(select(ApiKey).where(ApiKey.key_hash == key_hash)).first()
        if row is None or row.revoked_at is not None:
            return None
        return s.get(Organization, row.org_id)


def session_key_hash(secret: str) -> str:
    return hash_key(secret)


def page_endpoints(registry: Registry, org_id: str, statuses: Sequence[str] = (), *,
                   limit: int = 50, offset: int = 0) -> tuple[list[Endpoint], int]:
    """Newest first, optionally filtered by status; returns the page and the total."""
    with registry.session() as s:
        where = [col(Endpoint.org_id) == org_id]
        if statuses:
            where.append(col(Endpoint.status).in_(list(statuses)))
        total = int(s.exec(select(func.count()).select_from(Endpoint).where(*where)).one())
        q = (select(Endpoint).where(*where)
             .order_by(col(Endpoint.created_at).desc(), col(Endpoint.id)).offset(offset).limit(limit))
        return list(s.exec(q)), total


def checkpoints_by_id(registry: Registry, org_id: str, ids: Iterable[str]) -> dict[str, Checkpoint]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    with registry.session() as s:
        q = select(Checkpoint).where(Checkpoint.org_id == org_id, col(Checkpoint.id).in_(wanted))
        return {row.id: row for row in s.exec(q)}


def engine_spans(registry: Registry, org_id: str, endpoint_ids: Iterable[str] | None = None
                 ) -> dict[str, list[EngineSpan]]:
    """Each endpoint's engines (serve runs that started one), with their instance's price;
    `endpoint_ids` None: every serve run the organization ever had, removed endpoints' too."""
    prices = {name: spec.price_per_hour for name, spec in registry.instances().items()}
    with registry.session() as s:
        q = select(ServeRun.endpoint_id, ServeRun.engine_started_at, ServeRun.ended_at, ServeRun.instance
                   ).where(ServeRun.org_id == org_id, col(ServeRun.engine_started_at).is_not(None))
        if endpoint_ids is not None:
            q = q.where(col(ServeRun.endpoint_id).in_(sorted(set(endpoint_ids))))
        spans: dict[str, list[EngineSpan]] = {}
        for endpoint_id, started, ended, instance in s.exec(q):
            spans.setdefault(endpoint_id, []).append(
                EngineSpan(started, ended, prices.get(instance or "", 0.0)))
        return spans


def org_activity(registry: Registry, org_id: str, *, endpoint_id: str | None = None,
                 limit: int = 100) -> list[ActivityEvent]:
    """The organization's activity, newest first."""
    with registry.session() as s:
        q = select(ActivityEvent).where(ActivityEvent.org_id == org_id)
        if endpoint_id is not None:
            q = q.where(ActivityEvent.endpoint_id == endpoint_id)
        q = q.order_by(col(ActivityEvent.id).desc()).limit(limit)
        return list(s.exec(q))


def endpoint_names(registry: Registry, org_id: str) -> dict[str, str]:
    with registry.session() as s:
        q = select(Endpoint.id, Endpoint.name).where(Endpoint.org_id == org_id)
        return dict(s.exec(q).all())
