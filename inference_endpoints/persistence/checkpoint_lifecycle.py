"""A checkpoint's life after `available`: delete the record, then `reclaiming` → `reclaimed`.

Every write is one guarded UPDATE (`WHERE status = <expected>`), so two actors
racing on a row cannot both win, on SQLite and on PostgreSQL under READ COMMITTED.
The lease side of the race lives in `Registry.record_endpoint`: it takes the
lease in the same transaction as an UPDATE guarded on `available`, so a delete
either commits first (and the create is refused) or waits for the lease to commit.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, case, func, update
from sqlalchemy import select as sa_select
from sqlalchemy.sql import Executable
from sqlmodel import Session, col, select

from inference_endpoints.core.errors import invalid
from inference_endpoints.core.gc import CheckpointFact, Facts, LeaseFact
from inference_endpoints.core.status import CheckpointKind, CheckpointStatus
from inference_endpoints.persistence.models import Checkpoint, CheckpointLease, Endpoint, utcnow
from inference_endpoints.persistence.registry import Registry, lock_checkpoint

CANDIDATE_STATUSES = (CheckpointStatus.DELETED.value, CheckpointStatus.RECLAIMING.value)
SCAN_ABOVE = 20_000  # candidates; see load_leases
IDS_PER_QUERY = 5_000


@dataclass(frozen=True)
class LeaseHolder:
    """An endpoint whose lease on a checkpoint is still open."""

    endpoint_id: str
    endpoint_name: str
    endpoint_status: str | None  # None once the endpoint record was removed
    flow_run_id: str | None

    def label(self) -> str:
        return f"{self.endpoint_name} ({self.endpoint_status or 'removed'})"


@dataclass(frozen=True)
class DeleteAnswer:
    checkpoint: Checkpoint
    newly_deleted: bool
    holders: tuple[LeaseHolder, ...]
    orphaned_adapters: tuple[str, ...]  # available LoRA adapters on this base, no longer servable

    @property
    def held(self) -> bool:
        return bool(self.holders)

    def message(self) -> str:
        name = f"{self.checkpoint.name} ({self.checkpoint.id})"
        status = self.checkpoint.status
        if status == CheckpointStatus.RECLAIMED:
            return f"{name} was already deleted and its bytes reclaimed."
        head = f"Deleted {name}." if self.newly_deleted else f"{name} was already {status}."
        if status == CheckpointStatus.RECLAIMING:
            return f"{head} Its bytes are being reclaimed."
        if self.held:
            names = ", ".join(h.label() for h in self.holders)
            text = (f"{head} New endpoints are refused. Its bytes are held by {names}: they keep "
                    "serving, and the bytes are reclaimed at the first collection after every one "
                    "of them has stopped.")
        else:
            text = (f"{head} New endpoints are refused. No endpoint holds it: its bytes will be "
                    "reclaimed at the next collection (`endpoints gc`, or the schedule).")
        if self.orphaned_adapters:
            text += (" LoRA adapters on it can no longer be served: "
                     + ", ".join(self.orphaned_adapters) + ".")
        return text

    def to_dict(self) -> dict[str, Any]:
        """The API's answer to a delete."""
        return {
            "id": self.checkpoint.id, "name": self.checkpoint.name, "status": self.checkpoint.status,
            "newly_deleted": self.newly_deleted,
            "bytes": "held" if self.held else "reclaimable at the next collection",
            "held_by": [{"endpoint": h.endpoint_name, "endpoint_id": h.endpoint_id,
                         "endpoint_status": h.endpoint_status, "serve_run": h.flow_run_id}
                        for h in self.holders],
            "orphaned_adapters": list(self.orphaned_adapters),
            "message": self.message(),
        }


