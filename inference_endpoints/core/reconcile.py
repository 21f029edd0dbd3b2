"""The one reconcile decision: given an endpoint's intent and its serve runs' facts, what to do.

Load → decide (here, no I/O) → apply (guarded updates, `services/reconciler.py`), the
shape the garbage collector has. Everything that changes an endpoint's serve runs goes
through here: first starts, restarts under the policy, stops, rolling replacements,
timeouts, orphans. A run is believed ended only on evidence: its own report, or Prefect
saying it is over *and* its serve run has gone quiet *and* (for an orphan) its engine was
stopped. Prefect alone is never enough: after an outage it marks live runs `Crashed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from inference_endpoints.core.lifecycle import Derived, Desired, Intent, Purpose, Role, RunFacts, derive
from inference_endpoints.core.status import EndpointStatus, ReasonCode

FINAL_RUN_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
STOPPING_RUN_STATES = frozenset({"CANCELLING", "CANCELLED"})


@dataclass(frozen=True)
class RestartPolicy:
    """Restart at most `max_restarts` times within `window`, waiting longer each time."""

    max_restarts: int = 3
    window: timedelta = timedelta(minutes=10)
    backoff: timedelta = timedelta(seconds=5)
    max_backoff: timedelta = timedelta(minutes=2)

    def delay(self, restarts_in_window: int) -> timedelta:
        if restarts_in_window == 0:
            return timedelta(0)
        return min(self.backoff * 2 ** (restarts_in_window - 1), self.max_backoff)


@dataclass(frozen=True)
class Timing:
    """How long to believe a quiet serve run is still there, and how long to drain."""

    quiet: timedelta = timedelta(seconds=20)  # no heartbeat for this long: the serve run is gone
    resubmit_after: timedelta = timedelta(seconds=20)  # a run recorded but never submitted
    # A replaced run drains itself (its serve run waits out the gateways' switch and its
    # in-flight requests, at most 30 s); Prefect cancels it only if it is still there after this.
    drain: timedelta = timedelta(seconds=45)


@dataclass(frozen=True)
class Observed:
    """One serve run's facts plus what the reconciler saw this pass."""

    facts: RunFacts
    prefect_state: str | None = None  # state type name; None if unknown or not submitted
    answers: bool = False  # its backend address answered a probe just now
    requester_state: str | None = None  # state of the flow run that asked for it, if any


@dataclass(frozen=True)
class Capacity:
    """A work pool's slots as Prefect counts them (runs Pending or Running) and who holds them."""

    pool: str
    limit: int | None  # None: the pool has no concurrency limit
    holders: tuple[str, ...] = ()  # names of the flow runs holding a slot

    @property
    def full(self) -> bool:
        return self.limit is not None and len(self.holders) >= self.limit

    def describe(self) -> str:
        shown = ", ".join(self.holders[:5]) + (f" and {len(self.holders) - 5} more"
                                                if len(self.holders) > 5 else "")
        return (f"queued for capacity: work pool {self.pool} runs {len(self.holders)} of its "
                f"{self.limit} slots ({shown}); it starts when one of them ends")


@dataclass(frozen=True)
class Snapshot:
    endpoint_id: str
    name: str
    intent: Intent
    live_id: str | None
    candidate_id: str | None
    runs: tuple[Observed, ...]
    startup_timeout: timedelta
    # Flow run ids holding open leases (None: a lease not yet tied to a run).
    open_lease_runs: frozenset[str | None] = frozenset()
    prefect_readable: bool = True
    capacity: Capacity | None = None  # the instance's work pool, read when a run waits for it
    replicas: int = 1  # how many engines the endpoint wants (the live run is replica 0)


class Kind(StrEnum):
    SUBMIT = "submit"  # hand a recorded run to Prefect (idempotent per run)
    RESTART = "restart"  # record a new live run that takes over the leases
    WAIT = "wait"  # a restart is due but its backoff has not passed
    QUEUE = "queue"  # a submitted run waits for a slot of its full pool: say why, no timeout
    UNQUEUE = "unqueue"  # a slot is free: the run no longer waits for capacity
    ADD_REPLICA = "add_replica"  # record and submit a run for an empty replica slot
    RETIRE = "retire"  # a replica leaves (scale-down, stale configuration): drain, then stop
    CANCEL = "cancel"  # ask Prefect (and the serve run, via the registry) to stop a run
    STOP_ORPHAN = "stop_orphan"  # an engine answers for a run whose serve run is gone
    MARK_ENDED = "mark_ended"  # record that a run is over, for a serve run that cannot
    RELEASE = "release"  # release the leases a run (or the endpoint) held
    PROMOTE = "promote"  # switch the stable URL to a ready candidate
    ABANDON = "abandon"  # give up on a candidate: the endpoint keeps its live run
    FAIL = "fail"  # the endpoint cannot be served: record the verdict
    REMOVE = "remove"  # the user asked to remove it and everything has ended


