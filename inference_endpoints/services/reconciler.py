"""The reconciler: load facts → decide (`core.reconcile`, pure) → apply each step as a guarded update.

One function for every caller: the scheduled reconcile flow passes all endpoints, the
create and stop flows and a serve run whose engine died pass their own endpoint, so a
change is acted on at once and, if that caller dies, by the next scheduled pass. The
orchestrator (Prefect) and the backend probe are injected, as the collector's are.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from sqlmodel import col, select

from inference_endpoints.core.autoscale import ScaleInput, ScaleState, decide_scale
from inference_endpoints.core.lifecycle import Purpose, Role
from inference_endpoints.core.reconcile import (
    Capacity,
    Kind,
    Observed,
    Plan,
    RestartPolicy,
    Snapshot,
    Step,
    Timing,
    decide,
)
from inference_endpoints.core.status import ReasonCode
from inference_endpoints.persistence.checkpoint_lifecycle import transfer_leases
from inference_endpoints.persistence.models import CheckpointLease, Endpoint, ServeRun, utcnow
from inference_endpoints.persistence.registry import Registry
from inference_endpoints.persistence.run_facts import aware, intent_of, run_facts, wanted_replicas
from inference_endpoints.services.replicas import replica_settings

MAX_ROUNDS = 4  # decide → apply → decide again, so one call finishes what it can


class Orchestrator(Protocol):
    """What the reconciler needs from the orchestrator (Prefect in production)."""

    def submit(self, endpoint: Endpoint, run: ServeRun) -> str:
        """Start the serve run on its work pool; returns the flow run id. Idempotent per run."""
        ...

    def cancel(self, flow_run_id: str, message: str) -> bool:
        """Ask the run to stop; True when it had not started and was cancelled outright."""
        ...

    def states(self, flow_run_ids: Sequence[str]) -> Mapping[str, str]:
        """State type name per run, in one call; raises when the orchestrator cannot be read."""
        ...

    def stop_orphan(self, endpoint: Endpoint, run: ServeRun) -> int:
        """Stop the engine still answering for a run whose serve run is gone; returns how many."""
        ...

    def forget(self, endpoint: Endpoint) -> None:
        """Clean up per-endpoint orchestration state once it has ended (e.g. a key Secret)."""
        ...

    def capacity(self, endpoint: Endpoint) -> Capacity:
        """The endpoint's work pool: its slot limit and the runs holding its slots now."""
        ...


Probe = Callable[[Sequence[str]], Mapping[str, bool]]
# Requests in flight per (organization name, endpoint name), from the gateway; None: unknown.
LoadSource = Callable[[], Mapping[tuple[str, str], int] | None]


@dataclass(frozen=True)
class Settings:
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    timing: Timing = field(default_factory=Timing)


@dataclass(frozen=True)
class Row:
    endpoint: str
    step: str
    why: str
    done: str

    def as_dict(self) -> dict[str, str]:
        return {"endpoint": self.endpoint, "decision": self.step, "why": self.why, "done": self.done}


def endpoints_to_watch(registry: Registry, ids: Collection[str] | None) -> list[str]:
    """Endpoints that want serving, still have a running serve run, or still hold leases."""
    with registry.session() as s:
        if ids is not None:
            return list(s.exec(select(Endpoint.id).where(col(Endpoint.id).in_(list(ids)))))
        wanted = set(s.exec(select(Endpoint.id).where(col(Endpoint.status).not_in(["stopped", "failed"]))))
        running = set(s.exec(select(ServeRun.endpoint_id).where(col(ServeRun.ended_at).is_(None))))
        leased = set(s.exec(select(CheckpointLease.endpoint_id)
                            .where(col(CheckpointLease.released_at).is_(None))))
        present = set(s.exec(select(Endpoint.id)))
    return sorted((wanted | running | leased) & present)


def _open_lease_runs(registry: Registry, endpoint_id: str) -> frozenset[str | None]:
    with registry.session() as s:
        return frozenset(s.exec(select(CheckpointLease.flow_run_id).where(
            CheckpointLease.endpoint_id == endpoint_id, col(CheckpointLease.released_at).is_(None))))


