"""Registry tables (SQLModel). Migrations live in `migrations/`; keep both in step.

Identifiers are short prefixed strings (`ep_…`, `ckpt_…`) so they read well in
logs, URLs and Prefect run names.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import Boolean, Column, DateTime, Float, Index, Integer, Text, UniqueConstraint, false
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


def _ts(nullable: bool = True) -> Column:  # type: ignore[type-arg,unused-ignore]
    return Column(DateTime(timezone=True), nullable=nullable)


class Organization(SQLModel, table=True):
    __tablename__ = "organizations"
    id: str = Field(default_factory=lambda: new_id("org"), primary_key=True)
    name: str = Field(unique=True, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(False))


class ApiKey(SQLModel, table=True):
    """An organization key. Only a hash is stored; the key is shown once."""

    __tablename__ = "api_keys"
    id: str = Field(default_factory=lambda: new_id("key"), primary_key=True)
    org_id: str = Field(foreign_key="organizations.id", index=True)
    name: str
    prefix: str = Field(index=True)
    key_hash: str = Field(unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(False))
    revoked_at: datetime | None = Field(default=None, sa_column=_ts())


class ImportRoot(SQLModel, table=True):
    """A directory an operator lets one organization register checkpoints from (besides its
    drop folder). Stored as its real path; managed from the CLI only."""

    __tablename__ = "import_roots"
    id: str = Field(default_factory=lambda: new_id("root"), primary_key=True)
    org_id: str = Field(foreign_key="organizations.id", index=True)
    path: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(False))


class InstanceType(SQLModel, table=True):
    __tablename__ = "instance_types"
    name: str = Field(primary_key=True)
    accelerator: str
    gpu_count: int
    memory_per_device_mib: int
    compute_capability: str
    precisions: str  # comma-separated
    quantizations: str  # comma-separated
    fp8: bool
    price_per_hour: float
    work_pool: str
    runtime: str
    image: str = ""
    startup_timeout_s: int
    description: str = ""


class Checkpoint(SQLModel, table=True):
    __tablename__ = "checkpoints"
    id: str = Field(default_factory=lambda: new_id("ckpt"), primary_key=True)
    org_id: str = Field(foreign_key="organizations.id", index=True)
    name: str = Field(index=True)
    kind: str
    base_model: str  # the architecture for full checkpoints, the base checkpoint for LoRA
    base_checkpoint_id: str | None = Field(default=None, foreign_key="checkpoints.id")
    location: str  # path inside the checkpoint store
    size_bytes: int
    digest: str
    architecture: str
    facts_json: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="available", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(False))
    deleted_at: datetime | None = Field(default=None, sa_column=_ts())
    reclaimed_at: datetime | None = Field(default=None, sa_column=_ts())


class Endpoint(SQLModel, table=True):
    __tablename__ = "endpoints"
    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_endpoint_org_name"),)
    id: str = Field(default_factory=lambda: new_id("ep"), primary_key=True)
    org_id: str = Field(foreign_key="organizations.id", index=True)
    name: str
    checkpoint_id: str = Field(foreign_key="checkpoints.id", index=True)
    instance: str = Field(foreign_key="instance_types.name")
    max_context: int
    precision: str
    quantization: str
    status: str = Field(default="pending", index=True)
    reason_code: str | None = None
    reason_message: str | None = Field(default=None, sa_column=Column(Text))
    reason_hint: str | None = None
    idempotency_key: str | None = Field(default=None, index=True)
    serve_run_id: str | None = None
    create_run_id: str | None = None
    backend_url: str | None = None
    backend_api_key: str | None = None  # known only to the control plane and gateway
    served_model_name: str
    serving_config_json: str = Field(sa_column=Column(Text, nullable=False))
    # Which serve run is live: bumped by every restart and replacement, so each new
    # serve run gets its own idempotency key.
    generation: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    # Intents: what the user (or a policy acting for them) wants. Written by the CLI,
    # console, API and flows; read by the reconciler and `lifecycle.derive`.
    desired: str = Field(default="serving", sa_column=Column(Text, nullable=False,
                                                             server_default="serving"))
    stop_reason: str | None = None
    stop_message: str | None = Field(default=None, sa_column=Column(Text))
    remove_requested: bool = Field(default=False, sa_column=Column(Boolean, nullable=False,
                                                                 server_default=false()))
    verdict: str | None = None  # the reconciler gave up: restart limit, timeouts, …
    verdict_message: str | None = Field(default=None, sa_column=Column(Text))
    # Pointers to serve runs (`serve_runs.id`): the one that serves, and a replacement.
    live_run: str | None = None
    candidate_run: str | None = None
    startup_timeout_s: int | None = None  # overrides the instance's, for this endpoint
    # Replicas: the live run is replica 0; the reconciler keeps `min_replicas` engines
    # (autoscaled up to `max_replicas` on load). `backend_urls`: every ready one,
    # as JSON, for the gateway to balance over (derived, like `status`).
    min_replicas: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))
    max_replicas: int = Field(default=1, sa_column=Column(Integer, nullable=False, server_default="1"))
    backend_urls: str | None = Field(default=None, sa_column=Column(Text))
    # Autoscaling between min and max (`core.autoscale`): the target load per replica, the
    # cooldown before a scale-down, and what the autoscaler remembers (None: `min_replicas`).
    scale_target: float = Field(default=4.0, sa_column=Column(Float, nullable=False, server_default="4"))
    scale_down_after_s: int = Field(default=300, sa_column=Column(Integer, nullable=False,
                                                                  server_default="300"))
    replicas_wanted: int | None = None
    scale_over_since: datetime | None = Field(default=None, sa_column=_ts())
    scale_under_since: datetime | None = Field(default=None, sa_column=_ts())
    scale_changed_at: datetime | None = Field(default=None, sa_column=_ts())
    # Where the serve run exports device metrics (GPU via NVML, or CPU/RSS of the engine).
    exporter_url: str | None = None
    # Stop the endpoint after this many minutes without requests (None: never).
    idle_stop_minutes: int | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(False))
    scheduled_at: datetime | None = Field(default=None, sa_column=_ts())
    loading_at: datetime | None = Field(default=None, sa_column=_ts())
    healthy_at: datetime | None = Field(default=None, sa_column=_ts())
    stopping_at: datetime | None = Field(default=None, sa_column=_ts())
    ended_at: datetime | None = Field(default=None, sa_column=_ts())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(False))


class ServeRun(SQLModel, table=True):
    """One engine's life for an endpoint: who asked for it, and what it did, with the times.

    Rows are facts, kept after the run ends (restart counts, cost, history). The
    endpoint's status is derived from them (`core.lifecycle.derive`).
    """

    __tablename__ = "serve_runs"
    __table_args__ = (UniqueConstraint("endpoint_id", "generation", name="uq_serve_run_generation"),)
    id: str = Field(default_factory=lambda: new_id("sr"), primary_key=True)
    endpoint_id: str = Field(index=True)  # not a foreign key: history outlives the endpoint
    instance: str | None = None  # what this engine ran on (its cost outlives the endpoint too)
    # Its serving settings (an update's candidate differs from the live run's): the endpoint
    # shows the live run's.
    max_context: int | None = None
    precision: str | None = None
    org_id: str = Field(index=True)
    generation: int
    role: str  # live, candidate (becomes live when promoted) or replica
    replica: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    purpose: str  # start, restart or replace
    checkpoint_id: str
    serving_config_json: str = Field(sa_column=Column(Text, nullable=False))
    # The flow run that asked for a replacement; if it dies first, the candidate is dropped.
    requested_by: str | None = None
    flow_run_id: str | None = Field(default=None, sa_column=Column(Text, unique=True))
    backend_url: str | None = None
    exporter_url: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(False))
    submitted_at: datetime | None = Field(default=None, sa_column=_ts())
    engine_started_at: datetime | None = Field(default=None, sa_column=_ts())
    health_ok_at: datetime | None = Field(default=None, sa_column=_ts())
    ready_at: datetime | None = Field(default=None, sa_column=_ts())
    last_seen_at: datetime | None = Field(default=None, sa_column=_ts())
    probe_failures: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    not_ready_message: str | None = Field(default=None, sa_column=Column(Text))
    # Last seen waiting for a slot of its full work pool, and why (the reconciler's note).
    queued_at: datetime | None = Field(default=None, sa_column=_ts())
    queued_message: str | None = Field(default=None, sa_column=Column(Text))
    # The engine's log file and the host it is on (`endpoints logs` reads it there).
    log_path: str | None = Field(default=None, sa_column=Column(Text))
    log_host: str | None = None
    stop_requested_at: datetime | None = Field(default=None, sa_column=_ts())
    ended_at: datetime | None = Field(default=None, sa_column=_ts())
    exit_code: int | None = None
    end_reason: str | None = None
    end_message: str | None = Field(default=None, sa_column=Column(Text))


class CheckpointLease(SQLModel, table=True):
    """A running endpoint's read-only claim on a checkpoint's bytes.

    Kept (released, not deleted) after the run ends: the garbage collector
    needs to know every run that ever read a checkpoint.
    """

    __tablename__ = "checkpoint_leases"
    __table_args__ = (Index("ix_lease_checkpoint_open", "checkpoint_id", "released_at"),)
    id: str = Field(default_factory=lambda: new_id("lease"), primary_key=True)
    checkpoint_id: str = Field(foreign_key="checkpoints.id", index=True)
    endpoint_id: str = Field(index=True)  # not a foreign key: outlives the endpoint record
    endpoint_name: str
    flow_run_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(False))
    released_at: datetime | None = Field(default=None, sa_column=_ts())


class ActivityEvent(SQLModel, table=True):
    __tablename__ = "activity_events"
    id: int | None = Field(default=None, primary_key=True)
    org_id: str = Field(index=True)
    endpoint_id: str = Field(index=True)
    at: datetime = Field(default_factory=utcnow, sa_column=_ts(False))
    kind: str  # "status", "stop_requested", "restart", ...
    from_status: str | None = None
    to_status: str | None = None
    reason_code: str | None = None
    message: str = Field(default="", sa_column=Column(Text, nullable=False))