@dataclass(frozen=True)
class Step:
    kind: Kind
    run_id: str | None = None
    reason: ReasonCode | None = None
    message: str = ""
    replica: int | None = None  # the slot an ADD_REPLICA fills


@dataclass(frozen=True)
class Plan:
    derived: Derived
    steps: tuple[Step, ...] = field(default=())

    @property
    def kinds(self) -> tuple[Kind, ...]:
        return tuple(s.kind for s in self.steps)


def _age(since: datetime | None, now: datetime) -> timedelta:
    return now - since if since is not None else timedelta.max


def _quiet(run: RunFacts, now: datetime, timing: Timing) -> bool:
    """The serve run has written nothing for a while (heartbeats come every few seconds)."""
    last = max((t for t in (run.last_seen_at, run.engine_started_at, run.submitted_at, run.created_at)
                if t is not None), default=None)
    return _age(last, now) >= timing.quiet


def _end_steps(snap: Snapshot, obs: Observed, now: datetime, timing: Timing) -> list[Step]:
    """For a run the registry still thinks is running: is there evidence it is over?"""
    run, state = obs.facts, obs.prefect_state
    if run.ended or state not in FINAL_RUN_STATES or not _quiet(run, now, timing):
        return []  # alive, or Prefect unsure, or its serve run still reports in
    if obs.answers:
        return [Step(Kind.STOP_ORPHAN, run.id, ReasonCode.WORKER_LOST,
                     f"serve run is {state} and silent but its engine still answers")]
    reason = ReasonCode.STOPPED_BY_USER if state == "CANCELLED" else ReasonCode.WORKER_LOST
    return [Step(Kind.MARK_ENDED, run.id, reason,
                 f"serve run is {state} in Prefect and has not reported for "
                 f"{int(_age(run.last_seen_at, now).total_seconds()) if run.last_seen_at else '?'} s")]


def _cancel(obs: Observed, message: str) -> list[Step]:
    if obs.facts.ended or obs.prefect_state in STOPPING_RUN_STATES | FINAL_RUN_STATES:
        return []
    return [Step(Kind.CANCEL, obs.facts.id, None, message)]


def _restart_steps(snap: Snapshot, live: RunFacts, now: datetime, policy: RestartPolicy) -> list[Step]:
    restarts = [o.facts.created_at for o in snap.runs
                if o.facts.role == Role.LIVE and o.facts.generation > 0
                and now - o.facts.created_at <= policy.window and _is_restart(o.facts)]
    why = live.end_message or "the serve run ended"
    if len(restarts) >= policy.max_restarts:
        return [Step(Kind.FAIL, live.id, ReasonCode.RESTART_LIMIT,
                     f"{why}; {len(restarts)} restarts in the last "
                     f"{int(policy.window.total_seconds() // 60)} min reached the limit")]
    last = max(restarts, default=None)
    wait = policy.delay(len(restarts))
    if last is not None and now < last + wait:
        return [Step(Kind.WAIT, live.id, live.end_reason,
                     f"restart #{len(restarts) + 1} waits until {(last + wait).isoformat()}")]
    return [Step(Kind.RESTART, live.id, live.end_reason or ReasonCode.RUN_ENDED,
                 f"{why}; restart #{len(restarts) + 1} of {policy.max_restarts} allowed per "
                 f"{int(policy.window.total_seconds() // 60)} min")]


def _is_restart(run: RunFacts) -> bool:
    return run.purpose == Purpose.RESTART