def snapshot(registry: Registry, endpoint: Endpoint, runs: list[ServeRun], states: Mapping[str, str],
             answering: Mapping[str, bool], prefect_readable: bool,
             capacity: Capacity | None = None) -> Snapshot:
    timeout = endpoint.startup_timeout_s or registry.instances()[endpoint.instance].startup_timeout_s
    observed = tuple(
        Observed(run_facts(r), states.get(r.flow_run_id) if r.flow_run_id else None,
                 bool(r.backend_url and answering.get(r.backend_url)),
                 states.get(r.requested_by) if r.requested_by else None)
        for r in runs)
    return Snapshot(endpoint.id, endpoint.name, intent_of(endpoint), endpoint.live_run,
                    endpoint.candidate_run, observed, timedelta(seconds=timeout),
                    _open_lease_runs(registry, endpoint.id), prefect_readable, capacity,
                    wanted_replicas(endpoint))


def reconcile(registry: Registry, control: Orchestrator, probe: Probe, *,
              endpoint_ids: Collection[str] | None = None, settings: Settings = Settings(),
              clock: Callable[[], datetime] = utcnow, log: Callable[[str], None] = print,
              load: LoadSource | None = None) -> list[Row]:
    """One pass over the chosen endpoints (all that need attention by default)."""
    rows: list[Row] = []
    watched = endpoints_to_watch(registry, endpoint_ids)
    # The gateway is asked only when one of them autoscales: the flows' kicks (every 0.5 s while
    # they follow a create or an update) add no request to it otherwise.
    in_flight = _read_load(load, log) if _any_autoscaled(registry, watched) else None
    for endpoint_id in watched:
        rows += autoscale_endpoint(registry, endpoint_id, in_flight, clock())
        for _ in range(MAX_ROUNDS):
            done = _one_round(registry, control, probe, endpoint_id, settings, clock, log)
            rows += done
            if not any(r.step not in (Kind.WAIT.value, Kind.QUEUE.value) for r in done):
                break
    return rows


def _any_autoscaled(registry: Registry, endpoint_ids: list[str]) -> bool:
    if not endpoint_ids:
        return False
    with registry.session() as s:
        return s.exec(select(Endpoint.id).where(col(Endpoint.id).in_(endpoint_ids),
                                                col(Endpoint.max_replicas) > col(Endpoint.min_replicas))
                      ).first() is not None


def _read_load(load: LoadSource | None, log: Callable[[str], None]) -> Mapping[tuple[str, str], int] | None:
    if load is None:
        return None
    try:
        return load()
    except Exception as exc:  # no load figures this pass: nothing is scaled on a guess
        log(f"cannot read the gateway's in-flight counts ({exc}); no autoscaling this pass")
        return None


def autoscale_endpoint(registry: Registry, endpoint_id: str,
                       in_flight: Mapping[tuple[str, str], int] | None, now: datetime) -> list[Row]:
    """Record this pass's autoscaling decision; the replica steps then fill or retire slots."""
    ep = registry.get_endpoint(endpoint_id)
    if (ep is None or ep.max_replicas <= ep.min_replicas or ep.desired != "serving" or ep.verdict
            or ep.status not in ("healthy", "unhealthy")):
        return []
    org = registry.get_org(ep.org_id)
    count = None if in_flight is None or org is None else in_flight.get((org.name, ep.name), 0)
    settings = replica_settings(ep)
    ready, wanted = settings["ready"], settings["wanted"]
    state = ScaleState(wanted, aware(ep.scale_over_since), aware(ep.scale_under_since),
                       aware(ep.scale_changed_at))
    decision = decide_scale(state, ScaleInput(ep.min_replicas, ep.max_replicas, ep.scale_target,
                                              timedelta(seconds=ep.scale_down_after_s), count, ready), now)
    if decision.state == state:
        return []
    recorded = registry.runs.autoscale(ep.id, wanted, decision.state, decision.message)
    if not decision.changed:
        return []
    done = "recorded" if recorded else "changed meanwhile"
    return [Row(ep.name, "autoscale", decision.message or "", done)]