def delete_checkpoint(registry: Registry, org_id: str, ref: str) -> DeleteAnswer:
    """Mark the record `deleted` now; bytes wait for the collector. Idempotent.

    `ref` is an id or a name; an id is tried first, in the guarded UPDATE itself.
    """
    checkpoint_id = ref if _guarded_delete(registry, org_id, ref) else None
    newly = checkpoint_id is not None
    if checkpoint_id is None:
        row = registry.find_checkpoint(org_id, ref)
        if row is None:
            raise invalid("checkpoint_not_found", "checkpoint",
                          f"No checkpoint {ref!r} in this organization.",
                          "List checkpoints with `endpoints checkpoint list --all`.")
        checkpoint_id = row.id
        newly = row.id != ref and _guarded_delete(registry, org_id, row.id)
    # Read after the commit: every lease taken before the delete is visible, none can follow.
    with registry.session() as s:
        fresh = s.get(Checkpoint, checkpoint_id)
        assert fresh is not None
        adapters = s.exec(select(Checkpoint.name).where(
            Checkpoint.base_checkpoint_id == checkpoint_id, Checkpoint.kind == CheckpointKind.LORA.value,
            Checkpoint.status == CheckpointStatus.AVAILABLE.value)).all()
        holders = _open_holders(s, [checkpoint_id], None).get(checkpoint_id, [])
    return DeleteAnswer(fresh, newly, tuple(holders), tuple(sorted(adapters)))


def _guarded_delete(registry: Registry, org_id: str, checkpoint_id: str) -> bool:
    with registry.session() as s:
        result = s.execute(
            update(Checkpoint)
            .where(col(Checkpoint.id) == checkpoint_id, col(Checkpoint.org_id) == org_id,
                   col(Checkpoint.status) == CheckpointStatus.AVAILABLE.value)
            .values(status=CheckpointStatus.DELETED.value, deleted_at=utcnow())
        )
        return bool(result.rowcount == 1)


def open_holders(registry: Registry, checkpoint_ids: Iterable[str] | None = None,
                 org_id: str | None = None) -> dict[str, list[LeaseHolder]]:
    """Open leases by checkpoint, with the endpoint's status (None if its record is gone)."""
    with registry.session() as s:
        return _open_holders(s, checkpoint_ids, org_id)


def _open_holders(s: Session, checkpoint_ids: Iterable[str] | None,
                  org_id: str | None) -> dict[str, list[LeaseHolder]]:
    q = (sa_select(col(CheckpointLease.checkpoint_id), col(CheckpointLease.endpoint_id),
                   col(CheckpointLease.endpoint_name), col(Endpoint.status),
                   col(CheckpointLease.flow_run_id))
         .select_from(CheckpointLease)
         .outerjoin(Endpoint, col(Endpoint.id) == col(CheckpointLease.endpoint_id))
         .where(col(CheckpointLease.released_at).is_(None)))
    if checkpoint_ids is not None:
        q = q.where(col(CheckpointLease.checkpoint_id).in_(list(checkpoint_ids)))
    if org_id is not None:
        q = q.join(Checkpoint, col(Checkpoint.id) == col(CheckpointLease.checkpoint_id)).where(
            col(Checkpoint.org_id) == org_id)
    found: dict[str, list[LeaseHolder]] = defaultdict(list)
    for ckpt_id, ep_id, ep_name, ep_status, run_id in s.execute(q):
        found[ckpt_id].append(LeaseHolder(ep_id, ep_name, ep_status, run_id))
    return dict(found)


def list_with_holders(registry: Registry, org_id: str, *, include_deleted: bool) -> (
    list[tuple[Checkpoint, list[LeaseHolder]]]
):
    rows = registry.list_checkpoints(org_id, include_deleted=include_deleted)
    holders = open_holders(registry, org_id=org_id)
    return [(row, holders.get(row.id, [])) for row in rows]


# ---- facts for the planner ------------------------------------------------------------------

def load_candidates(registry: Registry, limit: int | None = None) -> list[CheckpointFact]:
    """Checkpoints the collector may act on. Must be read *before* their leases (see load_facts).

    With a `limit`, unfinished `reclaiming` ones come first and the rest is a random
    sample: checkpoints held for a long time cannot starve newer ones out of every page.
    """
    q = (sa_select(col(Checkpoint.id), col(Checkpoint.org_id), col(Checkpoint.name),
                   col(Checkpoint.location), col(Checkpoint.status), col(Checkpoint.size_bytes))
         .where(col(Checkpoint.status).in_(CANDIDATE_STATUSES)))
    if limit is None:
        q = q.order_by(col(Checkpoint.id))
    else:
        reclaiming = col(Checkpoint.status) == CheckpointStatus.RECLAIMING.value
        q = q.order_by(reclaiming.desc(), func.random()).limit(limit)
    with registry.session() as s:
        return [CheckpointFact(cid, org, name, loc, CheckpointStatus(status), int(size))
                for cid, org, name, loc, status, size in _raw_rows(s.connection(), q)]