def decide(snap: Snapshot, now: datetime, policy: RestartPolicy = RestartPolicy(),
           timing: Timing = Timing()) -> Plan:
    """Every step this endpoint needs now, in order; an empty plan when all is as wanted."""
    facts = tuple(o.facts for o in snap.runs)
    derived = derive(snap.intent, facts, snap.live_id, bool(snap.open_lease_runs))
    steps: list[Step] = []
    for obs in snap.runs:
        steps += _end_steps(snap, obs, now, timing)
    if steps:  # settle what ended first; the next pass decides on the new facts
        return Plan(derived, tuple(steps))
    by_id = {o.facts.id: o for o in snap.runs}
    live = by_id.get(snap.live_id) if snap.live_id else None
    candidate = by_id.get(snap.candidate_id) if snap.candidate_id else None
    giving_up = snap.intent.verdict is not None or snap.intent.desired == Desired.STOPPED \
        or derived.status == EndpointStatus.FAILED
    if giving_up:
        for obs in snap.runs:
            steps += _cancel(obs, derived.message or "endpoint stopped")
        if all(o.facts.ended for o in snap.runs):
            if snap.open_lease_runs:
                steps.append(Step(Kind.RELEASE, None, None, "every serve run has ended"))
            elif snap.intent.remove:
                steps.append(Step(Kind.REMOVE, None, None, "stopped; removing as asked"))
        return Plan(derived, tuple(steps))
    # Runs that are neither live nor candidate (replaced, abandoned): drained, then stopped.
    for obs in snap.runs:
        run = obs.facts
        if run.id in (snap.live_id, snap.candidate_id) or run.role == Role.REPLICA:
            continue
        if run.ended:
            if run.flow_run_id in snap.open_lease_runs:
                steps.append(Step(Kind.RELEASE, run.id, None, "replaced run has ended"))
        elif _age(run.stop_requested_at, now) >= timing.drain or run.stop_requested_at is None:
            steps += _cancel(obs, "replaced: drained")
    steps += _run_steps(snap, live, now, policy, timing, first_start=not _ever_ready(facts))
    if candidate is not None:
        steps += _candidate_steps(snap, candidate, live, now, timing)
    steps += _replica_steps(snap, live, now, policy, timing)
    return Plan(derived, tuple(steps))


def _ever_ready(runs: tuple[RunFacts, ...]) -> bool:
    return any(r.ready_at is not None for r in runs if r.role in (Role.LIVE, Role.REPLICA))


def _run_steps(snap: Snapshot, live: Observed | None, now: datetime, policy: RestartPolicy,
               timing: Timing, *, first_start: bool) -> list[Step]:
    if live is None:
        return []
    run = live.facts
    if run.ended:
        return [] if first_start else _restart_steps(snap, run, now, policy)
    if run.flow_run_id is None:
        if _age(run.created_at, now) >= timing.resubmit_after or run.submitted_at is None:
            return [Step(Kind.SUBMIT, run.id, None, f"submit serve run generation {run.generation}")]
        return []
    queue = _queue_steps(snap, live)
    if queue and queue[0].kind == Kind.QUEUE:
        return queue
    # Each phase gets the whole startup timeout: waiting for a worker (counted from when
    # its pool last had no free slot), then loading.
    phase_start = run.engine_started_at or max(run.created_at, run.queued_at or run.created_at)
    if run.ready_at is None and _age(phase_start, now) > snap.startup_timeout:
        started = run.engine_started_at is not None
        reason = ReasonCode.HEALTH_TIMEOUT if started else ReasonCode.DEPLOY_TIMEOUT
        phase = "loading" if started else "waiting for a worker"
        message = (f"not ready after {int(snap.startup_timeout.total_seconds())} s (still {phase})"
                   + (f": {run.not_ready_message}" if run.not_ready_message else ""))
        if first_start:
            return [Step(Kind.FAIL, run.id, reason, message)]
        return [Step(Kind.CANCEL, run.id, reason, message)]
    return queue


def _queue_steps(snap: Snapshot, obs: Observed) -> list[Step]:
    """A submitted run no worker may start yet because its pool is full waits without a timeout."""
    run = obs.facts
    if run.engine_started_at is not None or run.flow_run_id is None:
        return []
    cap = snap.capacity
    if obs.prefect_state == "SCHEDULED" and cap is not None and cap.full:
        return [Step(Kind.QUEUE, run.id, ReasonCode.QUEUED_FOR_CAPACITY, cap.describe())]
    if run.queued_message and (cap is not None or obs.prefect_state not in (None, "SCHEDULED")):
        return [Step(Kind.UNQUEUE, run.id, None, "a slot of its work pool is free")]
    return []


