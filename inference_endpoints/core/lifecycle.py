"""An endpoint's status, derived purely from what the user wants and what its serve runs did.

Nobody writes a status directly: flows, the CLI and the console record *intents*
(serve, stop) and serve runs record *facts* (submitted, engine started, ready, probe
failures, ended with a reason); `derive` turns them into the one status shown
everywhere, with the reason. The registry stores its result next to the facts so the
gateway and lists read one column, but only `derive` chooses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from inference_endpoints.core.status import REASON_HINTS, EndpointStatus, ReasonCode

FAILED_PROBES_BEFORE_UNHEALTHY = 3


class Desired(StrEnum):
    SERVING = "serving"
    STOPPED = "stopped"


class Role(StrEnum):
    LIVE = "live"  # replica 0: the run the endpoint's status follows
    CANDIDATE = "candidate"  # a replacement for the live run, promoted once ready
    REPLICA = "replica"  # replicas 1..N-1: same checkpoint and configuration as the live run


class Purpose(StrEnum):
    START = "start"
    RESTART = "restart"
    REPLACE = "replace"


@dataclass(frozen=True)
class RunFacts:
    """What one serve run (one engine's life) has done, with its times."""

    id: str
    role: Role
    generation: int
    created_at: datetime
    purpose: Purpose = Purpose.START
    flow_run_id: str | None = None
    submitted_at: datetime | None = None
    engine_started_at: datetime | None = None
    ready_at: datetime | None = None  # /health and a first-token probe both passed
    last_seen_at: datetime | None = None  # the serve run's own last successful probe
    probe_failures: int = 0
    not_ready_message: str | None = None  # why a loaded engine cannot generate (yet)
    ended_at: datetime | None = None
    end_reason: ReasonCode | None = None
    end_message: str | None = None
    stop_requested_at: datetime | None = None
    backend_url: str | None = None
    requested_by: str | None = None  # the flow run that asked for this run (replacements)
    replica: int = 0  # the replica slot this run fills (0: the live run)
    config_key: str = ""  # checkpoint and serving configuration: replicas must match the live run
    queued_at: datetime | None = None  # last seen waiting for a slot of its (full) work pool
    queued_message: str | None = None  # why it waits: the pool, its limit, who holds the slots

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    @property
    def serving(self) -> bool:
        """Ready, not ended, not being drained: the gateway may route to it."""
        return (self.ready_at is not None and not self.ended and self.stop_requested_at is None
                and self.probe_failures < FAILED_PROBES_BEFORE_UNHEALTHY)


@dataclass(frozen=True)
class Intent:
    """What the user (or a policy acting for them) wants of the endpoint."""

    desired: Desired
    stop_reason: ReasonCode | None = None  # why it was asked to stop
    stop_message: str | None = None
    remove: bool = False  # remove the record once stopped
    verdict: ReasonCode | None = None  # the reconciler gave up (restart limit, deploy timeout, …)
    verdict_message: str | None = None


@dataclass(frozen=True)
class Derived:
    status: EndpointStatus
    reason: ReasonCode | None
    message: str
    live_run: str | None  # the serve run whose facts the status describes
    backend_url: str | None  # where the gateway routes, only while that run is serving

    @property
    def hint(self) -> str:
        return REASON_HINTS.get(self.reason, "") if self.reason else ""


def live_run(runs: Sequence[RunFacts], live_id: str | None) -> RunFacts | None:
    return next((r for r in runs if r.id == live_id), None)


def derive(intent: Intent, runs: Sequence[RunFacts], live_id: str | None,
           holds_leases: bool = False) -> Derived:
    """The endpoint's status from its intent, its runs' facts and which run is live.

    `stopped` and `failed` also mean "holds nothing": while such an endpoint's checkpoint
    leases are still open (released, with any orchestration state, by the reconciler's next
    step) it is still `stopping`.
    """
    live = live_run(runs, live_id)
    running = [r for r in runs if not r.ended]
    ever_ready = any(r.ready_at is not None for r in runs if r.role == Role.LIVE or r.id == live_id)
    if intent.verdict is not None:
        if running:
            return Derived(EndpointStatus.STOPPING, intent.verdict, intent.verdict_message or "",
                           live_id, None)
        if holds_leases:
            return Derived(EndpointStatus.STOPPING, intent.verdict,
                           f"{intent.verdict_message or 'failed'}; releasing its checkpoints", live_id, None)
        return Derived(EndpointStatus.FAILED, intent.verdict, intent.verdict_message or "", live_id, None)
    if intent.desired == Desired.STOPPED:
        reason = intent.stop_reason or ReasonCode.STOPPED_BY_USER
        message = intent.stop_message or "stopped"
        if running:
            return Derived(EndpointStatus.STOPPING, reason, message, live_id, None)
        if holds_leases:
            return Derived(EndpointStatus.STOPPING, reason, f"{message}; releasing its checkpoints",
                           live_id, None)
        return Derived(EndpointStatus.STOPPED, reason, message, live_id, None)
    serving_replicas = [r for r in runs if r.role == Role.REPLICA and r.serving and r.backend_url]
    live_serving = live is not None and live.serving and live.backend_url
    if serving_replicas and not live_serving:
        first = serving_replicas[0]
        return Derived(EndpointStatus.HEALTHY, None,
                       f"serving on {len(serving_replicas)} replica(s) while replica 0 is not ready",
                       live_id, first.backend_url)
    if live is None or live.flow_run_id is None:
        return Derived(EndpointStatus.PENDING, None, "waiting for its serve run to be submitted",
                       live_id, None)
    if live.ended:
        reason = live.end_reason or ReasonCode.RUN_ENDED
        message = live.end_message or "the serve run ended"
        if not ever_ready:  # a first start that dies is a failure, with the engine's root cause
            return Derived(EndpointStatus.FAILED, reason, message, live.id, None)
        return Derived(EndpointStatus.UNHEALTHY, reason, message, live.id, None)
    if live.ready_at is None:
        if live.engine_started_at is None:
            if live.queued_message:
                return Derived(EndpointStatus.DEPLOYING, ReasonCode.QUEUED_FOR_CAPACITY,
                               live.queued_message, live.id, None)
            return Derived(EndpointStatus.DEPLOYING, None,
                           f"serve run {live.flow_run_id} waits for a worker", live.id, None)
        return Derived(EndpointStatus.LOADING, None,
                       live.not_ready_message or "engine started; loading the model", live.id, None)
    if live.probe_failures >= FAILED_PROBES_BEFORE_UNHEALTHY:
        return Derived(EndpointStatus.UNHEALTHY, ReasonCode.HEALTH_CHECK_FAILED,
                       live.not_ready_message or f"/health failed {live.probe_failures} times in a row",
                       live.id, None)
    return Derived(EndpointStatus.HEALTHY, None, "engine answers /health and generates",
                   live.id, live.backend_url)


def serving_backends(runs: Sequence[RunFacts], live_id: str | None) -> tuple[str, ...]:
    """Every address the gateway may balance over: the live run first, then ready replicas."""
    live = live_run(runs, live_id)
    urls = [live.backend_url] if live is not None and live.serving and live.backend_url else []
    urls += sorted(r.backend_url for r in runs
                   if r.role == Role.REPLICA and r.serving and r.backend_url and r.backend_url not in urls)
    return tuple(urls)