def _one_round(registry: Registry, control: Orchestrator, probe: Probe, endpoint_id: str,
               settings: Settings, clock: Callable[[], datetime], log: Callable[[str], None]) -> list[Row]:
    endpoint = registry.get_endpoint(endpoint_id)
    if endpoint is None:
        return []
    runs = registry.runs.of(endpoint_id)
    running = [r for r in runs if r.ended_at is None]
    flow_runs = [r.flow_run_id for r in running if r.flow_run_id]
    flow_runs += [r.requested_by for r in running if r.requested_by and r.id == endpoint.candidate_run]
    try:
        states, readable = (dict(control.states(flow_runs)) if flow_runs else {}), True
    except Exception as exc:  # Prefect unreachable: no Prefect-based evidence this pass
        log(f"{endpoint.name}: cannot read serve run states ({exc}); deciding on registry facts only")
        states, readable = {}, False
    answering = probe(sorted({r.backend_url for r in running if r.backend_url}))
    capacity = _capacity(control, endpoint, running, states, log)
    plan: Plan = decide(snapshot(registry, endpoint, runs, states, answering, readable, capacity),
                        clock(), settings.policy, settings.timing)
    rows = []
    by_id = {r.id: r for r in runs}
    for step in plan.steps:
        done = apply(registry, control, endpoint, by_id.get(step.run_id or ""), step)
        log(f"{endpoint.name}: {step.kind} {step.run_id or ''} ({step.message}) → {done}")
        rows.append(Row(endpoint.name, step.kind.value, step.message, done))
    return rows


def _capacity(control: Orchestrator, endpoint: Endpoint, running: list[ServeRun],
              states: Mapping[str, str], log: Callable[[str], None]) -> Capacity | None:
    """The pool's slots, read only while one of the endpoint's runs waits for a worker."""
    if not any(r.flow_run_id and r.engine_started_at is None
               and (states.get(r.flow_run_id) == "SCHEDULED" or r.queued_message) for r in running):
        return None
    try:
        return control.capacity(endpoint)
    except Exception as exc:  # unknown this pass: nothing is decided on it
        log(f"{endpoint.name}: cannot read its work pool's slots ({exc})")
        return None


def apply(registry: Registry, control: Orchestrator, ep: Endpoint, run: ServeRun | None,
          step: Step) -> str:
    """One step, as a guarded update; returns what was done (for the log and the artifact)."""
    runs = registry.runs
    if step.kind == Kind.SUBMIT and run is not None:
        return _submit(registry, control, ep, run)
    if step.kind == Kind.RESTART and run is not None:
        new = runs.add_run(ep.id, Role.LIVE, Purpose.RESTART, expected_live=run.id)
        if new is None:
            return "superseded"
        registry.record_activity(ep.id, "restart", step.message)
        return f"generation {new.generation} recorded; " + _submit(registry, control, ep, new)
    if step.kind == Kind.CANCEL and run is not None:
        runs.request_run_stop(run.id)
        if run.flow_run_id is None:
            runs.ended(run.id, step.reason or ReasonCode.STOPPED_BY_USER, "stopped before it was submitted")
            return "ended (never submitted)"
        if control.cancel(run.flow_run_id, step.message):
            runs.ended(run.id, step.reason or ReasonCode.STOPPED_BY_USER,
                       f"cancelled before a worker started it: {step.message}")
            return "cancelled before it started"
        return "cancel requested"
    if step.kind == Kind.STOP_ORPHAN and run is not None:
        stopped = control.stop_orphan(ep, run)
        registry.record_activity(ep.id, "orphan_stopped", f"stopped {stopped} engine(s) still "
                                 f"answering for serve run {run.flow_run_id}")
        runs.ended(run.id, step.reason or ReasonCode.WORKER_LOST, step.message)
        return f"stopped {stopped} orphan engine(s)"
    if step.kind == Kind.MARK_ENDED and run is not None:
        return "marked ended" if runs.ended(run.id, step.reason or ReasonCode.RUN_ENDED,
                                            step.message) else "already ended"
    if step.kind == Kind.RELEASE:
        if run is not None and run.flow_run_id:
            return f"released {registry.release_run_leases(run.flow_run_id)} lease(s)"
        released = registry.release_leases(ep.id)
        try:  # before the settle that makes it `stopped`: stopped means nothing is left
            control.forget(ep)
        except Exception as exc:  # the endpoint has ended either way; say what is left
            registry.record_activity(ep.id, "cleanup", f"orchestrator cleanup left something: {exc}")
        runs.settle(ep.id)
        return f"released {released} lease(s)"
    if step.kind == Kind.PROMOTE and run is not None:
        return "promoted" if runs.promote(ep.id, run.id) else "not promoted (changed meanwhile)"
    if step.kind == Kind.ABANDON and run is not None:
        runs.drop_candidate(ep.id, run.id, step.message)
        if run.flow_run_id and run.ended_at is None:
            control.cancel(run.flow_run_id, step.message)
        return "replacement abandoned"
    if step.kind == Kind.ADD_REPLICA and step.replica is not None:
        new = runs.add_replica(ep.id, step.replica)
        if new is None:
            return "not added (changed meanwhile)"
        registry.record_activity(ep.id, "replica_added", step.message)
        return f"replica {step.replica} recorded as {new.id}; " + _submit(registry, control, ep, new)
    if step.kind == Kind.RETIRE and run is not None:
        runs.request_run_stop(run.id)  # it leaves the routes now, drains, then stops itself
        registry.record_activity(ep.id, "replica_retired", step.message)
        return "draining"
    if step.kind == Kind.QUEUE and run is not None:
        if run.queued_message != step.message:  # say so once per change, not every pass
            registry.record_activity(ep.id, "queued", step.message)
        runs.queued(run.id, step.message)
        return "queued for capacity"
    if step.kind == Kind.UNQUEUE and run is not None:
        runs.queued(run.id, None)
        registry.record_activity(ep.id, "unqueued", step.message)
        return "no longer queued"
    if step.kind == Kind.FAIL:
        given = runs.give_up(ep.id, step.reason or ReasonCode.RUN_ENDED, step.message, ep.live_run)
        return "verdict recorded" if given else "not recorded (changed meanwhile)"
    if step.kind == Kind.REMOVE:
        registry.remove_endpoint(ep.id)
        return "removed"
    return "waiting"