def count_candidates(registry: Registry) -> int:
    with registry.session() as s:
        q = sa_select(func.count()).select_from(Checkpoint).where(
            col(Checkpoint.status).in_(CANDIDATE_STATUSES))
        return int(s.execute(q).scalar_one())


def load_leases(registry: Registry, candidates: Iterable[CheckpointFact]) -> dict[str, list[LeaseFact]]:
    """Every lease (open or released) on the candidates.

    Up to `SCAN_ABOVE` candidates (the steady state, and one page of a mass delete): their
    leases by id, a few thousand ids per query. Beyond: one sequential pass over all
    leases, filtered here, which beats an index probe per lease. Rows come straight from
    the driver and `created_at` only where it matters (no run yet): at a million leases,
    SQLAlchemy's row objects and timestamp parsing would cost more than the whole plan.
    """
    wanted = {c.id for c in candidates}
    if not wanted:
        return {}
    lease = CheckpointLease
    query = sa_select(col(lease.checkpoint_id), col(lease.endpoint_id), col(lease.endpoint_name),
                      col(lease.flow_run_id), col(lease.released_at).is_not(None),
                      case((col(lease.flow_run_id).is_(None), col(lease.created_at))))
    rows: list[tuple[Any, ...]] = []
    with registry.session() as s:
        conn = s.connection()
        if len(wanted) > SCAN_ABOVE:
            rows = _raw_rows(conn, query)
        else:
            for chunk in _chunks(sorted(wanted)):
                rows += _raw_rows(conn, query.where(col(lease.checkpoint_id).in_(chunk)))
    with gc_paused():
        return _group(rows, wanted)


def load_backend_urls(registry: Registry, endpoint_ids: Collection[str]) -> dict[str, str]:
    """The backend address of each of these endpoints that has one now (a removed one has none).

    Read after the run states, never before: see `gc.Evidence`.
    """
    if not endpoint_ids:
        return {}
    query = sa_select(col(Endpoint.id), col(Endpoint.backend_url)).where(
        col(Endpoint.backend_url).is_not(None))
    found: dict[str, str] = {}
    with registry.session() as s:
        conn = s.connection()
        if len(endpoint_ids) > SCAN_ABOVE:
            wanted = set(endpoint_ids)
            found.update((eid, url) for eid, url in _raw_rows(conn, query) if eid in wanted)
        else:
            for chunk in _chunks(sorted(endpoint_ids)):
                found.update(_raw_rows(conn, query.where(col(Endpoint.id).in_(chunk))))
    return found


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(ids), IDS_PER_QUERY):
        yield ids[i:i + IDS_PER_QUERY]


def _group(rows: list[tuple[Any, ...]], wanted: set[str]) -> dict[str, list[LeaseFact]]:
    """Driver rows to `LeaseFact`s by checkpoint."""
    leases: dict[str, list[LeaseFact]] = {}
    new = tuple.__new__  # LeaseFact(...) without the generated __new__'s frame: a million rows
    for ckpt_id, ep_id, ep_name, run_id, released, created_at in rows:
        if ckpt_id not in wanted:
            continue
        if created_at is not None:
            created_at = _timestamp(created_at)
        fact = new(LeaseFact, (ckpt_id, ep_id, ep_name, run_id, bool(released), created_at))
        found = leases.get(ckpt_id)
        if found is None:
            leases[ckpt_id] = [fact]
        else:
            found.append(fact)
    return leases


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a million small objects are built.

    They hold no cycles, but allocating them triggers collections that walk the
    whole heap again and again: pausing halves a large collection's load and plan.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _raw_rows(conn: Connection, stmt: Executable) -> list[tuple[Any, ...]]:
    """Execute as usual (cached compilation, bound parameters), then read the DBAPI cursor
    directly: plain tuples, no per-row processing."""
    result = conn.execute(stmt)
    try:
        return list(result.cursor.fetchall())
    finally:
        result.close()


