"""The one reconcile decision as tables: facts and observations → steps (no Prefect, no DB)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from inference_endpoints.core.lifecycle import Desired, Intent, Purpose, Role, RunFacts
from inference_endpoints.core.reconcile import (
    Capacity,
    Kind,
    Observed,
    RestartPolicy,
    Snapshot,
    Timing,
    decide,
)
from inference_endpoints.core.status import ReasonCode

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
POLICY = RestartPolicy(max_restarts=3, window=timedelta(minutes=10), backoff=timedelta(seconds=5))
TIMING = Timing(quiet=timedelta(seconds=20), resubmit_after=timedelta(seconds=20),
                drain=timedelta(seconds=3))
K = Kind


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def run(rid: str = "r0", gen: int = 0, *, role: Role = Role.LIVE, purpose: Purpose = Purpose.START,
        created: float = 60, **facts: object) -> RunFacts:
    return replace(RunFacts(id=rid, role=role, generation=gen, created_at=ago(created),
                            purpose=purpose), **facts)


RECORDED = run()
SUBMITTED = run(flow_run_id="fr0", submitted_at=ago(59))
LOADING = replace(SUBMITTED, engine_started_at=ago(50), backend_url="http://b0", last_seen_at=ago(2))
READY = replace(LOADING, ready_at=ago(40))
SILENT = replace(READY, last_seen_at=ago(120))  # its serve run stopped reporting 2 minutes ago
CRASHED = replace(READY, ended_at=ago(1), end_reason=ReasonCode.ENGINE_EXITED, end_message="boom")
DIED_LOADING = replace(LOADING, ended_at=ago(1), end_reason=ReasonCode.ENGINE_EXITED, end_message="oom")

SERVE = Intent(Desired.SERVING)
STOP = Intent(Desired.STOPPED, ReasonCode.STOPPED_BY_USER, "stopped by user")
REMOVE = replace(STOP, remove=True)


def snap(*runs: Observed, intent: Intent = SERVE, live: str | None = "r0", candidate: str | None = None,
         leases: frozenset[str | None] = frozenset({"fr0"}), timeout: float = 300,
         cap: Capacity | None = None, replicas: int = 1) -> Snapshot:
    return Snapshot("ep_1", "chat", intent, live, candidate, runs, timedelta(seconds=timeout), leases,
                    capacity=cap, replicas=replicas)


def replica(rid: str = "p1", slot: int = 1, base: RunFacts | None = None, **facts: object) -> RunFacts:
    """A replica run: like the live one (same configuration) unless told otherwise."""
    values: dict[str, object] = {"flow_run_id": f"f{rid}", **facts}
    return replace(base or READY, id=rid, role=Role.REPLICA, replica=slot, generation=10 + slot, **values)


ENDED_REPLICA = replica(base=CRASHED, created_at=ago(100))
TWO = {"replicas": 2}


FULL = Capacity("cpu-dev", 2, ("serve/default/a", "serve/default/b"))
FREE = Capacity("cpu-dev", 2, ("serve/default/a",))
UNLIMITED = Capacity("cpu-dev", None)
QUEUED = replace(SUBMITTED, queued_at=ago(5), queued_message="queued for capacity: …")
CANDIDATE_WAITING = replace(SUBMITTED, id="c1", generation=1, role=Role.CANDIDATE, flow_run_id="fc1",
                            created_at=ago(400))


def seen(facts: RunFacts, state: str | None = "RUNNING", answers: bool = False) -> Observed:
    return Observed(facts, state, answers)


def restarts(*seconds_ago: float) -> list[Observed]:
    """Earlier live runs: the first start, then restarts created `seconds_ago`."""
    older = [seen(replace(CRASHED, id="old0", generation=0, created_at=ago(3000), flow_run_id="fro0"),
                  "FAILED")]
    for i, s in enumerate(seconds_ago, start=1):
        older.append(seen(replace(CRASHED, id=f"old{i}", generation=i, created_at=ago(s),
                                  purpose=Purpose.RESTART, flow_run_id=f"fro{i}"), "FAILED"))
    return older


def crashed_now(n_before: int) -> Observed:
    return seen(replace(CRASHED, generation=n_before + 1, purpose=Purpose.RESTART), "FAILED")


CASES = [
    # first start
    ("recorded, not submitted → submit", snap(seen(RECORDED, None)), [K.SUBMIT]),
    ("submitted, waiting for a worker", snap(seen(SUBMITTED, "SCHEDULED")), []),
    ("loading", snap(seen(LOADING)), []),
    ("healthy", snap(seen(READY, answers=True)), []),
    ("first start past its timeout, no engine → deploy timeout",
     snap(seen(SUBMITTED, "SCHEDULED"), timeout=30), [K.FAIL]),
    ("first start past its timeout while loading → health timeout",
     snap(seen(LOADING), timeout=30), [K.FAIL]),
    ("first start died → failed by derivation; its leases released",
     snap(seen(DIED_LOADING, "FAILED")), [K.RELEASE]),
    # queued for capacity: the pool is full, so no worker may start it yet
    ("waiting, pool full, past its timeout → queued, not failed",
     snap(seen(SUBMITTED, "SCHEDULED"), timeout=30, cap=FULL), [K.QUEUE]),
    ("waiting, pool has a free slot, past its timeout → deploy timeout",
     snap(seen(SUBMITTED, "SCHEDULED"), timeout=30, cap=FREE), [K.FAIL]),
    ("waiting, pool without a limit, past its timeout → deploy timeout",
     snap(seen(SUBMITTED, "SCHEDULED"), timeout=30, cap=UNLIMITED), [K.FAIL]),
    ("picked up (Pending) while the pool is full → not queued: it holds a slot",
     snap(seen(SUBMITTED, "PENDING"), timeout=300, cap=FULL), []),
    ("was queued, a slot freed 5 s ago → unqueued; the timeout counts from then",
     snap(seen(QUEUED, "SCHEDULED"), timeout=30, cap=FREE), [K.UNQUEUE]),
    ("was queued, slot freed long ago, still not picked up → deploy timeout",
     snap(seen(replace(QUEUED, queued_at=ago(40)), "SCHEDULED"), timeout=30, cap=FREE), [K.FAIL]),
    ("was queued, now picked up (pool not read) → unqueued",
     snap(seen(QUEUED, "PENDING"), timeout=300), [K.UNQUEUE]),
    ("was queued, Prefect unreadable → nothing changes",
     snap(seen(QUEUED, None), timeout=300), []),
    ("queued replacement past the startup timeout → queued, not abandoned",
     snap(seen(READY), seen(CANDIDATE_WAITING, "SCHEDULED"), candidate="c1", cap=FULL), [K.QUEUE]),
    ("replacement waiting with a free slot past the timeout → abandon",
     snap(seen(READY), seen(CANDIDATE_WAITING, "SCHEDULED"), candidate="c1", cap=FREE), [K.ABANDON]),
    # replicas: slot 0 is the live run; slots 1..N-1 are filled, drained and replaced here
    ("two wanted, only the live run → add replica 1", snap(seen(READY), **TWO), [K.ADD_REPLICA]),
    ("two wanted while the live run still loads → add it now (they start together)",
     snap(seen(LOADING), **TWO), [K.ADD_REPLICA]),
    ("replica recorded, not submitted → submit it",
     snap(seen(READY), seen(replica(base=RECORDED, flow_run_id=None), None), **TWO), [K.SUBMIT]),
    ("replica loading → nothing", snap(seen(READY), seen(replica(base=LOADING)), **TWO), []),
    ("replica ready → nothing", snap(seen(READY), seen(replica()), **TWO), []),
    ("scaled to one, replica ready → retire it (drain)", snap(seen(READY), seen(replica())), [K.RETIRE]),
    ("retired replica still draining → nothing",
     snap(seen(READY), seen(replica(stop_requested_at=ago(1)))), []),
    ("retired replica past the drain → cancel it",
     snap(seen(READY), seen(replica(stop_requested_at=ago(5)))), [K.CANCEL]),
    ("replica ended → release its leases, start another at once",
     snap(seen(READY), seen(ENDED_REPLICA, "FAILED"), leases=frozenset({"fr0", "fp1"}), **TWO),
     [K.RELEASE, K.ADD_REPLICA]),
    ("replica ended again soon after its replacement → wait for the backoff",
     snap(seen(READY), seen(ENDED_REPLICA, "FAILED"),
          seen(replica("p2", base=CRASHED, created_at=ago(2)), "FAILED"), leases=frozenset(), **TWO),
     [K.WAIT]),
    ("replica slot ended too often → left empty, said so",
     snap(seen(READY), *[seen(replica(f"p{i}", base=CRASHED, created_at=ago(100 + i)), "FAILED")
                         for i in range(4)], leases=frozenset(), **TWO), [K.WAIT]),
    ("replica of an older checkpoint while the live run serves a new one → retire and replace",
     snap(seen(READY), seen(replica(config_key="old")), **TWO), [K.RETIRE, K.ADD_REPLICA]),
    ("replica not ready past the startup timeout → cancel it",
     snap(seen(READY), seen(replica(base=LOADING)), timeout=30, **TWO), [K.CANCEL]),
    ("replica waiting for a full pool → queued, no timeout",
     snap(seen(READY), seen(replica(base=SUBMITTED), "SCHEDULED"), timeout=30, cap=FULL, **TWO),
     [K.QUEUE]),
    ("stop with a replica → both cancelled, no new replica",
     snap(seen(READY), seen(replica()), intent=STOP, **TWO), [K.CANCEL, K.CANCEL]),
    # Prefect says final: believed only once the serve run has gone quiet
    ("Crashed by the heartbeat automation while reporting → nothing",
     snap(seen(READY, "CRASHED", answers=True)), []),
    ("Crashed, quiet, backend silent → mark ended", snap(seen(SILENT, "CRASHED")), [K.MARK_ENDED]),
    ("Cancelled, quiet, engine still answers → stop the orphan",
     snap(seen(SILENT, "CANCELLED", answers=True)), [K.STOP_ORPHAN]),
    ("Prefect unreadable (state unknown) → nothing", snap(seen(SILENT, None, answers=True)), []),
    # restarts under the policy
    ("crashed after serving → restart at once", snap(seen(CRASHED, "FAILED")), [K.RESTART]),
    ("second crash soon after a restart → wait for the backoff",
     snap(*restarts(2), crashed_now(1)), [K.WAIT]),
    ("restart after the backoff", snap(*restarts(30), crashed_now(1)), [K.RESTART]),
    ("old restarts outside the window do not count", snap(*restarts(1000, 900, 800), crashed_now(3)),
     [K.RESTART]),
    ("three restarts in the window → give up", snap(*restarts(60, 30, 20), crashed_now(3)), [K.FAIL]),
    # stop
    ("stop intent, run alive → cancel it", snap(seen(READY), intent=STOP), [K.CANCEL]),
    ("stop intent, already cancelling → wait", snap(seen(READY, "CANCELLING"), intent=STOP), []),
    ("stop intent, never submitted → cancel (ends it at once)", snap(seen(RECORDED, None), intent=STOP),
     [K.CANCEL]),
    ("stopped, leases open → release", snap(seen(replace(CRASHED, end_reason=ReasonCode.STOPPED_BY_USER),
                                                 "CANCELLED"), intent=STOP), [K.RELEASE]),
    ("stopped and released, remove asked → remove",
     snap(seen(replace(CRASHED), "CANCELLED"), intent=REMOVE, leases=frozenset()), [K.REMOVE]),
    ("stopped and released → nothing", snap(seen(CRASHED, "CANCELLED"), intent=STOP, leases=frozenset()), []),
    # rolling replacement
    ("candidate recorded → submit it",
     snap(seen(READY), seen(run("c1", 1, role=Role.CANDIDATE), None), candidate="c1"), [K.SUBMIT]),
    ("candidate loading → nothing",
     snap(seen(READY), seen(replace(LOADING, id="c1", generation=1, role=Role.CANDIDATE,
                                    flow_run_id="fc1")), candidate="c1"), []),
    ("candidate ready → promote",
     snap(seen(READY), seen(replace(READY, id="c1", generation=1, role=Role.CANDIDATE,
                                    flow_run_id="fc1")), candidate="c1"), [K.PROMOTE]),
    ("candidate ended → abandon",
     snap(seen(READY), seen(replace(DIED_LOADING, id="c1", generation=1, role=Role.CANDIDATE,
                                    flow_run_id="fc1"), "FAILED"), candidate="c1"), [K.ABANDON]),
    ("candidate past the startup timeout → abandon",
     snap(seen(READY), seen(replace(LOADING, id="c1", generation=1, role=Role.CANDIDATE,
                                    flow_run_id="fc1", created_at=ago(400))), candidate="c1"),
     [K.ABANDON]),
    ("the flow that asked for the replacement died → abandon its candidate",
     snap(seen(READY), Observed(replace(LOADING, id="c1", generation=1, role=Role.CANDIDATE,
                                        flow_run_id="fc1", requested_by="ff"), "RUNNING", False, "CRASHED"),
          candidate="c1"), [K.ABANDON]),
    ("the flow that asked for it finished → the reconciler carries on",
     snap(seen(READY), Observed(replace(READY, id="c1", generation=1, role=Role.CANDIDATE,
                                        flow_run_id="fc1", requested_by="ff"), "RUNNING", True, "COMPLETED"),
          candidate="c1"), [K.PROMOTE]),
    ("stop during a replacement → both runs cancelled",
     snap(seen(READY), seen(replace(LOADING, id="c1", generation=1, flow_run_id="fc1")), intent=STOP,
          candidate=None), [K.CANCEL, K.CANCEL]),
    ("replaced run draining → cancel after the drain",
     snap(seen(replace(READY, stop_requested_at=ago(5))),
          seen(replace(READY, id="c1", generation=1, flow_run_id="fc1")), live="c1"), [K.CANCEL]),
    ("replaced run still draining → wait",
     snap(seen(replace(READY, stop_requested_at=ago(1))),
          seen(replace(READY, id="c1", generation=1, flow_run_id="fc1")), live="c1"), []),
    ("replaced run ended → release its leases",
     snap(seen(replace(CRASHED, end_reason=ReasonCode.STOPPED_BY_USER), "CANCELLED"),
          seen(replace(READY, id="c1", generation=1, flow_run_id="fc1")), live="c1",
          leases=frozenset({"fr0", "fc1"})), [K.RELEASE]),
    ("orphaned candidate (flow died, pointer cleared) → cancel it",
     snap(seen(READY), seen(replace(LOADING, id="c1", generation=1, role=Role.CANDIDATE,
                                    flow_run_id="fc1", stop_requested_at=ago(10)))), [K.CANCEL]),
]


@pytest.mark.parametrize(("why", "snapshot", "expected"), CASES, ids=[c[0] for c in CASES])
def test_decide(why: str, snapshot: Snapshot, expected: list[Kind]) -> None:
    assert list(decide(snapshot, NOW, POLICY, TIMING).kinds) == expected, why


def test_restart_targets_the_ended_live_run_and_says_why() -> None:
    plan = decide(snap(seen(CRASHED, "FAILED")), NOW, POLICY, TIMING)
    assert plan.steps[0].run_id == "r0"
    assert "boom" in plan.steps[0].message and "restart #1 of 3" in plan.steps[0].message


def test_waiting_restart_says_when() -> None:
    plan = decide(snap(*restarts(2), crashed_now(1)), NOW, POLICY, TIMING)
    assert "waits until" in plan.steps[0].message


def test_give_up_reasons() -> None:
    assert decide(snap(*restarts(60, 30, 20), crashed_now(3)), NOW, POLICY, TIMING).steps[0].reason \
        == ReasonCode.RESTART_LIMIT
    deploy = decide(snap(seen(SUBMITTED, "SCHEDULED"), timeout=30), NOW, POLICY, TIMING).steps[0]
    health = decide(snap(seen(replace(LOADING, not_ready_message="HTTP 500")), timeout=30),
                    NOW, POLICY, TIMING).steps[0]
    assert (deploy.reason, health.reason) == (ReasonCode.DEPLOY_TIMEOUT, ReasonCode.HEALTH_TIMEOUT)
    assert "HTTP 500" in health.message  # the engine's own reason travels with the verdict


def test_backoff_doubles_and_is_capped() -> None:
    assert [POLICY.delay(n).total_seconds() for n in range(5)] == [0, 5, 10, 20, 40]
    assert RestartPolicy(backoff=timedelta(minutes=1)).delay(10) == timedelta(minutes=2)


def test_a_quiet_run_that_prefect_still_runs_is_left_alone() -> None:
    """Only Prefect's final state plus silence count; silence alone (registry outage) does not."""
    assert decide(snap(seen(SILENT, "RUNNING")), NOW, POLICY, TIMING).steps == ()


def test_a_queued_run_says_which_pool_its_limit_and_who_holds_the_slots() -> None:
    step = decide(snap(seen(SUBMITTED, "SCHEDULED"), cap=FULL), NOW, POLICY, TIMING).steps[0]
    assert step.reason == ReasonCode.QUEUED_FOR_CAPACITY
    assert "work pool cpu-dev runs 2 of its 2 slots" in step.message
    assert "serve/default/a, serve/default/b" in step.message


def test_many_holders_are_summarised() -> None:
    many = Capacity("cpu-dev", 7, tuple(f"serve/default/e{i}" for i in range(7)))
    assert many.full and "e4 and 2 more" in many.describe() and "e5" not in many.describe()
    assert not FREE.full and not UNLIMITED.full


def test_an_added_replica_names_its_slot() -> None:
    plan = decide(snap(seen(READY), replicas=3), NOW, POLICY, TIMING)
    assert [(st.kind, st.replica) for st in plan.steps] == [(K.ADD_REPLICA, 1), (K.ADD_REPLICA, 2)]
    assert "replica 1 of 3" in plan.steps[0].message
