"""The self-healing planner, decided from facts alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from inference_endpoints.reconcile import Action, EndpointFacts, RestartPolicy, decide
from inference_endpoints.status import EndpointStatus, ReasonCode

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
POLICY = RestartPolicy(max_restarts=3, window=timedelta(minutes=10), backoff=timedelta(seconds=5))


def facts(status: str = "healthy", run_state: str | None = "RUNNING", answers: bool = True,
          was_healthy: bool = True, restarts: tuple[int, ...] = ()) -> EndpointFacts:
    return EndpointFacts("ep_1", "chat", EndpointStatus(status), "run-1", run_state, answers,
                         was_healthy, tuple(NOW - timedelta(seconds=s) for s in restarts))


@pytest.mark.parametrize(("f", "expected"), [
    (facts(), (Action.NOTHING,)),
    (facts(status="unhealthy"), (Action.NOTHING,)),  # run alive: the serve run owns engine health
    (facts(status="stopping", run_state="CANCELLED", answers=False), (Action.NOTHING,)),
    (facts(status="stopped", run_state="CANCELLED", answers=False), (Action.NOTHING,)),
    (facts(status="loading", run_state="CRASHED", answers=False, was_healthy=False), (Action.NOTHING,)),
    (facts(run_state="CRASHED", answers=False), (Action.MARK_UNHEALTHY, Action.RESTART)),
    (facts(status="unhealthy", run_state="FAILED", answers=False), (Action.RESTART,)),
    (facts(run_state="COMPLETED", answers=True),
     (Action.STOP_ORPHAN, Action.MARK_UNHEALTHY, Action.RESTART)),
    (facts(status="loading", run_state="CRASHED", answers=False, restarts=(30,)), (Action.MARK_UNHEALTHY, Action.RESTART)),
    (facts(status="unhealthy", run_state="FAILED", answers=False, restarts=(2,)), (Action.WAIT,)),
    (facts(status="unhealthy", run_state="FAILED", answers=False, restarts=(1000, 900)), (Action.RESTART,)),
    (facts(status="unhealthy", run_state="FAILED", answers=False, restarts=(60, 30, 20)), (Action.FAIL,)),
    (facts(run_state="CRASHED", answers=True, restarts=(60, 30, 20)),
     (Action.STOP_ORPHAN, Action.MARK_UNHEALTHY, Action.FAIL)),
])
def test_decisions(f: EndpointFacts, expected: tuple[Action, ...]) -> None:
    assert decide(f, NOW, POLICY).actions == expected


def test_backoff_doubles_and_is_capped() -> None:
    assert [POLICY.delay(n).total_seconds() for n in range(5)] == [0, 5, 10, 20, 40]
    assert RestartPolicy(backoff=timedelta(minutes=1)).delay(10) == timedelta(minutes=2)


def test_waiting_restart_says_when() -> None:
    d = decide(facts(status="unhealthy", run_state="FAILED", answers=False, restarts=(2,)), NOW, POLICY)
    assert "waits until" in d.message


def test_restart_limit_names_the_reason() -> None:
    d = decide(facts(status="unhealthy", run_state="FAILED", answers=False, restarts=(60, 30, 20)),
               NOW, POLICY)
    assert d.reason == ReasonCode.RESTART_LIMIT and "3 restarts" in d.message
