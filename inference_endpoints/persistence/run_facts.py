"""Rows to the core's facts: a serve run as `RunFacts`, an endpoint's intent as `Intent`."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from inference_endpoints.core.lifecycle import Desired, Intent, Purpose, Role, RunFacts
from inference_endpoints.core.status import ReasonCode
from inference_endpoints.persistence.models import Endpoint, ServeRun


def aware(ts: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything here is UTC."""
    return ts if ts is None or ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def run_facts(row: ServeRun) -> RunFacts:
    return RunFacts(
        id=row.id, role=Role(row.role), generation=row.generation, created_at=_utc(row.created_at),
        purpose=Purpose(row.purpose), flow_run_id=row.flow_run_id,
        submitted_at=aware(row.submitted_at), engine_started_at=aware(row.engine_started_at),
        ready_at=aware(row.ready_at), last_seen_at=aware(row.last_seen_at),
        probe_failures=row.probe_failures, not_ready_message=row.not_ready_message,
        ended_at=aware(row.ended_at), end_reason=ReasonCode(row.end_reason) if row.end_reason else None,
        end_message=row.end_message, stop_requested_at=aware(row.stop_requested_at),
        backend_url=row.backend_url, requested_by=row.requested_by,
        queued_at=aware(row.queued_at), queued_message=row.queued_message,
        replica=row.replica, config_key=config_key(row),
    )


def config_key(row: ServeRun) -> str:
    """What a replica must share with the live run: its checkpoint and serving configuration."""
    return f"{row.checkpoint_id}:{hashlib.sha256(row.serving_config_json.encode()).hexdigest()[:16]}"


def intent_of(ep: Endpoint) -> Intent:
    return Intent(desired=Desired(ep.desired),
                  stop_reason=ReasonCode(ep.stop_reason) if ep.stop_reason else None,
                  stop_message=ep.stop_message, remove=ep.remove_requested,
                  verdict=ReasonCode(ep.verdict) if ep.verdict else None,
                  verdict_message=ep.verdict_message)


def wanted_replicas(ep: Endpoint) -> int:
    """How many engines the endpoint wants now: the autoscaler's count within the bounds."""
    wanted = ep.replicas_wanted if ep.replicas_wanted is not None else ep.min_replicas
    return max(1, ep.min_replicas, min(ep.max_replicas, wanted))
