"""A checkpoint's life after `available`: delete the record, then `reclaiming` → `reclaimed`.

Every write is one guarded UPDATE (`WHERE status = <expected>`), so two actors
racing on a row cannot both win, on SQLite and on PostgreSQL under READ COMMITTED.
The lease side of the race lives in `Registry.record_endpoint`: it takes the
lease in the same transaction as an UPDATE guarded on `available`, so a delete
either commits first (and the create is refused) or waits for the lease to commit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select as sa_select
from sqlalchemy import update
from sqlmodel import Session, col, select

from inference_endpoints.errors import invalid
from inference_endpoints.gc import CheckpointFact, Facts, LeaseFact
from inference_endpoints.models import Checkpoint, CheckpointLease, Endpoint, utcnow
from inference_endpoints.registry import Registry
from inference_endpoints.status import CheckpointKind, CheckpointStatus

CANDIDATE_STATUSES = (CheckpointStatus.DELETED.value, CheckpointStatus.RECLAIMING.value)


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


def delete_checkpoint(registry: Registry, org_id: str, ref: str) -> DeleteAnswer:
    """Mark the record `deleted` now; bytes wait for the collector. Idempotent."""
    row = registry.find_checkpoint(org_id, ref)
    if row is None:
        raise invalid("checkpoint_not_found", "checkpoint", f"No checkpoint {ref!r} in this organization.",
                      "List checkpoints with `endpoints checkpoint list --all`.")
    with registry.session() as s:
        result = s.execute(
            update(Checkpoint)
            .where(col(Checkpoint.id) == row.id, col(Checkpoint.org_id) == org_id,
                   col(Checkpoint.status) == CheckpointStatus.AVAILABLE.value)
            .values(status=CheckpointStatus.DELETED.value, deleted_at=utcnow())
        )
        newly = result.rowcount == 1
    # Read after the commit: every lease taken before the delete is visible, none can follow.
    with registry.session() as s:
        fresh = s.get(Checkpoint, row.id)
        assert fresh is not None
        adapters = s.exec(select(Checkpoint.name).where(
            Checkpoint.base_checkpoint_id == row.id, Checkpoint.kind == CheckpointKind.LORA.value,
            Checkpoint.status == CheckpointStatus.AVAILABLE.value)).all()
        holders = _open_holders(s, [row.id], None).get(row.id, [])
    return DeleteAnswer(fresh, newly, tuple(holders), tuple(sorted(adapters)))


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

def load_candidates(registry: Registry) -> list[CheckpointFact]:
    """Checkpoints the collector may act on. Must be read *before* their leases (see load_facts)."""
    q = (sa_select(col(Checkpoint.id), col(Checkpoint.org_id), col(Checkpoint.name),
                   col(Checkpoint.location), col(Checkpoint.status), col(Checkpoint.size_bytes))
         .where(col(Checkpoint.status).in_(CANDIDATE_STATUSES)).order_by(col(Checkpoint.id)))
    with registry.session() as s:
        return [CheckpointFact(cid, org, name, loc, CheckpointStatus(status), int(size))
                for cid, org, name, loc, status, size in s.execute(q)]


def load_leases(registry: Registry, candidates: Iterable[CheckpointFact]) -> dict[str, list[LeaseFact]]:
    """Every lease (open or released) on the candidates, with the endpoint's backend address.

    One query, joined on status rather than `IN (ids)`: there may be 100,000 candidates.
    """
    wanted = {c.id for c in candidates}
    q = (sa_select(col(CheckpointLease.checkpoint_id), col(CheckpointLease.endpoint_id),
                   col(CheckpointLease.endpoint_name), col(CheckpointLease.flow_run_id),
                   col(CheckpointLease.released_at), col(CheckpointLease.created_at),
                   col(Endpoint.backend_url))
         .select_from(CheckpointLease)
         .join(Checkpoint, col(Checkpoint.id) == col(CheckpointLease.checkpoint_id))
         .outerjoin(Endpoint, col(Endpoint.id) == col(CheckpointLease.endpoint_id))
         .where(col(Checkpoint.status).in_(CANDIDATE_STATUSES)))
    leases: dict[str, list[LeaseFact]] = defaultdict(list)
    with registry.session() as s:
        for ckpt_id, ep_id, ep_name, run_id, released_at, created_at, url in s.execute(q):
            if ckpt_id in wanted:
                leases[ckpt_id].append(LeaseFact(ckpt_id, ep_id, ep_name, run_id,
                                                 released_at is not None, created_at, url))
    return dict(leases)


def load_facts(registry: Registry, now: datetime | None = None) -> Facts:
    """Candidates first, then leases: this order is what makes two short reads safe.

    A checkpoint seen as `deleted` can gain no lease afterwards (leases need `available`,
    checked in the lease's own transaction), so the later lease read sees all of them.
    Read the other way round, a create and a delete could both slip in between.
    """
    candidates = load_candidates(registry)
    return Facts(candidates, load_leases(registry, candidates), now or utcnow())


# ---- the two guarded steps of reclamation -------------------------------------------------

def mark_reclaiming(registry: Registry, checkpoint_id: str) -> bool:
    """`deleted` → `reclaiming`, written before any byte is deleted. False if someone else moved it."""
    with registry.session() as s:
        result = s.execute(
            update(Checkpoint)
            .where(col(Checkpoint.id) == checkpoint_id,
                   col(Checkpoint.status) == CheckpointStatus.DELETED.value)
            .values(status=CheckpointStatus.RECLAIMING.value)
        )
        return bool(result.rowcount == 1)


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