def _submit(registry: Registry, control: Orchestrator, ep: Endpoint, run: ServeRun) -> str:
    """Hand the run to the orchestrator, then tie the right leases to it."""
    runs = registry.runs
    try:
        flow_run = control.submit(ep, run)
    except Exception as exc:  # the pool, its cluster or Prefect refused it
        if run.purpose == Purpose.START and run.role == Role.LIVE:
            pool = registry.instances()[run.instance or ep.instance].work_pool
            runs.give_up(ep.id, ReasonCode.DEPLOY_FAILED,
                         f"could not submit the serve run to pool {pool}: {exc}", expected_live=run.id)
            return "deploy failed"
        registry.record_activity(ep.id, "submit_deferred", f"serve run not submitted yet: {exc}")
        return f"deferred ({exc})"
    runs.record_submitted(run.id, flow_run)
    if run.role == Role.REPLICA:  # its own leases: the bytes stay while any replica reads them
        return _lease_replica(registry, control, ep, run, flow_run)
    if run.purpose == Purpose.START:
        registry.assign_unowned_leases(ep.id, flow_run)
        return f"submitted as {flow_run}"
    if run.purpose == Purpose.RESTART:
        if not transfer_leases(registry, ep.id, flow_run):
            control.cancel(flow_run, "checkpoint is being reclaimed")
            runs.give_up(ep.id, ReasonCode.CHECKPOINT_UNAVAILABLE,
                         "cannot restart: its checkpoint was deleted and is being reclaimed", run.id)
            return "refused: checkpoint being reclaimed"
        return f"submitted as {flow_run}; leases moved to it"
    view = registry.checkpoint_view(ep.org_id, run.checkpoint_id)
    try:
        assert view is not None
        registry.lease_for_candidate(ep.id, ep.name, [view] + ([view.base] if view.base else []), flow_run)
    except Exception as exc:  # deleted meanwhile: the endpoint keeps its current checkpoint
        control.cancel(flow_run, "replacement's checkpoint is no longer available")
        runs.drop_candidate(ep.id, run.id, f"replacement refused: {exc}")
        return "refused: checkpoint unavailable"
    return f"submitted as {flow_run}; replacement leased"


def _lease_replica(registry: Registry, control: Orchestrator, ep: Endpoint, run: ServeRun,
                   flow_run: str) -> str:
    view = registry.checkpoint_view(ep.org_id, run.checkpoint_id)
    try:
        assert view is not None, "the checkpoint record is gone"
        registry.lease_for_candidate(ep.id, ep.name, [view] + ([view.base] if view.base else []), flow_run)
    except Exception as exc:  # deleted meanwhile: no new reader of its bytes
        control.cancel(flow_run, "the replica's checkpoint is no longer available")
        registry.runs.ended(run.id, ReasonCode.CHECKPOINT_UNAVAILABLE, f"replica refused: {exc}")
        return "refused: checkpoint unavailable"
    return f"submitted as {flow_run}; replica leased"
