"""Queries and guarded updates on the registry.

Rules: transactions are short and never hold a network call; every status change
goes through `Registry.transition`, which is a guarded UPDATE (correct under
concurrency on SQLite and PostgreSQL alike) and writes an activity event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from inference_endpoints.core.catalog import CATALOG, InstanceSpec
from inference_endpoints.core.errors import invalid
from inference_endpoints.core.facts import CheckpointFacts
from inference_endpoints.core.lifecycle import Purpose, Role
from inference_endpoints.core.serving_config import ServingSpec
from inference_endpoints.core.status import (
    CheckpointStatus,
    EndpointStatus,
)
from inference_endpoints.core.validation import CheckpointView, ValidatedCreate
from inference_endpoints.persistence.db import migrate, session_scope
from inference_endpoints.persistence.import_roots import ImportRoots
from inference_endpoints.persistence.leases import Leases, lock_checkpoint
from inference_endpoints.persistence.models import (
    ActivityEvent,
    ApiKey,
    Checkpoint,
    CheckpointLease,
    Endpoint,
    ImportRoot,
    InstanceType,
    Organization,
    ServeRun,
    utcnow,
)
from inference_endpoints.persistence.orgs import KEY_PREFIX, NewKey, OrgsAndKeys, hash_key  # noqa: F401
from inference_endpoints.persistence.serve_runs import ServeRuns


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


class Registry(OrgsAndKeys, Leases, ImportRoots):
    def __init__(self, url: str):
        self.url = url
        self.runs = ServeRuns(self.session)

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
            first_run = ServeRun(endpoint_id=endpoint_id, org_id=org_id, generation=0,
                                 instance=request.instance.name, max_context=request.max_context,
                                 precision=request.precision,
                                 role=Role.LIVE.value, purpose=Purpose.START.value,
                                 checkpoint_id=ckpt.id, serving_config_json=endpoint.serving_config_json)
            endpoint.live_run = first_run.id
            s.add(endpoint)
            s.add(first_run)
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

    def update_endpoint(self, endpoint_id: str, **fields: Any) -> None:
        """Settings that are neither status nor serve-run facts (e.g. idle auto-stop minutes)."""
        assert not {"status", "reason_code", "desired", "verdict", "live_run", "candidate_run"} & set(fields)
        with self.session() as s:
            s.execute(
                update(Endpoint).where(col(Endpoint.id) == endpoint_id)
                .values(updated_at=utcnow(), **fields)
            )

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
                              ActivityEvent, ImportRoot)
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


def age_seconds(ts: datetime | None, now: datetime | None = None) -> float | None:
    if ts is None:
        return None
    now = now or utcnow()
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=now.tzinfo)
    return (now - ts).total_seconds()
