"""Serve runs and endpoint intents: every write is a fact or an intent, then one settle.

Each method locks the endpoint's row first (a guarded no-op UPDATE, so SQLite and
PostgreSQL both serialise writers on it), writes its fact, and calls `_settle`, which
derives the status with `core.lifecycle.derive` and stores it with the live run's
address. `_settle` is the only code that writes an endpoint's status.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from inference_endpoints.core.autoscale import ScaleState
from inference_endpoints.core.errors import invalid
from inference_endpoints.core.lifecycle import (
    Derived,
    Desired,
    Purpose,
    Role,
    derive,
    serving_backends,
)
from inference_endpoints.core.status import REASON_HINTS, EndpointStatus, ReasonCode
from inference_endpoints.persistence.leases import lock_checkpoint
from inference_endpoints.persistence.models import (
    ActivityEvent,
    CheckpointLease,
    Endpoint,
    ServeRun,
    utcnow,
)
from inference_endpoints.persistence.run_facts import aware, intent_of, run_facts, wanted_replicas

SessionFactory = Callable[[], AbstractContextManager[Session]]

_STATUS_TIMESTAMP = {
    EndpointStatus.DEPLOYING: "scheduled_at",
    EndpointStatus.LOADING: "loading_at",
    EndpointStatus.HEALTHY: "healthy_at",
    EndpointStatus.STOPPING: "stopping_at",
    EndpointStatus.STOPPED: "ended_at",
    EndpointStatus.FAILED: "ended_at",
}
# Facts a serve run reports about itself.
RUN_FACTS = frozenset({"backend_url", "exporter_url", "engine_started_at", "health_ok_at", "ready_at",
                       "last_seen_at", "probe_failures", "not_ready_message", "log_path", "log_host"})


def _lock(s: Session, endpoint_id: str) -> Endpoint | None:
    """Take the endpoint row's write lock before reading anything (see the module docstring)."""
    s.execute(update(Endpoint).where(col(Endpoint.id) == endpoint_id).values(id=Endpoint.id))
    return s.get(Endpoint, endpoint_id, populate_existing=True)


def _runs(s: Session, endpoint_id: str) -> list[ServeRun]:
    q = (select(ServeRun).where(ServeRun.endpoint_id == endpoint_id).order_by(col(ServeRun.generation))
         .execution_options(populate_existing=True))
    return list(s.exec(q))


def _settle(s: Session, ep: Endpoint) -> Derived:
    """Derive the status from intent and facts, store it, and log a change as activity."""
    runs = _runs(s, ep.id)
    holds = s.exec(select(CheckpointLease.id).where(
        col(CheckpointLease.endpoint_id) == ep.id, col(CheckpointLease.released_at).is_(None))).first()
    facts = [run_facts(r) for r in runs]
    derived = derive(intent_of(ep), facts, ep.live_run, holds is not None)
    live = next((r for r in runs if r.id == ep.live_run), None)
    backends = serving_backends(facts, ep.live_run) if derived.status == EndpointStatus.HEALTHY else ()
    values: dict[str, Any] = {
        "backend_urls": json.dumps(list(backends)) if backends else None,
        "backend_url": live.backend_url if live else None,
        "exporter_url": live.exporter_url if live else None,
        "serve_run_id": live.flow_run_id if live else None,
    }
    if live is not None:
        values.update(generation=live.generation, checkpoint_id=live.checkpoint_id,
                      serving_config_json=live.serving_config_json)
        # an update's settings (and instance) become the endpoint's once its run is live
        values.update({k: getattr(live, k) for k in ("max_context", "precision", "instance")
                       if getattr(live, k)})
    previous = ep.status
    changed = derived.status.value != previous
    reason = derived.reason.value if derived.reason else None
    if changed or reason != ep.reason_code or (reason and derived.message != ep.reason_message):
        values.update(status=derived.status.value, reason_code=reason,
                      reason_message=derived.message if reason else None,
                      reason_hint=derived.hint if reason else None)
        if changed and derived.status in _STATUS_TIMESTAMP:
            values[_STATUS_TIMESTAMP[derived.status]] = utcnow()
    if any(getattr(ep, k) != v for k, v in values.items()):
        values["updated_at"] = utcnow()
        s.execute(update(Endpoint).where(col(Endpoint.id) == ep.id).values(**values))
    if changed:
        s.add(ActivityEvent(org_id=ep.org_id, endpoint_id=ep.id, kind="status", from_status=previous,
                            to_status=derived.status.value, reason_code=reason, message=derived.message))
    return derived