def _timestamp(value: datetime | str | None) -> datetime | None:
    """SQLite hands timestamps back as text (naive UTC, as SQLAlchemy stored them)."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def load_facts(registry: Registry, now: datetime | None = None, limit: int | None = None) -> Facts:
    """Candidates first, then leases: this order is what makes two short reads safe.

    A checkpoint seen as `deleted` can gain no lease afterwards (leases need `available`,
    checked in the lease's own transaction), so the later lease read sees all of them.
    Read the other way round, a create and a delete could both slip in between.
    """
    candidates = load_candidates(registry, limit)
    return Facts(candidates, load_leases(registry, candidates), now or utcnow())


# ---- the two guarded steps of reclamation -------------------------------------------------

class Marked(StrEnum):
    DONE = "done"
    NOT_DELETED = "no longer `deleted` (another collection took it)"
    LEASES_CHANGED = "its leases changed since planning (a restart moved them)"


class _LeasesChanged(Exception):
    """Raised inside a transaction to roll it back."""


def mark_reclaiming(registry: Registry, checkpoint_id: str,
                    lease_runs: Sequence[str] | None = None) -> Marked:
    """`deleted` → `reclaiming`, written before any byte is deleted.

    With `lease_runs` (the runs the decision saw, "" for none, sorted), the leases are read
    again in the same transaction, after the UPDATE has locked the checkpoint's row, and the
    change is rolled back if any lease appeared or changed run: a restart moving an
    endpoint's leases to a new run (`transfer_leases`) takes the same row lock first.
    """
    try:
        with registry.session() as s:
            result = s.execute(
                update(Checkpoint)
                .where(col(Checkpoint.id) == checkpoint_id,
                       col(Checkpoint.status) == CheckpointStatus.DELETED.value)
                .values(status=CheckpointStatus.RECLAIMING.value)
            )
            if result.rowcount != 1:
                return Marked.NOT_DELETED
            if lease_runs is not None:
                now = s.exec(select(CheckpointLease.flow_run_id).where(
                    CheckpointLease.checkpoint_id == checkpoint_id)).all()
                if tuple(sorted(run or "" for run in now)) != tuple(lease_runs):
                    raise _LeasesChanged
    except _LeasesChanged:
        return Marked.LEASES_CHANGED
    return Marked.DONE


def transfer_leases(registry: Registry, endpoint_id: str, run_id: str) -> bool:
    """A restart's new run takes over the endpoint's open leases, in one transaction.

    Allowed on a `deleted` checkpoint (the endpoint keeps serving it), refused once it is
    `reclaiming` or `reclaimed`. Each checkpoint's row is locked with a guarded UPDATE
    first, as `record_endpoint` does, so a collector marking it `reclaiming` either
    commits first (and the transfer is refused) or waits and then sees the new lease.
    Returns False, changing nothing, when refused.
    """
    allowed = (CheckpointStatus.AVAILABLE.value, CheckpointStatus.DELETED.value)
    try:
        with registry.session() as s:
            open_leases = list(s.exec(select(CheckpointLease).where(
                CheckpointLease.endpoint_id == endpoint_id,
                col(CheckpointLease.released_at).is_(None))))
            # Lock adapters before bases, the order record_endpoint uses, to avoid deadlocks.
            ids = {lease.checkpoint_id for lease in open_leases}
            rows = s.exec(select(Checkpoint.id, Checkpoint.base_checkpoint_id)
                          .where(col(Checkpoint.id).in_(ids))).all()
            for cid, _base in sorted(rows, key=lambda r: (r[1] is None, r[0])):
                if not lock_checkpoint(s, cid, allowed):
                    raise _LeasesChanged
            now = utcnow()
            for lease in open_leases:
                if lease.flow_run_id == run_id:
                    continue
                s.add(CheckpointLease(checkpoint_id=lease.checkpoint_id, endpoint_id=endpoint_id,
                                      endpoint_name=lease.endpoint_name, flow_run_id=run_id))
                lease.released_at = now
                s.add(lease)
    except _LeasesChanged:
        return False
    return True


def mark_reclaimed(registry: Registry, checkpoint_id: str) -> bool:
    """`reclaiming` → `reclaimed`, written once the bytes are gone."""
    with registry.session() as s:
        result = s.execute(
            update(Checkpoint)
            .where(col(Checkpoint.id) == checkpoint_id,
                   col(Checkpoint.status) == CheckpointStatus.RECLAIMING.value)
            .values(status=CheckpointStatus.RECLAIMED.value, reclaimed_at=utcnow())
        )
        return bool(result.rowcount == 1)
