"""Status derivation as a table: intent and serve-run facts → status and reason (no I/O)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from inference_endpoints.core.lifecycle import Desired, Intent, Role, RunFacts, derive
from inference_endpoints.core.status import EndpointStatus, ReasonCode

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
S = EndpointStatus


def run(rid: str = "r0", gen: int = 0, **facts: object) -> RunFacts:
    return replace(RunFacts(id=rid, role=Role.LIVE, generation=gen, created_at=T0), **facts)


RECORDED = run()
SUBMITTED = run(flow_run_id="fr0", submitted_at=T0)
QUEUED = replace(SUBMITTED, queued_at=T0, queued_message="queued for capacity: work pool cpu-dev …")
STARTED = replace(SUBMITTED, engine_started_at=T0, backend_url="http://127.0.0.1:9001")
NOT_GENERATING = replace(STARTED, not_ready_message="first-token probe got HTTP 500")
READY = replace(STARTED, ready_at=T0, last_seen_at=T0)
FLAKY = replace(READY, probe_failures=2)
FAILING = replace(READY, probe_failures=3)
CRASHED_FIRST = replace(STARTED, ended_at=T0, end_reason=ReasonCode.ENGINE_EXITED,
                        end_message="Worker proc died")
CRASHED_LATER = replace(READY, ended_at=T0, end_reason=ReasonCode.ENGINE_EXITED, end_message="boom")
STOPPED_RUN = replace(READY, ended_at=T0, end_reason=ReasonCode.STOPPED_BY_USER)
DRAINING = replace(READY, stop_requested_at=T0)

SERVE = Intent(Desired.SERVING)
STOP = Intent(Desired.STOPPED, ReasonCode.STOPPED_BY_USER, "stopped by user")
IDLE = Intent(Desired.STOPPED, ReasonCode.IDLE_TIMEOUT, "idle")
GAVE_UP = Intent(Desired.SERVING, verdict=ReasonCode.DEPLOY_TIMEOUT, verdict_message="no worker")


@pytest.mark.parametrize(("intent", "runs", "live", "status", "reason"), [
    # serving: the live run's facts decide
    (SERVE, [], None, S.PENDING, None),
    (SERVE, [RECORDED], "r0", S.PENDING, None),
    (SERVE, [SUBMITTED], "r0", S.DEPLOYING, None),
    (SERVE, [QUEUED], "r0", S.DEPLOYING, ReasonCode.QUEUED_FOR_CAPACITY),
    (SERVE, [STARTED], "r0", S.LOADING, None),
    (SERVE, [replace(QUEUED, engine_started_at=T0)], "r0", S.LOADING, None),  # its note is history
    (SERVE, [NOT_GENERATING], "r0", S.LOADING, None),  # /health alone is not ready
    (SERVE, [READY], "r0", S.HEALTHY, None),
    (SERVE, [FLAKY], "r0", S.HEALTHY, None),
    (SERVE, [FAILING], "r0", S.UNHEALTHY, ReasonCode.HEALTH_CHECK_FAILED),
    (SERVE, [CRASHED_FIRST], "r0", S.FAILED, ReasonCode.ENGINE_EXITED),  # never ready: a failure
    (SERVE, [CRASHED_LATER], "r0", S.UNHEALTHY, ReasonCode.ENGINE_EXITED),  # a restart may follow
    # a restart: the old run ended, the new one is starting, then ready
    (SERVE, [CRASHED_LATER, run("r1", 1)], "r1", S.PENDING, None),
    (SERVE, [CRASHED_LATER, replace(STARTED, id="r1", generation=1)], "r1", S.LOADING, None),
    (SERVE, [CRASHED_LATER, replace(CRASHED_FIRST, id="r1", generation=1)], "r1", S.UNHEALTHY,
     ReasonCode.ENGINE_EXITED),  # it was healthy once: the restart policy decides, not "failed"
    (SERVE, [CRASHED_LATER, replace(READY, id="r1", generation=1)], "r1", S.HEALTHY, None),
    # a replacement in progress does not change what the live run says
    (SERVE, [READY, replace(STARTED, id="c1", generation=1, role=Role.CANDIDATE)], "r0", S.HEALTHY, None),
    (SERVE, [DRAINING, replace(READY, id="c1", generation=1)], "c1", S.HEALTHY, None),
    # stop intent: stopping until every run has ended
    (STOP, [READY], "r0", S.STOPPING, ReasonCode.STOPPED_BY_USER),
    (STOP, [STOPPED_RUN], "r0", S.STOPPED, ReasonCode.STOPPED_BY_USER),
    (STOP, [RECORDED], "r0", S.STOPPING, ReasonCode.STOPPED_BY_USER),
    (STOP, [], None, S.STOPPED, ReasonCode.STOPPED_BY_USER),
    (IDLE, [STOPPED_RUN], "r0", S.STOPPED, ReasonCode.IDLE_TIMEOUT),
    (STOP, [STOPPED_RUN, replace(READY, id="c1", generation=1, role=Role.CANDIDATE)], "r0",
     S.STOPPING, ReasonCode.STOPPED_BY_USER),  # a candidate still running keeps it stopping
    # the reconciler gave up: failed once nothing runs
    (GAVE_UP, [SUBMITTED], "r0", S.STOPPING, ReasonCode.DEPLOY_TIMEOUT),
    (GAVE_UP, [replace(SUBMITTED, ended_at=T0)], "r0", S.FAILED, ReasonCode.DEPLOY_TIMEOUT),
    (replace(GAVE_UP, desired=Desired.STOPPED), [], None, S.FAILED, ReasonCode.DEPLOY_TIMEOUT),
])
def test_derive(intent: Intent, runs: list[RunFacts], live: str | None, status: EndpointStatus,
                reason: ReasonCode | None) -> None:
    derived = derive(intent, runs, live)
    assert (derived.status, derived.reason) == (status, reason)


def test_only_a_serving_run_is_routed() -> None:
    assert derive(SERVE, [READY], "r0").backend_url == "http://127.0.0.1:9001"
    for facts in (STARTED, NOT_GENERATING, FAILING, CRASHED_LATER):
        assert derive(SERVE, [facts], "r0").backend_url is None, facts
    assert derive(STOP, [READY], "r0").backend_url is None


def test_failure_carries_the_engines_root_cause_and_a_hint() -> None:
    derived = derive(SERVE, [CRASHED_FIRST], "r0")
    assert derived.message == "Worker proc died"
    assert derived.hint  # every reason has a hint for the user


def test_a_stale_failure_reason_clears_once_healthy_again() -> None:
    assert derive(SERVE, [replace(FAILING, probe_failures=0)], "r0").reason is None


def test_times_are_not_needed_to_derive() -> None:
    later = replace(READY, last_seen_at=T0 + timedelta(hours=5))
    assert derive(SERVE, [later], "r0").status == S.HEALTHY


@pytest.mark.parametrize(("intent", "runs", "holds", "status"), [
    (STOP, [STOPPED_RUN], True, S.STOPPING),   # every run ended, its leases not yet released
    (STOP, [STOPPED_RUN], False, S.STOPPED),   # released: now it holds nothing
    (STOP, [READY], False, S.STOPPING),        # a running engine is stopping whatever it holds
    (IDLE, [STOPPED_RUN], True, S.STOPPING),
    (GAVE_UP, [STOPPED_RUN], True, S.STOPPING),   # failed, too, means it holds nothing
    (GAVE_UP, [STOPPED_RUN], False, S.FAILED),
])
def test_stopped_means_it_holds_nothing(intent: Intent, runs: list[RunFacts], holds: bool,
                                        status: EndpointStatus) -> None:
    derived = derive(intent, runs, "r0", holds_leases=holds)
    assert derived.status == status
    assert ("releasing" in derived.message) == (holds and not any(r.ended_at is None for r in runs))


def test_a_ready_replica_keeps_the_endpoint_serving_while_the_live_run_restarts() -> None:
    from inference_endpoints.core.lifecycle import serving_backends

    rep = replace(READY, id="p1", role=Role.REPLICA, replica=1, backend_url="http://127.0.0.1:9002")
    derived = derive(SERVE, [CRASHED_LATER, rep], "r0")
    assert (derived.status, derived.backend_url) == (S.HEALTHY, "http://127.0.0.1:9002")
    assert "1 replica" in derived.message
    assert serving_backends([READY, rep], "r0") == ("http://127.0.0.1:9001", "http://127.0.0.1:9002")
    assert serving_backends([READY, replace(rep, stop_requested_at=T0)], "r0") == ("http://127.0.0.1:9001",)
    assert derive(STOP, [STOPPED_RUN, rep], "r0").status == S.STOPPING  # a replica still runs