def _candidate_steps(snap: Snapshot, cand: Observed, live: Observed | None, now: datetime,
                     timing: Timing) -> list[Step]:
    run = cand.facts
    if run.ended:
        return [Step(Kind.ABANDON, run.id, run.end_reason,
                     f"the replacement ended before it was ready: {run.end_message or 'no reason'}")]
    if cand.requester_state in FINAL_RUN_STATES - {"COMPLETED"}:
        return [Step(Kind.ABANDON, run.id, ReasonCode.RUN_ENDED,
                     f"the flow that asked for this replacement is {cand.requester_state}")]
    if run.flow_run_id is None:
        return [Step(Kind.SUBMIT, run.id, None, "submit the replacement")]
    queue = _queue_steps(snap, cand)
    if queue and queue[0].kind == Kind.QUEUE:
        return queue
    if run.serving:
        live_ok = live is not None and not live.facts.ended
        why = "replacement is ready" + ("" if live_ok else " and the live run is gone")
        return [Step(Kind.PROMOTE, run.id, None, why)]
    if _age(max(run.created_at, run.queued_at or run.created_at), now) > snap.startup_timeout:
        return [Step(Kind.ABANDON, run.id, ReasonCode.HEALTH_TIMEOUT,
                     f"the replacement was not ready after {int(snap.startup_timeout.total_seconds())} s")]
    return queue


def _replica_steps(snap: Snapshot, live: Observed | None, now: datetime, policy: RestartPolicy,
                   timing: Timing) -> list[Step]:
    """Replicas 1..N-1: each slot filled by one run with the live run's configuration; runs
    beyond the wanted count or with a stale configuration drain and stop; an ended replica is
    replaced under the restart policy, counted per slot."""
    steps: list[Step] = []
    filled: set[int] = set()
    live_key = live.facts.config_key if live is not None else ""
    live_serving = live is not None and live.facts.serving
    for obs in snap.runs:
        run = obs.facts
        if run.role != Role.REPLICA:
            continue
        if run.ended:
            if run.flow_run_id in snap.open_lease_runs:
                steps.append(Step(Kind.RELEASE, run.id, None, f"replica {run.replica} has ended"))
            continue
        if run.stop_requested_at is not None:  # draining: Prefect cancels it only as a backstop
            if _age(run.stop_requested_at, now) >= timing.drain:
                steps += _cancel(obs, f"replica {run.replica} drained")
            continue
        if run.replica >= snap.replicas:
            steps.append(Step(Kind.RETIRE, run.id, None, f"scaled to {snap.replicas} replica(s): "
                              f"replica {run.replica} drains and stops"))
            continue
        if live_serving and run.config_key != live_key:
            steps.append(Step(Kind.RETIRE, run.id, None, f"replica {run.replica} serves an older "
                              "checkpoint or configuration than the live run: replaced"))
            continue
        filled.add(run.replica)
        if run.flow_run_id is None:
            if _age(run.created_at, now) >= timing.resubmit_after or run.submitted_at is None:
                steps.append(Step(Kind.SUBMIT, run.id, None, f"submit replica {run.replica}"))
            continue
        queue = _queue_steps(snap, obs)
        if queue and queue[0].kind == Kind.QUEUE:
            steps += queue
            continue
        phase_start = run.engine_started_at or max(run.created_at, run.queued_at or run.created_at)
        if run.ready_at is None and _age(phase_start, now) > snap.startup_timeout:
            steps += _cancel(obs, f"replica {run.replica} not ready after "
                             f"{int(snap.startup_timeout.total_seconds())} s")
            continue
        steps += queue
    if live is None or snap.intent.desired != Desired.SERVING:
        return steps
    for slot in range(1, snap.replicas):
        if slot not in filled:
            steps += _fill_slot(snap, slot, now, policy)
    return steps


def _fill_slot(snap: Snapshot, slot: int, now: datetime, policy: RestartPolicy) -> list[Step]:
    earlier = [o.facts for o in snap.runs if o.facts.role == Role.REPLICA and o.facts.replica == slot
               and now - o.facts.created_at <= policy.window]
    if len(earlier) > policy.max_restarts:
        return [Step(Kind.WAIT, None, ReasonCode.RESTART_LIMIT,
                     f"replica {slot} ended {len(earlier)} times in the last "
                     f"{int(policy.window.total_seconds() // 60)} min: not started again", slot)]
    last = max((r.created_at for r in earlier), default=None)
    wait = policy.delay(max(len(earlier) - 1, 0))  # the first replacement starts at once
    if last is not None and now < last + wait:
        return [Step(Kind.WAIT, None, None, f"replica {slot} starts again at {(last + wait).isoformat()}",
                     slot)]
    why = f"replica {slot} of {snap.replicas}" + (" ended: starting another" if earlier else ": starting it")
    return [Step(Kind.ADD_REPLICA, None, None, why, slot)]