class ServeRuns:
    """The serve-run aggregate of the registry: intents, facts, and the derived status."""

    def __init__(self, session: SessionFactory):
        self.session = session

    # ---- reads -------------------------------------------------------------------------

    def of(self, endpoint_id: str) -> list[ServeRun]:
        with self.session() as s:
            return _runs(s, endpoint_id)

    def get(self, run_id: str) -> ServeRun | None:
        with self.session() as s:
            return s.get(ServeRun, run_id)

    def by_flow_run(self, flow_run_id: str) -> ServeRun | None:
        with self.session() as s:
            return s.exec(select(ServeRun).where(ServeRun.flow_run_id == flow_run_id)).first()

    def running(self) -> list[ServeRun]:
        """Every run not known to have ended, in any organization (discovery, teardown)."""
        with self.session() as s:
            return list(s.exec(select(ServeRun).where(col(ServeRun.ended_at).is_(None))))

    # ---- the one status writer ---------------------------------------------------------

    def settle(self, endpoint_id: str) -> Derived | None:
        with self.session() as s:
            ep = _lock(s, endpoint_id)
            return _settle(s, ep) if ep is not None else None

    def _write(self, endpoint_id: str, change: Callable[[Session, Endpoint], bool],
               activity: tuple[str, str] | None = None) -> bool:
        """Lock, apply `change` (False: refused, nothing written), settle; all in one transaction."""
        with self.session() as s:
            ep = _lock(s, endpoint_id)
            if ep is None or not change(s, ep):
                return False
            s.flush()
            s.refresh(ep)
            if activity is not None:
                s.add(ActivityEvent(org_id=ep.org_id, endpoint_id=ep.id, kind=activity[0],
                                    message=activity[1]))
            _settle(s, ep)
        return True

    # ---- intents -----------------------------------------------------------------------

    def request_stop(self, endpoint_id: str, reason: ReasonCode = ReasonCode.STOPPED_BY_USER,
                     message: str = "stopped by user", *, remove: bool = False) -> bool:
        """The user (or idle auto-stop) wants it stopped; every running serve run is asked to stop."""
        def change(s: Session, ep: Endpoint) -> bool:
            now = utcnow()
            ended = ep.status in (EndpointStatus.STOPPED.value, EndpointStatus.FAILED.value)
            if ep.desired != Desired.STOPPED and ep.verdict is None and not ended:
                ep.desired, ep.stop_reason, ep.stop_message = Desired.STOPPED.value, reason.value, message
            ep.remove_requested = ep.remove_requested or remove
            ep.candidate_run = None
            s.add(ep)
            s.execute(update(ServeRun).where(col(ServeRun.endpoint_id) == endpoint_id,
                                             col(ServeRun.ended_at).is_(None),
                                             col(ServeRun.stop_requested_at).is_(None))
                      .values(stop_requested_at=now))
            return True
        return self._write(endpoint_id, change, ("stop_requested", message))

    def start_again(self, endpoint_id: str, leased: list[str]) -> ServeRun | None:
        """A stopped or failed endpoint serves again: same name, URL and configuration.

        Guarded: only once it holds nothing (status `stopped` or `failed`: every run ended,
        every lease released) and is not being removed. The checkpoints in `leased` are
        re-checked `available` and leased in the same transaction (a concurrent delete either
        wins, and this raises `checkpoint_deleted`, or sees the lease). None if refused.
        """
        added: list[ServeRun] = []

        def change(s: Session, ep: Endpoint) -> bool:
            if (ep.status not in (EndpointStatus.STOPPED.value, EndpointStatus.FAILED.value)
                    or ep.remove_requested):
                return False
            for checkpoint_id in leased:
                if not lock_checkpoint(s, checkpoint_id):
                    raise invalid("checkpoint_deleted", "checkpoint",
                                  f"Checkpoint {checkpoint_id} was deleted: {ep.name} cannot serve it again.",
                                  "Create a new endpoint from an available checkpoint "
                                  "(`endpoints checkpoint list`).")
                s.add(CheckpointLease(checkpoint_id=checkpoint_id, endpoint_id=ep.id,
                                      endpoint_name=ep.name))
            top = s.exec(select(func.max(ServeRun.generation))
                         .where(ServeRun.endpoint_id == endpoint_id)).one()
            run = ServeRun(endpoint_id=endpoint_id, org_id=ep.org_id, instance=ep.instance,
                           generation=0 if top is None else int(top) + 1, role=Role.LIVE.value,
                           purpose=Purpose.START.value, checkpoint_id=ep.checkpoint_id,
                           serving_config_json=ep.serving_config_json, max_context=ep.max_context,
                           precision=ep.precision)
            s.add(run)
            s.flush()
            ep.desired, ep.stop_reason, ep.stop_message = Desired.SERVING.value, None, None
            ep.verdict = ep.verdict_message = ep.candidate_run = None
            ep.live_run = run.id
            # A new span: idle time counts from its own `healthy`, not the last one's.
            ep.scheduled_at = ep.loading_at = ep.healthy_at = ep.stopping_at = None
            s.add(ep)
            added.append(run)
            return True

        return added[0] if self._write(endpoint_id, change, ("started", "started again")) else None

    def give_up(self, endpoint_id: str, reason: ReasonCode, message: str,
                expected_live: str | None) -> bool:
        """The reconciler's verdict: this endpoint cannot be served (timeouts, restart limit, …)."""
        def change(s: Session, ep: Endpoint) -> bool:
            if ep.verdict is not None or ep.desired == Desired.STOPPED or ep.live_run != expected_live:
                return False
            ep.verdict, ep.verdict_message, ep.candidate_run = reason.value, message, None
            s.add(ep)
            s.execute(update(ServeRun).where(col(ServeRun.endpoint_id) == endpoint_id,
                                             col(ServeRun.ended_at).is_(None))
                      .values(stop_requested_at=func.coalesce(col(ServeRun.stop_requested_at), utcnow())))
            return True
        return self._write(endpoint_id, change)

    # ---- runs --------------------------------------------------------------------------

    def add_run(self, endpoint_id: str, role: Role, purpose: Purpose, *, expected_live: str | None,
                checkpoint_id: str | None = None, config_json: str | None = None,
                requested_by: str | None = None, max_context: int | None = None,
                precision: str | None = None, instance: str | None = None) -> ServeRun | None:
        """Record a new serve run (not yet submitted) and point the endpoint at it.

        Guarded: a live run only replaces `expected_live`; a candidate only when there is
        none; neither once the endpoint is being stopped or was given up. None if refused.
        """
        added: list[ServeRun] = []

        def change(s: Session, ep: Endpoint) -> bool:
            if ep.desired != Desired.SERVING or ep.verdict is not None or ep.live_run != expected_live:
                return False
            if role == Role.CANDIDATE and ep.candidate_run is not None:
                return False
            top = s.exec(select(func.max(ServeRun.generation))
                         .where(ServeRun.endpoint_id == endpoint_id)).one()
            run = ServeRun(endpoint_id=endpoint_id, org_id=ep.org_id, instance=instance or ep.instance,
                           generation=0 if top is None else int(top) + 1, role=role.value,
                           purpose=purpose.value, checkpoint_id=checkpoint_id or ep.checkpoint_id,
                           serving_config_json=config_json or ep.serving_config_json,
                           requested_by=requested_by, max_context=max_context or ep.max_context,
                           precision=precision or ep.precision)
            s.add(run)
            s.flush()
            if role == Role.LIVE:
                ep.live_run = run.id
            else:
                ep.candidate_run = run.id
            s.add(ep)
            added.append(run)
            return True

        return added[0] if self._write(endpoint_id, change) else None

    def record_submitted(self, run_id: str, flow_run_id: str) -> None:
        self._run_write(run_id, {"flow_run_id": flow_run_id, "submitted_at": utcnow()})

    def report(self, run_id: str, **facts: Any) -> bool:
        """A serve run's facts about itself (engine started, ready, heartbeat, probe results)."""
        unknown = set(facts) - RUN_FACTS
        assert not unknown, f"not serve-run facts: {unknown}"
        return self._run_write(run_id, facts)

    def probe_failed(self, run_id: str, message: str) -> bool:
        return self._run_write(run_id, {"probe_failures": col(ServeRun.probe_failures) + 1,
                                        "not_ready_message": message, "last_seen_at": utcnow()})

    def ended(self, run_id: str, reason: ReasonCode, message: str, exit_code: int | None = None) -> bool:
        """The run is over (its own report, or the reconciler's on evidence). Written once."""
        return self._run_write(run_id, {"ended_at": utcnow(), "end_reason": reason.value,
                                        "end_message": message, "exit_code": exit_code})

    def queued(self, run_id: str, message: str | None) -> bool:
        """The reconciler saw the run wait for a slot of its full pool (None: it no longer does;
        `queued_at` stays: the startup timeout counts from the last time it was queued)."""
        values: dict[str, Any] = {"queued_message": message}
        if message:
            values["queued_at"] = utcnow()
        return self._run_write(run_id, values)

    def request_run_stop(self, run_id: str) -> bool:
        return self._run_write(run_id, {"stop_requested_at": utcnow()}, only_unset="stop_requested_at")

    def _run_write(self, run_id: str, values: dict[str, Any], only_unset: str | None = None) -> bool:
        with self.session() as s:  # a run never changes endpoint: read it before locking
            endpoint_id = s.exec(select(ServeRun.endpoint_id).where(ServeRun.id == run_id)).first()
        if endpoint_id is None:
            return False
        with self.session() as s:
            ep = _lock(s, endpoint_id)
            guard = update(ServeRun).where(col(ServeRun.id) == run_id, col(ServeRun.ended_at).is_(None))
            if only_unset:
                guard = guard.where(getattr(ServeRun, only_unset).is_(None))
            result: Any = s.execute(guard.values(**values))
            if result.rowcount != 1:
                return False
            if ep is not None:
                s.flush()
                _settle(s, ep)
        return True

    def promote(self, endpoint_id: str, candidate_id: str) -> bool:
        """The ready candidate becomes live; the old live run is asked to drain and stop."""
        def change(s: Session, ep: Endpoint) -> bool:
            cand = s.get(ServeRun, candidate_id)
            if (ep.candidate_run != candidate_id or cand is None or cand.ended_at is not None
                    or cand.ready_at is None or ep.desired != Desired.SERVING or ep.verdict is not None):
                return False
            old = s.get(ServeRun, ep.live_run) if ep.live_run else None
            if old is not None and old.stop_requested_at is None:
                old.stop_requested_at = utcnow()
                s.add(old)
            cand.role = Role.LIVE.value
            s.add(cand)
            ep.live_run, ep.candidate_run = candidate_id, None
            s.add(ep)
            return True
        return self._write(endpoint_id, change,
                           ("replaced", f"traffic switched to serve run {candidate_id}"))

    def drop_candidate(self, endpoint_id: str, candidate_id: str, why: str) -> bool:
        def change(s: Session, ep: Endpoint) -> bool:
            if ep.candidate_run != candidate_id:
                return False
            ep.candidate_run = None
            s.add(ep)
            s.execute(update(ServeRun).where(col(ServeRun.id) == candidate_id,
                                             col(ServeRun.stop_requested_at).is_(None))
                      .values(stop_requested_at=utcnow()))
            return True
        return self._write(endpoint_id, change, ("replacement_abandoned", why))

    def add_replica(self, endpoint_id: str, slot: int) -> ServeRun | None:
        """Record a run for replica `slot` with the live run's checkpoint and configuration.

        Guarded: refused once the endpoint is stopping or given up, when the slot is beyond
        the wanted count, or when a running run already fills it.
        """
        added: list[ServeRun] = []

        def change(s: Session, ep: Endpoint) -> bool:
            live = s.get(ServeRun, ep.live_run) if ep.live_run else None
            if (ep.desired != Desired.SERVING or ep.verdict is not None or live is None
                    or not 1 <= slot < wanted_replicas(ep)):
                return False
            runs = _runs(s, endpoint_id)
            if any(r.role == Role.REPLICA.value and r.replica == slot and r.ended_at is None
                   and r.stop_requested_at is None for r in runs):
                return False
            earlier = any(r.role == Role.REPLICA.value and r.replica == slot for r in runs)
            run = ServeRun(endpoint_id=endpoint_id, org_id=ep.org_id, instance=ep.instance,
                           generation=max(r.generation for r in runs) + 1, role=Role.REPLICA.value,
                           replica=slot, purpose=(Purpose.RESTART if earlier else Purpose.START).value,
                           checkpoint_id=live.checkpoint_id, serving_config_json=live.serving_config_json,
                           max_context=live.max_context, precision=live.precision)
            s.add(run)
            added.append(run)
            return True

        return added[0] if self._write(endpoint_id, change) else None

    def scale(self, endpoint_id: str, min_replicas: int, max_replicas: int,
              target: float | None = None, down_after_s: int | None = None) -> bool:
        """The wanted replica bounds (validated by the caller); the autoscaler starts again
        from `min_replicas` and the reconciler acts on it."""
        def change(s: Session, ep: Endpoint) -> bool:
            if ep.desired != Desired.SERVING or ep.verdict is not None:
                return False
            ep.min_replicas, ep.max_replicas, ep.replicas_wanted = min_replicas, max_replicas, min_replicas
            ep.scale_target = target if target is not None else ep.scale_target
            ep.scale_down_after_s = down_after_s if down_after_s is not None else ep.scale_down_after_s
            ep.scale_over_since = ep.scale_under_since = None
            ep.scale_changed_at = utcnow()
            s.add(ep)
            return True
        return self._write(endpoint_id, change, ("scaled", f"replicas: min {min_replicas}, "
                                                           f"max {max_replicas}"))

    def autoscale(self, endpoint_id: str, expected_wanted: int, state: ScaleState,
                  message: str | None) -> bool:
        """The autoscaler's decision for this pass (guarded on the count it was based on)."""
        def change(s: Session, ep: Endpoint) -> bool:
            if (ep.desired != Desired.SERVING or ep.verdict is not None
                    or wanted_replicas(ep) != expected_wanted):
                return False
            ep.replicas_wanted, ep.scale_over_since = state.wanted, state.over_since
            ep.scale_under_since, ep.scale_changed_at = state.under_since, state.changed_at
            s.add(ep)
            return True
        return self._write(endpoint_id, change, ("autoscaled", message) if message else None)

    def restarts(self, endpoint_id: str) -> Iterator[datetime]:
        with self.session() as s:
            q = select(ServeRun.created_at).where(ServeRun.endpoint_id == endpoint_id,
                                                  ServeRun.purpose == Purpose.RESTART.value)
            for ts in s.exec(q):
                yield aware(ts) or ts


__all__ = ["REASON_HINTS", "ServeRuns", "aware", "intent_of", "run_facts", "wanted_replicas"]
