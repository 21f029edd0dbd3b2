"""Checkpoint leases: a serve run's read-only claim on a checkpoint's bytes.

Taken with the endpoint (or a replacement), tied to the serve run that reads them,
released only once that run is confirmed ended. The garbage collector's side of the
same rows is in `checkpoint_lifecycle.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from inference_endpoints.core.errors import invalid
from inference_endpoints.core.status import CheckpointStatus
from inference_endpoints.core.validation import CheckpointView
from inference_endpoints.persistence.models import Checkpoint, CheckpointLease, utcnow


def lock_checkpoint(s: Session, checkpoint_id: str,
                    statuses: Sequence[str] = (CheckpointStatus.AVAILABLE,)) -> bool:
    """Lock a checkpoint's row for this transaction if its status is one of `statuses`.

    A no-op UPDATE guarded on the status takes the row's write lock and re-checks the status
    in one statement, so a concurrent delete or reclaim either commits first (False) or waits
    until this transaction, and the lease it writes, has committed.
    """
    result: Any = s.execute(update(Checkpoint)
                            .where(col(Checkpoint.id) == checkpoint_id,
                                   col(Checkpoint.status).in_(list(statuses)))
                            .values(status=Checkpoint.status))
    return bool(result.rowcount == 1)  # a CursorResult: UPDATE reports the rows it matched


class Leases:
    """Mixed into `Registry`; `session` is its short-transaction factory."""

    session: Callable[[], AbstractContextManager[Session]]

    def open_leases(self, checkpoint_id: str) -> list[CheckpointLease]:
        with self.session() as s:
            q = select(CheckpointLease).where(
                CheckpointLease.checkpoint_id == checkpoint_id,
                col(CheckpointLease.released_at).is_(None),
            )
            return list(s.exec(q))

    def set_lease_run(self, endpoint_id: str, flow_run_id: str) -> None:
        with self.session() as s:
            s.execute(
                update(CheckpointLease)
                .where(col(CheckpointLease.endpoint_id) == endpoint_id,
                       col(CheckpointLease.released_at).is_(None))
                .values(flow_run_id=flow_run_id)
            )

    def assign_unowned_leases(self, endpoint_id: str, flow_run_id: str) -> int:
        """A first start's leases (taken with the record) now name the run that reads them."""
        with self.session() as s:
            result: Any = s.execute(
                update(CheckpointLease)
                .where(col(CheckpointLease.endpoint_id) == endpoint_id,
                       col(CheckpointLease.released_at).is_(None),
                       col(CheckpointLease.flow_run_id).is_(None))
                .values(flow_run_id=flow_run_id))
            return int(result.rowcount)

    def lease_for_candidate(self, endpoint_id: str, endpoint_name: str,
                            checkpoints: list[CheckpointView], run_id: str) -> None:
        """Lease the replacement's checkpoint(s) for its own run; they must be available.

        Idempotent per run: two reconcile passes that submit the same run at once (a flow's
        kick and the scheduled pass) lease it once. The checkpoint's row lock orders them, so
        the second sees the first's lease.
        """
        with self.session() as s:
            for view in checkpoints:
                if not lock_checkpoint(s, view.id):
                    raise invalid("checkpoint_deleted", "checkpoint",
                                  f"Checkpoint {view.name!r} is no longer available.",
                                  "Pick another checkpoint.")
                held = s.exec(select(CheckpointLease.id).where(
                    CheckpointLease.checkpoint_id == view.id, CheckpointLease.endpoint_id == endpoint_id,
                    CheckpointLease.flow_run_id == run_id,
                    col(CheckpointLease.released_at).is_(None))).first()
                if held is None:
                    s.add(CheckpointLease(checkpoint_id=view.id, endpoint_id=endpoint_id,
                                          endpoint_name=endpoint_name, flow_run_id=run_id))

    def release_run_leases(self, run_id: str) -> int:
        """Release the leases one serve run held, once that run is confirmed ended."""
        return self._release(col(CheckpointLease.flow_run_id) == run_id)

    def _release(self, which: Any) -> int:
        with self.session() as s:
            result: Any = s.execute(
                update(CheckpointLease)
                .where(which, col(CheckpointLease.released_at).is_(None))
                .values(released_at=utcnow())
            )
            return int(result.rowcount)

    def release_leases(self, endpoint_id: str) -> int:
        """Called only once the endpoint's serve run is confirmed ended."""
        return self._release(col(CheckpointLease.endpoint_id) == endpoint_id)

    def open_lease_count(self, endpoint_id: str | None = None) -> int:
        with self.session() as s:
            q = select(func.count()).select_from(CheckpointLease).where(
                col(CheckpointLease.released_at).is_(None))
            if endpoint_id:
                q = q.where(CheckpointLease.endpoint_id == endpoint_id)
            return int(s.exec(q).one())


