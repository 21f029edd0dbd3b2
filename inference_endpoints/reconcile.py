"""Self-healing, decided purely: what should happen to each endpoint, given the facts.

Load → decide (here, no I/O) → apply (the reconcile flow). The serve run itself
watches its engine's health; this planner handles what a serve run cannot see
about itself: that it crashed, that its worker or host died, that an engine still
answers for a run Prefect considers ended, and whether a restart is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from inference_endpoints.status import EndpointStatus, ReasonCode

FINAL_RUN_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})


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
class EndpointFacts:
    endpoint_id: str
    name: str
    status: EndpointStatus
    serve_run_id: str | None
    run_state: str | None  # Prefect state type name, None if the run is unknown
    backend_answers: bool
    was_healthy: bool  # it reached healthy at least once (so a restart makes sense)
    restarts: tuple[datetime, ...] = field(default=())  # when earlier restarts happened


class Action(StrEnum):
    NOTHING = "nothing"
    MARK_UNHEALTHY = "mark_unhealthy"
    STOP_ORPHAN = "stop_orphan"  # an engine answers for a run that has ended
    RESTART = "restart"
    WAIT = "wait"  # a restart is due but its backoff has not passed
    FAIL = "fail"


@dataclass(frozen=True)
class Decision:
    endpoint_id: str
    actions: tuple[Action, ...]
    reason: ReasonCode | None
    message: str


def decide(facts: EndpointFacts, now: datetime, policy: RestartPolicy) -> Decision:
    status = facts.status
    run_over = facts.run_state in FINAL_RUN_STATES
    if status.is_terminal or status in (EndpointStatus.PENDING, EndpointStatus.STOPPING):
        return Decision(facts.endpoint_id, (Action.NOTHING,), None, f"{status}: not reconciled")
    if not run_over:
        return Decision(facts.endpoint_id, (Action.NOTHING,), None, "serve run is alive")
    if status in (EndpointStatus.DEPLOYING, EndpointStatus.LOADING) and not facts.was_healthy:
        # The first start belongs to create-endpoint, which applies its own timeout.
        return Decision(facts.endpoint_id, (Action.NOTHING,), None, "first start: create owns it")
    actions: list[Action] = []
    if facts.backend_answers:
        actions.append(Action.STOP_ORPHAN)
    if status != EndpointStatus.UNHEALTHY:
        actions.append(Action.MARK_UNHEALTHY)
    recent = [t for t in facts.restarts if now - t <= policy.window]
    if len(recent) >= policy.max_restarts:
        actions.append(Action.FAIL)
        return Decision(
            facts.endpoint_id, tuple(actions), ReasonCode.RESTART_LIMIT,
            f"serve run ended ({facts.run_state}) and {len(recent)} restarts in the last "
            f"{int(policy.window.total_seconds() // 60)} min reached the limit",
        )
    due = max(recent, default=None)
    wait = policy.delay(len(recent))
    if due is not None and now < due + wait:
        actions.append(Action.WAIT)
        return Decision(facts.endpoint_id, tuple(actions), ReasonCode.RUN_ENDED,
                        f"restart #{len(recent) + 1} waits until {(due + wait).isoformat()}")
    actions.append(Action.RESTART)
    return Decision(
        facts.endpoint_id, tuple(actions), ReasonCode.RUN_ENDED,
        f"serve run ended ({facts.run_state}); restart #{len(recent) + 1} of "
        f"{policy.max_restarts} allowed per {int(policy.window.total_seconds() // 60)} min",
    )
