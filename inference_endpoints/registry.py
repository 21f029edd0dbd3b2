"""Queries and guarded updates on the registry.

Rules: transactions are short and never hold a network call; every status change
goes through `Registry.transition`, which is a guarded UPDATE (correct under
concurrency on SQLite and PostgreSQL alike) and writes an activity event.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from inference_endpoints.catalog import CATALOG, InstanceSpec
from inference_endpoints.db import migrate, session_scope
from inference_endpoints.errors import invalid
from inference_endpoints.facts import CheckpointFacts
from inference_endpoints.models import (
    ActivityEvent,
    ApiKey,
    Checkpoint,
    CheckpointLease,
    Endpoint,
    InstanceType,
    Organization,
    utcnow,
)
from inference_endpoints.serving_config import ServingSpec
from inference_endpoints.status import (
    REASON_HINTS,
    CheckpointStatus,
    EndpointStatus,
    ReasonCode,
    sources_for,
)
from inference_endpoints.validation import CheckpointView, ValidatedCreate

KEY_PREFIX = "ie"

_STATUS_TIMESTAMP = {
    EndpointStatus.DEPLOYING: "scheduled_at",
    EndpointStatus.LOADING: "loading_at",
    EndpointStatus.HEALTHY: "healthy_at",
    EndpointStatus.STOPPING: "stopping_at",
    EndpointStatus.STOPPED: "ended_at",
    EndpointStatus.FAILED: "ended_at",
}


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, so a fast hash is enough (no dictionary to attack).
    return hashlib.sha256(key.encode()).hexdigest()


def instance_spec(row: InstanceType) -> InstanceSpec:
    return InstanceSpec(
        name=row.name,
        accelerator=row.accelerator,
        gpu_count=row.gpu_count,
        memory_per_device_mib=row.memory_per_device_mib,
        compute_capability=row.compute_capability,
        precisions=tuple(row.precisions.split(",")),
        fp8=row.fp8,
        price_per_hour=row.price_per_hour,
        work_pool=row.work_pool,
        runtime=row.runtime,
        startup_timeout_s=row.startup_timeout_s,
        description=row.description,
        image=row.image,
        quantizations=tuple(row.quantizations.split(",")),
    )


def instance_row_values(spec: InstanceSpec) -> dict[str, Any]:
    values = {k: v for k, v in asdict(spec).items() if k not in ("precisions", "quantizations")}
    values["precisions"] = ",".join(spec.precisions)
    values["quantizations"] = ",".join(spec.quantizations)
    return values


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    secret: str  # shown once, never stored


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


class Registry:
    def __init__(self, url: str):
        self.url = url

    def session(self) -> Any:
        return session_scope(self.url)

    # ---- setup -------------------------------------------------------------------------

    def init(self, default_org: str | None = None) -> NewKey | None:
        """Migrate, load the instance catalog, and make sure the default org exists.

        Returns the default org's first key when this call created the org (shown once).
        """
        migrate(self.url)
        self.sync_catalog(CATALOG)
        if default_org and self.get_org_by_name(default_org) is None:
            return self.create_org(default_org)[1]
        return None

    def sync_catalog(self, specs: Sequence[InstanceSpec]) -> None:
        with self.session() as s:
            for spec in specs:
                values = instance_row_values(spec)
                row = s.get(InstanceType, spec.name)
                if row is None:
                    s.add(InstanceType(**values))
                else:
                    row.sqlmodel_update(values)
                    s.add(row)

    # ---- organizations and keys --------------------------------------------------------

    def create_org(self, name: str) -> tuple[Organization, NewKey]:
        with self.session() as s:
            if s.exec(select(Organization).where(Organization.name == name)).first():
                raise invalid(
                    "org_exists", "name", f"Organization {name!r} already exists.",
                    "Pick another name.",
                )
            org = Organization(name=name)
            s.add(org)
            s.flush()
            new = self._new_key(s, org.id, "default")
        return org, new

    def get_org_by_name(self, name: str) -> Organization | None:
        with self.session() as s:
            return s.exec(select(Organization).where(Organization.name == name)).first()

    def get_org(self, org_id: str) -> Organization | None:
        with self.session() as s:
            return s.get(Organization, org_id)

    def _new_key(self, s: Session, org_id: str, name: str) -> NewKey:
        prefix = secrets.token_hex(4)
        secret = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
        row = ApiKey(org_id=org_id, name=name, prefix=f"{KEY_PREFIX}_{prefix}",
                     key_hash=hash_key(secret))
        s.add(row)
        s.flush()
        return NewKey(row, secret)

    def create_key(self, org_id: str, name: str) -> NewKey:
        with self.session() as s:
            return self._new_key(s, org_id, name)

    def list_keys(self, org_id: str) -> list[ApiKey]:
        with self.session() as s:
            q = select(ApiKey).where(ApiKey.org_id == org_id).order_by(col(ApiKey.created_at))
            return list(s.exec(q))

    def revoke_key(self, org_id: str, key_ref: str) -> ApiKey:
        with self.session() as s:
            q = select(ApiKey).where(
                ApiKey.org_id == org_id, (ApiKey.id == key_ref) | (ApiKey.prefix == key_ref)
            )
            row = s.exec(q).first()
            if row is None:
                raise invalid("key_not_found", "key", f"No API key {key_ref!r}.",
                              "List keys with `endpoints key list`.")
            row.revoked_at = row.revoked_at or utcnow()
            s.add(row)
            return row

    def org_for_key(self, secret: str) -> Organization | None:
        """The organization a presented key belongs to, or None if unknown or revoked."""
        with self.session() as s:
            row = s.exec(select(ApiKey).where(ApiKey.key_hash == hash_key(secret))).first()
            if row is None or row.revoked_at is not None:
                return None
            return s.get(Organization, row.org_id)

    # ---- instances ---------------------------------------------------------------------

    def instances(self) -> dict[str, InstanceSpec]:
        with self.session() as s:
            rows = s.exec(select(InstanceType).order_by(col(InstanceType.price_per_hour)))
            return {row.name: instance_spec(row) for row in rows}

    # ---- checkpoints -------------------------------------------------------------------

    def add_checkpoint(self, checkpoint: Checkpoint) -> Checkpoint:
        with self.session() as s:
            s.add(checkpoint)
        return checkpoint

    def checkpoint_name_taken(self, org_id: str, name: str) -> bool:
        with self.session() as s:
            q = select(Checkpoint.id).where(
                Checkpoint.org_id == org_id,
                Checkpoint.name == name,
                Checkpoint.status == CheckpointStatus.AVAILABLE,
            )
            return s.exec(q).first() is not None

    def find_checkpoint(self, org_id: str, ref: str, *, available_only: bool = False) -> (
        Checkpoint | None
    ):
        """By id, or by name (the newest available one wins)."""
        with self.session() as s:
            return self._find_checkpoint(s, org_id, ref, available_only)

    def _find_checkpoint(
        self, s: Session, org_id: str, ref: str, available_only: bool
    ) -> Checkpoint | None:
        row = s.get(Checkpoint, ref)
        if row is not None and row.org_id == org_id:
            return row
        q = select(Checkpoint).where(Checkpoint.org_id == org_id, Checkpoint.name == ref)
        if available_only:
            q = q.where(Checkpoint.status == CheckpointStatus.AVAILABLE)
        q = q.order_by(
            (col(Checkpoint.status) == CheckpointStatus.AVAILABLE).desc(),
            col(Checkpoint.created_at).desc(),
        )
        return s.exec(q).first()

    def checkpoint_view(self, org_id: str, ref: Any) -> CheckpointView | None:
        if not isinstance(ref, str) or not ref:
            return None
        with self.session() as s:
            row = self._find_checkpoint(s, org_id, ref, False)
            if row is None:
                return None
            base = s.get(Checkpoint, row.base_checkpoint_id) if row.base_checkpoint_id else None
            return _view(row, _view(base) if base else None)

    def list_checkpoints(self, org_id: str, *, include_deleted: bool = False) -> list[Checkpoint]:
        with self.session() as s:
            q = select(Checkpoint).where(Checkpoint.org_id == org_id)
            if not include_deleted:
                q = q.where(Checkpoint.status == CheckpointStatus.AVAILABLE)
            return list(s.exec(q.order_by(col(Checkpoint.created_at))))

    def open_leases(self, checkpoint_id: str) -> list[CheckpointLease]:
        with self.session() as s:
            q = select(CheckpointLease).where(
                CheckpointLease.checkpoint_id == checkpoint_id,
                col(CheckpointLease.released_at).is_(None),
            )
            return list(s.exec(q))

    # ---- endpoints ---------------------------------------------------------------------

    def endpoint_name_taken(self, org_id: str, name: Any) -> bool:
        if not isinstance(name, str):
            return False
        with self.session() as s:
            q = select(Endpoint.id).where(Endpoint.org_id == org_id, Endpoint.name == name)
            return s.exec(q).first() is not None

    def find_by_idempotency_key(self, org_id: str, key: str) -> Endpoint | None:
        with self.session() as s:
            q = select(Endpoint).where(Endpoint.org_id == org_id, Endpoint.idempotency_key == key)
            return s.exec(q).first()

    def record_endpoint(
        self,
        org_id: str,
        request: ValidatedCreate,
        spec: ServingSpec,
        *,
        endpoint_id: str,
        idempotency_key: str | None,
        create_run_id: str | None = None,
    ) -> Endpoint:
        """Insert the endpoint and lease its checkpoint(s) in one transaction.

        The guarded UPDATE re-checks that each checkpoint is still `available` and
        row-locks it until commit, so a concurrent delete either happens before
        (and we refuse) or after (and it sees our lease).
        """
        try:
            return self._record_endpoint(org_id, request, spec, endpoint_id=endpoint_id,
                                         idempotency_key=idempotency_key,
                                         create_run_id=create_run_id)
        except IntegrityError:
            # Two submissions with the same idempotency key raced; the first one won.
            existing = self.find_by_idempotency_key(org_id, idempotency_key or "")
            if existing is None:
                raise invalid(
                    "name_taken", "name",
                    f"An endpoint named {request.name!r} already exists in this organization.",
                    "Pick another name, or remove the existing endpoint first (`endpoints rm`).",
                ) from None
            return existing

    def _record_endpoint(
        self,
        org_id: str,
        request: ValidatedCreate,
        spec: ServingSpec,
        *,
        endpoint_id: str,
        idempotency_key: str | None,
        create_run_id: str | None,
    ) -> Endpoint:
        ckpt = request.checkpoint
        leased = [ckpt] + ([ckpt.base] if ckpt.base is not None else [])
        with self.session() as s:
            if idempotency_key:
                existing = s.exec(
                    select(Endpoint).where(
                        Endpoint.org_id == org_id, Endpoint.idempotency_key == idempotency_key
                    )
                ).first()
                if existing is not None:
                    return existing
            for view in leased:
                if not lock_checkpoint(s, view.id):
                    raise invalid(
                        "checkpoint_deleted", "checkpoint",
                        f"Checkpoint {view.name!r} was deleted while the endpoint was created.",
                        "Pick another checkpoint.",
                    )
            if s.exec(
                select(Endpoint.id).where(Endpoint.org_id == org_id, Endpoint.name == request.name)
            ).first():
                raise invalid(
                    "name_taken", "name",
                    f"An endpoint named {request.name!r} already exists in this organization.",
                    "Pick another name, or remove the existing endpoint first (`endpoints rm`).",
                )
            endpoint = Endpoint(
                id=endpoint_id,
                org_id=org_id,
                name=request.name,
                checkpoint_id=ckpt.id,
                instance=request.instance.name,
                max_context=request.max_context,
                precision=request.precision,
                quantization=request.quantization,
                idempotency_key=idempotency_key,
                create_run_id=create_run_id,
                backend_api_key=spec.api_key,
                served_model_name=spec.served_model_name,
                serving_config_json=spec.to_json(),
            )
            s.add(endpoint)
            for view in leased:
                s.add(CheckpointLease(checkpoint_id=view.id, endpoint_id=endpoint_id,
                                      endpoint_name=request.name))
            s.add(ActivityEvent(org_id=org_id, endpoint_id=endpoint_id, kind="status",
                                to_status=EndpointStatus.PENDING,
                                message=f"Requested on {request.instance.name}"))
            s.flush()
        return endpoint

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        with self.session() as s:
            return s.get(Endpoint, endpoint_id)

    def find_endpoint(self, org_id: str, ref: str) -> Endpoint | None:
        with self.session() as s:
            row = s.get(Endpoint, ref)
            if row is not None and row.org_id == org_id:
                return row
            q = select(Endpoint).where(Endpoint.org_id == org_id, Endpoint.name == ref)
            return s.exec(q).first()

    def list_endpoints(self, org_id: str) -> list[Endpoint]:
        with self.session() as s:
            q = select(Endpoint).where(Endpoint.org_id == org_id).order_by(
                col(Endpoint.created_at)
            )
            return list(s.exec(q))

    def active_endpoints(self) -> list[Endpoint]:
        """Every endpoint, in any organization, that is not stopped or failed."""
        with self.session() as s:
            q = select(Endpoint).where(col(Endpoint.status).not_in(
                [EndpointStatus.STOPPED.value, EndpointStatus.FAILED.value]))
            return list(s.exec(q))

    def transition(
        self,
        endpoint_id: str,
        to: EndpointStatus,
        *,
        reason: ReasonCode | None = None,
        message: str | None = None,
        hint: str | None = None,
        expected_run: str | None = None,
        fields: dict[str, Any] | None = None,
    ) -> bool:
        """The one place an endpoint's status changes. Returns False if not allowed now.

        `expected_run` makes the change conditional on that serve run still being the
        endpoint's live run (a replaced or restarted run must not touch the status);
        `fields` are facts written in the same UPDATE (e.g. the new run of a restart).
        """
        now = utcnow()
        values: dict[str, Any] = {**(fields or {}), "status": to.value, "updated_at": now}
        if to in _STATUS_TIMESTAMP:
            values[_STATUS_TIMESTAMP[to]] = now
        if reason is not None:
            values["reason_code"] = reason.value
            values["reason_message"] = message or ""
            values["reason_hint"] = hint if hint is not None else REASON_HINTS.get(reason, "")
        with self.session() as s:
            row = s.get(Endpoint, endpoint_id)
            if row is None:
                return False
            previous = row.status
            guard = update(Endpoint).where(
                col(Endpoint.id) == endpoint_id,
                col(Endpoint.status).in_([st.value for st in sources_for(to)]),
            )
            if expected_run is not None:
                guard = guard.where(col(Endpoint.serve_run_id) == expected_run)
            result = s.execute(guard.values(**values))
            if result.rowcount != 1:
                return False
            s.add(ActivityEvent(
                org_id=row.org_id, endpoint_id=endpoint_id, kind="status",
                from_status=previous, to_status=to.value,
                reason_code=reason.value if reason else None, message=message or "",
            ))
        return True

    def update_endpoint(self, endpoint_id: str, **fields: Any) -> None:
        """Non-status facts (backend address, run ids). Status goes through `transition`."""
        assert "status" not in fields
        with self.session() as s:
            s.execute(
                update(Endpoint).where(col(Endpoint.id) == endpoint_id)
                .values(updated_at=utcnow(), **fields)
            )

    def promote_candidate(self, endpoint_id: str, live_run: str) -> bool:
        """Switch traffic to the healthy candidate in one guarded UPDATE (rolling replacement)."""
        with self.session() as s:
            row = s.get(Endpoint, endpoint_id)
            if row is None or row.candidate_run_id is None or row.candidate_backend_url is None:
                return False
            result = s.execute(
                update(Endpoint)
                .where(col(Endpoint.id) == endpoint_id, col(Endpoint.serve_run_id) == live_run,
                       col(Endpoint.status) == EndpointStatus.HEALTHY.value,
                       col(Endpoint.candidate_run_id) == row.candidate_run_id)
                .values(serve_run_id=row.candidate_run_id, backend_url=row.candidate_backend_url,
                        checkpoint_id=row.candidate_checkpoint_id,
                        serving_config_json=row.candidate_config_json,
                        generation=row.generation + 1, candidate_run_id=None,
                        candidate_backend_url=None, candidate_checkpoint_id=None,
                        candidate_config_json=None, updated_at=utcnow())
            )
            if result.rowcount != 1:
                return False
            s.add(ActivityEvent(org_id=row.org_id, endpoint_id=endpoint_id, kind="replaced",
                                message=f"traffic switched to checkpoint {row.candidate_checkpoint_id} "
                                        f"(serve run {row.candidate_run_id})"))
        return True

    def record_activity(self, endpoint_id: str, kind: str, message: str) -> None:
        with self.session() as s:
            row = s.get(Endpoint, endpoint_id)
            if row is not None:
                s.add(ActivityEvent(org_id=row.org_id, endpoint_id=endpoint_id, kind=kind,
                                    message=message))

    def activity(self, endpoint_id: str, limit: int = 50) -> list[ActivityEvent]:
        with self.session() as s:
            q = (select(ActivityEvent).where(ActivityEvent.endpoint_id == endpoint_id)
                 .order_by(col(ActivityEvent.id).desc()).limit(limit))
            return list(reversed(list(s.exec(q))))

    def set_lease_run(self, endpoint_id: str, flow_run_id: str) -> None:
        with self.session() as s:
            s.execute(
                update(CheckpointLease)
                .where(col(CheckpointLease.endpoint_id) == endpoint_id,
                       col(CheckpointLease.released_at).is_(None))
                .values(flow_run_id=flow_run_id)
            )

    def lease_for_candidate(self, endpoint_id: str, endpoint_name: str,
                            checkpoints: list[CheckpointView], run_id: str) -> None:
        """Lease the replacement's checkpoint(s) for its own run; they must be available."""
        with self.session() as s:
            for view in checkpoints:
                if not lock_checkpoint(s, view.id):
                    raise invalid("checkpoint_deleted", "checkpoint",
                                  f"Checkpoint {view.name!r} is no longer available.",
                                  "Pick another checkpoint.")
                s.add(CheckpointLease(checkpoint_id=view.id, endpoint_id=endpoint_id,
                                      endpoint_name=endpoint_name, flow_run_id=run_id))

    def release_run_leases(self, run_id: str) -> int:
        """Release the leases one serve run held, once that run is confirmed ended."""
        return self._release(col(CheckpointLease.flow_run_id) == run_id)

    def _release(self, which: Any) -> int:
        with self.session() as s:
            result = s.execute(
                update(CheckpointLease)
                .where(which, col(CheckpointLease.released_at).is_(None))
                .values(released_at=utcnow())
            )
            return int(result.rowcount)

    def restart_times(self, endpoint_id: str) -> list[datetime]:
        with self.session() as s:
            q = select(ActivityEvent.at).where(ActivityEvent.endpoint_id == endpoint_id,
                                               ActivityEvent.kind == "restart")
            return [_aware(t) for t in s.exec(q)]

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

    def remove_endpoint(self, endpoint_id: str) -> None:
        """Delete a stopped or failed endpoint's record, freeing its name and URL."""
        with self.session() as s:
            row = s.get(Endpoint, endpoint_id)
            if row is None:
                return
            if not EndpointStatus(row.status).is_terminal:
                raise invalid(
                    "endpoint_running", "name",
                    f"Endpoint {row.name!r} is {row.status}; stop it before removing it.",
                    "Run `endpoints stop NAME` first (`endpoints rm` does both).",
                )
            for ev in s.exec(select(ActivityEvent).where(ActivityEvent.endpoint_id == endpoint_id)):
                s.delete(ev)
            s.delete(row)

    def counts(self) -> dict[str, int]:
        """Row counts per table; tests use it to prove a rejected request wrote nothing."""
        with self.session() as s:
            return {
                model.__tablename__: int(s.exec(select(func.count()).select_from(model)).one())
                for model in (Organization, ApiKey, Checkpoint, Endpoint, CheckpointLease,
                              ActivityEvent)
            }


def _view(row: Checkpoint, base: CheckpointView | None = None) -> CheckpointView:
    return CheckpointView(
        id=row.id,
        name=row.name,
        status=row.status,
        location=row.location,
        facts=CheckpointFacts.from_json(row.facts_json),
        base=base,
    )


def _aware(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything here is UTC."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def age_seconds(ts: datetime | None, now: datetime | None = None) -> float | None:
    if ts is None:
        return None
    now = now or utcnow()
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=now.tzinfo)
    return (now - ts).total_seconds()
